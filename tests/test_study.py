from pathlib import Path

import pytest

from ablations.study import StudyError, load_study, parse_sets

GOOD = """\
name: bn
question: does it help?
base:
  model.name: cnn4
  optim.lr: 1e-3
factors:
  batchnorm: [true, false]
seeds: [0, 1, 2]
metric: {name: test_acc, direction: maximize}
profiles:
  smoke: {train.epochs: 1}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(text)
    return path


def test_good_file_expands_to_levels_times_seeds(tmp_path):
    study = load_study(write(tmp_path, GOOD), "smoke")
    cells = study.cells()
    assert [c.key for c in cells[:4]] == [
        "batchnorm=true seed=0",
        "batchnorm=true seed=1",
        "batchnorm=true seed=2",
        "batchnorm=false seed=0",
    ]
    assert len(cells) == 6
    cfg = study.cell_config(cells[3])
    assert cfg.model.batchnorm is False and cfg.train.seed == 0 and cfg.train.epochs == 1
    assert cfg.optim.lr == 1e-3  # YAML 1.2 float, not the string "1e-3"
    assert cfg.model.widths == (32, 64, 128, 256)  # preset values resolved


def test_study_key_ignores_seeds_but_not_the_recipe(tmp_path):
    a = load_study(write(tmp_path, GOOD), "smoke")
    more_seeds = load_study(write(tmp_path, GOOD.replace("[0, 1, 2]", "[0, 1, 2, 3]")), "smoke")
    other_lr = load_study(write(tmp_path, GOOD.replace("1e-3", "3e-4")), "smoke")
    assert a.key == more_seeds.key != other_lr.key


def test_sets_override_profile(tmp_path):
    study = load_study(write(tmp_path, GOOD), "smoke", parse_sets(["train.epochs=3", "optim.name=sgd"]))
    assert study.config.train.epochs == 3 and study.config.optim.name == "sgd"


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("factors:", "factor:", r"factor: unknown key; did you mean 'factors'\? valid keys: name, question"),
        ("batchnorm: [true, false]", "batchnrom: [true, false]", r"factors.batchnrom: unknown factor.*batchnorm"),
        ("batchnorm: [true, false]", "batchnorm: []", r"factors.batchnorm: has no levels"),
        ("batchnorm: [true, false]", "dropout: [fc, middle]", r"factors.dropout\[middle\]:.*model.dropout"),
        ("batchnorm: [true, false]", "batchnorm: [on, off]", r"factors.batchnorm\[on\]: write true or false"),
        ("optim.lr: 1e-3", "optim.learning_rate: 1e-3", r"base: unknown config key 'optim.learning_rate'"),
        ("optim.lr: 1e-3", "optim.lr: fast", r"optim.lr"),
        ("seeds: [0, 1, 2]", "seeds: three", r"seeds: Input should be a valid list"),
        ("seeds: [0, 1, 2]", "seeds: [0, 0]", r"seeds: seeds must be distinct"),
        ("model.name: cnn4", "model.name: vgg99", r"unknown model 'vgg99'.*cnn4"),
        ("name: test_acc", "name: accuracy", r"metric.name"),
        ("{train.epochs: 1}", "{train.epoch: 1}", r"profiles.smoke: unknown config key 'train.epoch'"),
    ],
)
def test_bad_files_name_file_and_key(tmp_path, old, new, message):
    assert old in GOOD
    path = write(tmp_path, GOOD.replace(old, new))
    with pytest.raises(StudyError, match=message) as info:
        load_study(path, "smoke")
    assert str(path) in str(info.value)


def test_a_bad_model_from_set_names_set_not_base(tmp_path):
    path = write(tmp_path, GOOD)
    with pytest.raises(StudyError, match=r": --set: unknown model 'vgg99'"):
        load_study(path, "smoke", parse_sets(["model.name=vgg99"]))
    with pytest.raises(StudyError, match=r": base: unknown model 'vgg99'"):
        load_study(write(tmp_path, GOOD.replace("model.name: cnn4", "model.name: vgg99")), "smoke")


def test_set_of_a_key_the_factor_varies_is_an_error_not_silently_lost(tmp_path):
    path = write(tmp_path, GOOD)
    with pytest.raises(StudyError, match=r"--set: model.batchnorm is set by factor 'batchnorm' in every cell"):
        load_study(path, "smoke", parse_sets(["model.batchnorm=false"]))
    assert load_study(path, "smoke", parse_sets(["model.dropout_p=0.2"])).config.model.dropout_p == 0.2


def test_unknown_profile_lists_profiles(tmp_path):
    with pytest.raises(StudyError, match="no profile 'fast'; this file has: smoke"):
        load_study(write(tmp_path, GOOD), "fast")


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(StudyError, match="no such study file"):
        load_study(tmp_path / "nope.yaml")
    with pytest.raises(StudyError, match="not valid YAML"):
        load_study(write(tmp_path, "name: [unclosed"))


def test_a_study_file_that_is_not_text_is_named(tmp_path):
    path = tmp_path / "noise.yaml"
    path.write_bytes(bytes([0xDC, 0x00, 0xFF, 0x9C]) + bytes(range(256)))  # random bytes, not UTF-8
    with pytest.raises(StudyError) as info:
        load_study(path)
    assert str(path) in str(info.value) and "not a text file" in str(info.value)
    assert "codec" not in str(info.value)


def test_mapping_factor_and_dotted_key_factor(tmp_path):
    text = GOOD.replace(
        "batchnorm: [true, false]",
        "optim.lr: [1.0e-3, 1.0e-2]\n  aug:\n"
        "    light: {augment.rotation: 0}\n    heavy: {augment.rotation: 10, augment.erasing: 0.5}",
    )
    study = load_study(write(tmp_path, text), "smoke")
    cells = study.cells()
    assert len(cells) == 2 * 2 * 3
    heavy = next(c for c in cells if c.levels == {"optim.lr": 1e-2, "aug": "heavy"})
    cfg = study.cell_config(heavy)
    assert cfg.optim.lr == 1e-2 and cfg.augment.rotation == 10 and cfg.augment.erasing == 0.5


@pytest.fixture(scope="session")
def imagenet_weights(tmp_path_factory):
    """A file in torchvision's ResNet-18 format (random weights: the real ones cannot be downloaded here)."""
    import torch
    import torchvision

    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return str(path)


@pytest.mark.parametrize("path", sorted(Path("studies").rglob("*.yaml")), ids=str)
def test_every_shipped_study_validates_in_every_profile(path, imagenet_weights):
    sets = {"model.weights": imagenet_weights} if "resnet18_imagenet" in path.read_text() else None
    study = load_study(path, None, sets)
    for profile in ("full", "quick", "smoke"):
        assert load_study(path, profile, sets).cells()
    assert study.profile == "full"
    assert study.question and len(study.seeds) >= 3  # every study is a distribution, not one run


def test_transfer_study_without_weights_says_where_to_get_them():
    with pytest.raises(StudyError, match=r"model.weights.*resnet18-f37072fd.pth"):
        load_study("studies/transfer_resnet18.yaml")
