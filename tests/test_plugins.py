"""Users' own models: ``imports:``, ``register_model`` with options, their validation, the study identity,
the logged code, entry points, and a one-line error for every bad plugin."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from ablations.cli import main
from ablations.study import StudyError, load_study, parse_sets
from core.config import ConfigError, ModelConfig
from core.models import create_model, list_models, resolve_model_config
from core.models.plugins import import_file
from core.models.registry import _forget_plugins

ROOT = Path(__file__).resolve().parents[1]

MODEL = """\
from torch import nn
from ablations import register_model


@register_model("tiny_net", options={"width": 8, "residual": True, "scale": 1.0})
def build(cfg):
    w = cfg.options["width"]
    return nn.Sequential(
        nn.Conv2d(3, w, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(w, cfg.num_classes)
    )
"""

STUDY = """\
name: mine
question: does my residual help?
imports: [models.py]
base: {model.name: tiny_net, train.epochs: 1, train.batch_size: 16, train.device: cpu}
factors:
  model.options.residual: [true, false]
seeds: [0, 1]
metric: {name: test_acc, direction: maximize}
"""


@pytest.fixture(autouse=True)
def builtins_only():
    """Each test starts and ends with the built-in presets alone."""
    _forget_plugins()
    yield
    _forget_plugins()


def write(folder: Path, model: str = MODEL, study: str = STUDY) -> Path:
    (folder / "models.py").write_text(model)
    (folder / "study.yaml").write_text(study)
    return folder / "study.yaml"


# ---- existing studies keep their keys ----


@pytest.mark.parametrize(
    ("file", "profile", "key", "revised"),
    [
        # Computed before plugins existed (commit 7101f1f); a study without imports: and model.options must
        # hash exactly as before, or every store made before would lose its results. A study of cnn4 has had
        # cnn4's revision 2 in its key since issue 24 (seed 000's own network, docs/release-notes.md): with
        # that part left out it hashes as before (tests/test_seed_recipes.py shows the new keys differ).
        ("studies/search_lr.yaml", "quick", "search_lr:quick:2e263da3557a", True),  # a search: its space in the hash
        ("studies/seeds/seed001.yaml", "quick", "seed001:quick:1360d8e51f53", False),
        ("studies/seeds/seed002.yaml", "quick", "seed002:quick:b40c4842a97c", False),
    ],
)
def test_existing_study_keys_are_unchanged(file, profile, key, revised, monkeypatch):
    if revised:
        monkeypatch.setattr("core.models.registry.preset_revision", lambda name: 1)
    study = load_study(ROOT / file, profile)
    assert study.code == ()
    assert study.key == key


# ---- imports, options, factors ----


def test_a_plugin_registers_its_model_and_its_options_fill_in(tmp_path):
    study = load_study(write(tmp_path))
    assert "tiny_net" in list_models()
    configs = [study.cell_config(c) for c in study.cells()]
    assert [c.model.options for c in configs[::2]] == [
        {"width": 8, "residual": True, "scale": 1.0},
        {"width": 8, "residual": False, "scale": 1.0},
    ]
    assert [c.arm for c in study.cells()[::2]] == ["model.options.residual=true", "model.options.residual=false"]
    assert configs[0].model.batchnorm is None  # a built-in setting it does not declare stays unset
    model = create_model(configs[0].model, seed=0)
    assert model(__import__("torch").zeros(2, 3, 32, 32)).shape == (2, 10)
    assert [c.name for c in study.code] == ["models.py"] and study.code[0].text == MODEL


def _searched(study: str) -> str:
    """The study as the head of a search: no seeds list, and the validation metric (the test set never chooses)."""
    return study.replace("seeds: [0, 1]\n", "").replace("metric: {name: test_acc,", "metric: {name: val_acc,")


def test_options_as_set_mapping_and_search_key(tmp_path):
    path = write(tmp_path)
    study = load_study(path, sets=parse_sets(["model.options.width=16", "model.options.scale=2"]))
    cfg = study.cell_config(study.cells()[0])
    assert cfg.model.options == {"width": 16, "residual": True, "scale": 2.0}  # an integer for a number
    whole = STUDY.replace("train.device: cpu}", "train.device: cpu, model.options: {width: 4}}")
    cfg = load_study(write(tmp_path, study=whole)).config
    assert cfg.model.options == {"width": 4}
    search = _searched(STUDY) + (
        "search:\n  space:\n    model.options.width: {type: int, low: 4, high: 16}\n  n_trials: 2\n"
    )
    assert load_study(write(tmp_path, study=search)).search.space["model.options.width"].high == 16
    bad = search.replace("{type: int, low: 4, high: 16}", "{type: categorical, choices: [wide]}")
    with pytest.raises(StudyError, match=r"search.space.model.options.width: model.options.width: model tiny_net"):
        load_study(write(tmp_path, study=bad))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            "model.options.width: eight",
            r"base: model.options.width: model tiny_net takes an integer \(default 8\), got 'eight'",
        ),
        ("model.options.residual: on", r"model.options.residual: .* write true or false"),
        (
            "model.options.widht: 4",
            r"model.options.widht: model tiny_net has no option 'widht'; did you mean 'width'\? "
            r"its options: width, residual, scale",
        ),
        ("model.batchnorm: false", r"base: model.batchnorm: model tiny_net does not declare the setting batchnorm"),
        ("model.options.width: {a: 1}", r"model.options.width': an option is a number"),
    ],
)
def test_options_are_validated_by_the_defaults_types(tmp_path, change, message):
    study = STUDY.replace("train.device: cpu}", f"train.device: cpu, {change}}}")
    with pytest.raises(StudyError, match=message):
        load_study(write(tmp_path, study=study))


def test_a_factor_level_of_the_wrong_type_names_its_arm(tmp_path):
    study = STUDY.replace("[true, false]", "[true, 3]")
    with pytest.raises(
        StudyError,
        match=r"residual=3\): model.options.residual: model tiny_net takes a boolean \(default true\), got 3",
    ):
        load_study(write(tmp_path, study=study))


def test_a_built_in_preset_has_no_options():
    with pytest.raises(ConfigError, match="model.options.width: model cnn4 has no options"):
        resolve_model_config(ModelConfig(name="cnn4", options={"width": 3}))


def test_a_plugin_may_declare_built_in_settings(tmp_path):
    model = MODEL.replace('"scale": 1.0}', '"scale": 1.0}, dropout_p=0.1')
    study = load_study(write(tmp_path, model=model), sets={"model.dropout_p": 0.3})
    assert study.cell_config(study.cells()[0]).model.dropout_p == 0.3
    assert load_study(write(tmp_path, model=model)).cell_config(study.cells()[0]).model.dropout_p == 0.1


# ---- identity ----


def test_the_code_is_part_of_the_study_identity(tmp_path):
    path = write(tmp_path)
    first = load_study(path).key
    assert load_study(path).key == first  # the same code: the same study
    (tmp_path / "models.py").write_text(MODEL + "\n# tuned\n")
    edited = load_study(path)
    assert edited.key != first and edited.key.startswith("mine:base:")

    # a module name: its file is the code, logged under the module's name
    _forget_plugins()
    sys.path.insert(0, str(tmp_path))
    try:
        by_name = load_study(write(tmp_path, study=STUDY.replace("imports: [models.py]", "imports: [models]")))
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("models", None)
    assert [(c.name, c.spec, c.text) for c in by_name.code] == [("models.py", "models", MODEL)]


# ---- bad plugins: one line each, naming the file, the preset or the option ----

BAD = {
    "missing file": (None, "imports: [nowhere.py]", r"imports\[0\]: .*nowhere.py: no such file"),
    "syntax error": ("from torch import nn\ndef build(cfg:\n", None, r"imports\[0\]: .*models.py:2: SyntaxError"),
    "import error": (
        "import torch\nimport not_a_module_anyone_has\n",
        None,
        r"imports\[0\]: .*models.py:2: ModuleNotFoundError: No module named 'not_a_module_anyone_has'",
    ),
    "not a module": (
        MODEL.replace("    w = cfg.options", "    return 42\n    w = cfg.options"),
        None,
        r"model tiny_net \(.*models.py\): build returned int, not a torch.nn.Module",
    ),
    "wrong shape": (
        MODEL.replace("nn.Linear(w, cfg.num_classes)", "nn.Linear(w, 5)"),
        None,
        r"model tiny_net \(.*models.py\): its output for a \(2, 3, 32, 32\) batch has shape \(2, 5\); "
        r"expected \(2, 10\)",
    ),
    "build raises": (
        MODEL.replace("    w = cfg.options", "    raise ValueError('no such width')\n    w = cfg.options"),
        None,
        r"model tiny_net \(.*models.py\): build raised ValueError at line 7: no such width",
    ),
    "undeclared option": (None, "model.options.depth: 3", r"model.options.depth: model tiny_net has no option"),
    "built-in name": (
        MODEL.replace('"tiny_net"', '"cnn4"'),
        "model.name: cnn4",
        r"imports\[0\]: .*models.py:5: model 'cnn4' is a built-in preset's name",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_plugin_is_one_line_naming_it(tmp_path, case):
    model, change, message = BAD[case]
    study = STUDY
    if change and change.startswith("imports"):
        study = study.replace("imports: [models.py]", change)
    elif change:
        study = study.replace("train.device: cpu}", f"train.device: cpu, {change}}}")
    path = write(tmp_path, model=model or MODEL, study=study)
    with pytest.raises(StudyError, match=message) as err:
        load_study(path)
    assert "\n" not in str(err.value)
    result = CliRunner().invoke(main, ["run", str(path), "--dry-run"])
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and result.output.startswith("Error: ") and "Traceback" not in result.output


def test_two_plugins_registering_one_name(tmp_path):
    (tmp_path / "other.py").write_text(MODEL + "# a copy, edited\n")
    study = STUDY.replace("imports: [models.py]", "imports: [models.py, other.py]")
    with pytest.raises(StudyError, match=r"imports\[1\]: .*other.py:5: model 'tiny_net' is registered already by "):
        load_study(write(tmp_path, study=study))


def test_two_imports_logged_under_one_name(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "models.py").write_text("x = 1\n")
    study = STUDY.replace("imports: [models.py]", "imports: [models.py, sub/models.py]")
    with pytest.raises(StudyError, match=r"imports\[1\]: sub/models.py and models.py would both be logged"):
        load_study(write(tmp_path, study=study))


# ---- ablate models ----


def test_ablate_models_lists_a_studys_models_with_their_options(tmp_path):
    path = write(tmp_path)
    out = CliRunner().invoke(main, ["models", "--study", str(path)])
    assert out.exit_code == 0, out.output
    line = next(ln for ln in out.output.splitlines() if ln.startswith("tiny_net"))
    assert "width=8, residual=true, scale=1.0" in line and "models.py" in line
    assert "cnn4" in out.output and "built in" in out.output
    bad = CliRunner().invoke(main, ["models", "--study", str(write(tmp_path, model="x = (\n"))])
    assert bad.exit_code == 1 and "SyntaxError" in bad.output and "Traceback" not in bad.output


# ---- entry points ----


def _installed_package(site: Path) -> None:
    """A package installed as pip would (a dist-info with an entry point of the group ablate.models)."""
    (site / "acme_models").mkdir(parents=True)
    (site / "acme_models" / "__init__.py").write_text(MODEL.replace("tiny_net", "acme_net"))
    info = site / "acme_models-1.2.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-models\nVersion: 1.2\n")
    (info / "entry_points.txt").write_text("[ablate.models]\nacme = acme_models\n")


def test_an_installed_package_registers_models_through_an_entry_point(tmp_path):
    _installed_package(tmp_path / "site")
    study = tmp_path / "acme.yaml"
    study.write_text(STUDY.replace("imports: [models.py]\n", "").replace("tiny_net", "acme_net"))
    code = (
        "import json, sys\n"
        "from ablations.study import load_study\n"
        "from core.models import list_models\n"
        f"s = load_study({str(study)!r})\n"
        "print(json.dumps({'models': list_models(), 'code': [c.name for c in s.code], 'key': s.key}))\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{tmp_path / 'site'}{os.pathsep}{ROOT}"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert "acme_net" in got["models"] and got["code"] == ["acme_models.py"]
    listed = subprocess.run(
        [sys.executable, "-m", "ablations.cli", "models"], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert "acme_net" in listed.stdout and "width=8" in listed.stdout


def test_a_broken_entry_point_is_one_line(tmp_path):
    _installed_package(tmp_path / "site")
    (tmp_path / "site" / "acme_models" / "__init__.py").write_text("import torch\nraise RuntimeError('broken')\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path / 'site'}{os.pathsep}{ROOT}"}
    out = subprocess.run(
        [sys.executable, "-m", "ablations.cli", "models"], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.startswith("Error: entry point acme = acme_models (group ablate.models, distribution acme-models")
    assert "__init__.py:2: RuntimeError: broken" in out.stderr


# ---- what a preset gets, a plugin gets: common random numbers, fused seeds ----


def test_a_plugins_seeds_fuse_and_its_initial_weights_follow_the_seed(tmp_path):
    import torch

    from core.config import RunConfig, apply_overrides
    from core.fused import unfusable_reason
    from core.train import fit_many, resolve_config
    from tests.conftest import tiny_splits

    study = load_study(write(tmp_path))
    cfg = study.cell_config(study.cells()[0])
    a, b = (create_model(cfg.model, seed=s) for s in (0, 0))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert unfusable_reason(cfg) is None
    fused = apply_overrides(cfg, {"train.fuse_seeds": 2, "train.precision": "fp32", "train.batch_size": 16})
    results = fit_many(fused, [0, 1], tiny_splits(n_train=32, n_val=16, n_test=16), group_size=2)
    assert len(results) == 2 and all(r.value("test_acc") >= 0 for r in results)

    # a forward that vmap cannot batch (data-dependent control flow): one seed at a time, and why
    branchy = """\
from torch import nn
from ablations import register_model


class Branchy(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.fc = nn.Linear(3, num_classes)

    def forward(self, x):
        y = self.fc(x.mean(dim=(-2, -1)))
        return y if x.sum() > -1 else -y


@register_model("branchy_net")
def build(cfg):
    return Branchy(cfg.num_classes)
"""
    (tmp_path / "branchy.py").write_text(branchy)
    import_file(tmp_path / "branchy.py")
    cfg = resolve_config(apply_overrides(RunConfig(), {"model.name": "branchy_net"}))
    assert "model branchy_net does not run under torch.vmap" in (unfusable_reason(cfg) or "")


# ---- the code is logged with every run: a study's cells and a search's trials ----


def _code_of(client, run) -> tuple[list, str]:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        text = Path(client.download_artifacts(run.info.run_id, "code/models.py", tmp)).read_text()
    return json.loads(run.data.tags["ablate.code"]), text


def test_every_run_and_the_parent_log_the_code_and_a_run_rebuilds_its_model(tmp_path, monkeypatch):
    import hashlib

    from mlflow import MlflowClient

    import ablations.hpsearch as hpsearch
    import ablations.runner as runner
    from ablations.inference import load_run
    from ablations.tracking import resolve_tracking_uri
    from tests.conftest import tiny_splits

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(runner, "load_splits", lambda cfg: tiny_splits())
    summary = runner.run_study(load_study(write(tmp_path)), progress=False)
    assert len(summary.trained) == 4
    search = _searched(STUDY) + (
        "search:\n  space:\n    model.options.width: {type: int, low: 4, high: 8}\n  n_trials: 1\n"
    )
    (tmp_path / "search.yaml").write_text(search.replace("name: mine", "name: mine_search"))
    hpsearch.run_search(load_study(tmp_path / "search.yaml"), progress=False)

    client = MlflowClient(resolve_tracking_uri(None))
    expected = [{"name": "models.py", "sha256": hashlib.sha256(MODEL.encode()).hexdigest()}]
    for name in ("mine", "mine_search"):
        exp = client.get_experiment_by_name(name)
        runs = client.search_runs([exp.experiment_id])
        assert {r.data.tags["ablate.role"] for r in runs} == {"parent", "cell"}
        for run in runs:
            assert _code_of(client, run) == (expected, MODEL)

    from ablations.tracking import Tracker
    from ablations.ui import prepare_view, publish_report

    view = prepare_view(Tracker(), "mine")  # the UI's view: a column per factor, model.options.residual too
    assert view.experiment_id == client.get_experiment_by_name("mine").experiment_id
    assert publish_report("mine", None) is not None

    # evaluate/predict: the model is rebuilt from the code the run logged, also once the file has changed
    cell = next(
        r
        for r in client.search_runs([client.get_experiment_by_name("mine").experiment_id])
        if "cell" in r.data.tags.get("ablate.role", "")
    )
    _forget_plugins()
    (tmp_path / "models.py").write_text("raise RuntimeError('this file is not what the run trained')\n")
    loaded = load_run(cell.info.run_id)
    assert loaded.config.model.name == "tiny_net" and loaded.model(__import__("torch").zeros(1, 3, 32, 32)).shape == (
        1,
        10,
    )


def test_evaluate_a_checkpoint_of_a_plugin_model_with_import(tmp_path, monkeypatch):
    import torch
    import yaml

    study = load_study(write(tmp_path))
    cfg = study.cell_config(study.cells()[0])
    torch.save(create_model(cfg.model, seed=0).state_dict(), tmp_path / "best.pt")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    _forget_plugins()  # a fresh process: nothing registers tiny_net
    monkeypatch.setenv("ABLATE_DATA", str(tmp_path / "nowhere"))
    args = ["evaluate", "--checkpoint", str(tmp_path / "best.pt"), "--config", str(tmp_path / "config.yaml")]
    without = CliRunner().invoke(main, args)
    assert without.exit_code == 1 and "unknown model 'tiny_net'" in without.output
    monkeypatch.chdir(tmp_path)
    imported = CliRunner().invoke(main, [*args, "--import", "models.py"])
    assert imported.exit_code == 1 and "nowhere" in imported.output  # the model is built; the data is missing
    bad = CliRunner().invoke(main, [*args, "--import", "missing.py"])
    assert bad.exit_code == 1 and bad.output.strip() == "Error: --import missing.py: no such file"


def test_the_built_in_presets_register_through_the_public_decorator():
    import ablations
    import core.models
    from core.models.registry import _REGISTRY

    assert ablations.register_model is core.models.register_model
    assert {n for n, p in _REGISTRY.items() if p.origin is None} == {
        "cnn3",
        "cnn4",
        "cnn5",
        "cnn_s002",
        "cnn_s003",
        "cnn_s004",
        "resnet18",
        "resnet18_imagenet",
        "resnet18_tv",
    }
    src = (ROOT / "core" / "models" / "cnn.py").read_text() + (ROOT / "core" / "models" / "resnet.py").read_text()
    assert src.count("@register_model(") == 9
