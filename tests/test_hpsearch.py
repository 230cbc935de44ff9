"""Hyperparameter search (ablations.hpsearch): the search block's validation, the sampler and pruner
factories, searches on tiny in-memory data (cap, resume, pruning, divergence, workers, arms, report)
and one end-to-end run of studies/search_lr.yaml on the real archive."""

import shutil
from pathlib import Path

import optuna
import pytest
import yaml
from click.testing import CliRunner

import ablations.hpsearch as hpsearch
import ablations.runner as runner
from ablations.cli import main
from ablations.search_report import load_search, render_search
from ablations.study import StudyError, load_study, parse_sets
from core.train import DivergedError
from tests.conftest import tiny_splits

ROOT = Path(__file__).resolve().parents[1]

SEARCH = """\
name: tiny
question: which learning rate?
base: {train.epochs: 1, train.batch_size: 32, train.device: cpu, model.widths: [8, 8, 8, 8]}
metric: {name: val_acc, direction: maximize}
search:
  space:
    optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
    model.dropout_p: {type: float, low: 0.0, high: 0.5}
    optim.name: {type: categorical, choices: [adam, sgd]}
  sampler: {name: tpe, seed: 0}
  pruner: {name: median}
  n_trials: 3
profiles:
  smoke: {train.epochs: 1, search.n_trials: 2}
"""


def write(tmp_path: Path, text: str, name: str = "tiny.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("optim.lr: {", "optim.learning_rate: {", r"search.space.optim.learning_rate: unknown config key"),
        ("type: float, low: 1.0e-4", "type: floaty, low: 1.0e-4", r"search.space.optim.lr.type: unknown type 'floaty'"),
        ("{type: float, low: 1.0e-4", "{low: 1.0e-4", r"search.space.optim.lr: missing type"),
        ("low: 1.0e-4", "low: small", r"search.space.optim.lr.low: Input should be a valid number"),
        (
            "low: 0.0, high: 0.5",
            "low: 0.6, high: 0.5",
            r"search.space.model.dropout_p: low \(0.6\) is greater than high",
        ),
        ("low: 0.0, high: 0.5", "low: 0.0, high: 1.5", r"search.space.model.dropout_p: .*must be in \[0, 1\)"),
        ("low: 1.0e-4, high: 1.0e-2, log: true", "low: 0.0, high: 1.0e-2, log: true", r"optim.lr: log: true needs"),
        ("choices: [adam, sgd]", "choices: [adam, rmsprop]", r"search.space.optim.name: .*optim.name"),
        ("choices: [adam, sgd]", "choices: []", r"search.space.optim.name.choices: List should have at least 1"),
        ("name: tpe", "name: bayes", r"search.sampler.name: Input should be 'tpe', 'random', 'grid'"),
        ("name: median", "name: early", r"search.pruner.name: Input should be 'none', 'median', 'hyperband'"),
        ("seed: 0}", "seed: 0, n_startup: 3}", r"search.sampler.n_startup: not an argument of .*TPESampler.*n_startup"),
        ("{name: median}", "{name: median, n_startup_trials: -1}", r"search.pruner: optuna.pruners.MedianPruner"),
        ("{name: median}", "{name: threshold}", r"search.pruner: optuna.pruners.ThresholdPruner: Either lower or"),
        ("name: tpe", "name: grid", r"search.space.optim.lr: the grid sampler needs a step"),
        ("n_trials: 3", "n_trial: 3", r"search.n_trial: Extra inputs are not permitted"),
        ("n_trials: 3", "n_trials: 0", r"search.n_trials: Input should be greater than or equal to 1"),
        ("search.n_trials: 2}", "search.n_trials: -2}", r"profiles.smoke.search.n_trials: Input should be greater"),
        ("search.n_trials: 2}", "search.pruner: none}", r"profiles.smoke.search.pruner: only search.n_trials and"),
        ("optim.name: {", "train.seed: {", r"search.space.train.seed: the seed is not searched"),
        ("metric:", "factors: {optimizer: [adam, sgd]}\nmetric:", r"search.space.optim.name: also set by factor"),
        ("metric:", "claims: []\nsearch2: 1\nmetric:", r"search2: unknown key"),
    ],
)
def test_bad_search_blocks_name_file_and_key(tmp_path, old, new, message):
    assert old in SEARCH
    path = write(tmp_path, SEARCH.replace(old, new, 1))
    with pytest.raises(StudyError, match=message) as info:
        load_study(path, "smoke")
    assert str(path) in str(info.value)


def test_pruning_and_val_metric_need_a_validation_set(tmp_path):
    path = write(tmp_path, SEARCH.replace("train.device: cpu,", "train.device: cpu, data.val_fraction: 0.0,"))
    with pytest.raises(StudyError, match="search.pruner: pruning watches the validation set"):
        load_study(path)
    with pytest.raises(StudyError, match="metric: val_acc needs a validation set"):
        load_study(write(tmp_path, path.read_text().replace("{name: median}", "{name: none}")))


def test_a_pure_search_needs_no_factors_or_seeds_and_its_key_ignores_the_budget(tmp_path):
    study = load_study(write(tmp_path, SEARCH), "smoke")
    assert study.factors == {} and study.seeds == [0] and study.search.n_trials == 2
    assert [c.key for c in study.cells()] == ["seed=0"]  # one search, trials with the first seed
    assert "search.n_trials" not in study.overrides and study.config.train.epochs == 1
    more = load_study(write(tmp_path, SEARCH), "smoke", parse_sets(["search.n_trials=5", "search.timeout=60"]))
    assert more.search.n_trials == 5 and more.search.timeout == 60 and more.key == study.key  # same search
    other_space = load_study(write(tmp_path, SEARCH.replace("high: 0.5", "high: 0.4")), "smoke")
    assert other_space.key != study.key
    with pytest.raises(StudyError, match=r"tiny.yaml: factors: Field required \(or give a search block"):
        load_study(write(tmp_path, SEARCH.split("search:")[0]))
    with pytest.raises(StudyError, match=r"--set.search.n_trials: this study has no search block"):
        load_study(ROOT / "studies" / "batchnorm.yaml", "smoke", {"search.n_trials": 3})


def test_search_beside_factors_has_one_cell_per_arm_with_the_first_seed(tmp_path):
    text = SEARCH.replace("metric:", "factors: {batchnorm: [true, false]}\nseeds: [3, 4]\nmetric:")
    study = load_study(write(tmp_path, text), "smoke")
    assert [c.key for c in study.cells()] == ["batchnorm=true seed=3", "batchnorm=false seed=3"]


# --------------------------------------------------------------------------------------------- factories


def _spec(tmp_path, sampler="{name: tpe, seed: 0}", pruner="{name: median}"):
    text = SEARCH.replace("{name: tpe, seed: 0}", sampler).replace("{name: median}", pruner)
    return load_study(write(tmp_path, text, "f.yaml")).search


@pytest.mark.parametrize(
    ("sampler", "cls"),
    [
        ("{name: tpe, seed: 0, n_startup_trials: 4}", optuna.samplers.TPESampler),
        ("{name: random}", optuna.samplers.RandomSampler),
        ("{name: qmc, seed: 1, qmc_type: halton}", optuna.samplers.QMCSampler),
    ],
)
def test_sampler_factory(tmp_path, sampler, cls):
    spec = _spec(tmp_path, sampler)
    assert type(hpsearch.make_sampler(spec)) is cls
    if spec.sampler.name == "tpe":
        assert hpsearch.make_sampler(spec)._n_startup_trials == 4  # options reach the Optuna class


def test_per_trial_seeds_are_reproducible_and_differ_between_trials(tmp_path):
    spec = _spec(tmp_path)
    dist = optuna.distributions.FloatDistribution(0.0, 1.0)

    def draw(number):
        study = optuna.create_study()
        return hpsearch.make_sampler(spec, number).sample_independent(study, None, "x", dist)

    assert draw(3) == draw(3) and draw(3) != draw(4)


def test_grid_sampler_walks_steps_and_choices(tmp_path):
    text = SEARCH.replace("{name: tpe, seed: 0}", "{name: grid}").replace(
        "log: true}", "step: 1.0e-3}\n    train.batch_size: {type: int, low: 16, high: 64, step: 16}"
    )
    text = text.replace("low: 1.0e-4", "low: 1.0e-3").replace("1.0e-2", "3.0e-3").replace("0.5}", "0.5, step: 0.25}")
    spec = load_study(write(tmp_path, text)).search
    grid = hpsearch.grid_space(spec)
    assert grid["optim.lr"] == [0.001, 0.002, 0.003] and grid["train.batch_size"] == [16, 32, 48, 64]
    assert grid["model.dropout_p"] == [0.0, 0.25, 0.5]
    assert grid["optim.name"] == ["adam", "sgd"]
    assert type(hpsearch.make_sampler(spec)) is optuna.samplers.GridSampler


@pytest.mark.parametrize(
    ("pruner", "cls"),
    [
        ("{name: none}", optuna.pruners.NopPruner),
        ("{name: median, n_warmup_steps: 2}", optuna.pruners.MedianPruner),
        ("{name: hyperband, min_resource: 1, max_resource: 3}", optuna.pruners.HyperbandPruner),
        ("{name: successive_halving}", optuna.pruners.SuccessiveHalvingPruner),
        ("{name: threshold, lower: 0.2}", optuna.pruners.ThresholdPruner),
        ("{name: percentile, percentile: 25.0}", optuna.pruners.PercentilePruner),
    ],
)
def test_pruner_factory(tmp_path, pruner, cls):
    assert type(hpsearch.make_pruner(_spec(tmp_path, pruner=pruner))) is cls


def test_cmaes_without_its_package_says_what_to_install(tmp_path):
    import importlib.util

    if importlib.util.find_spec("cmaes") is not None:
        pytest.skip("cmaes is installed")
    with pytest.raises(StudyError, match="search.sampler.name: the cmaes sampler needs the cmaes package"):
        _spec(tmp_path, "{name: cmaes}")


def test_pruning_metric_follows_the_study_metric():
    assert hpsearch.pruning_metric("test_acc") == "val_acc" and hpsearch.pruning_metric("test_top3") == "val_acc"
    assert hpsearch.pruning_metric("test_loss") == "val_loss"


# --------------------------------------------------------------------------------------------- searches


@pytest.fixture(scope="module")
def empty_stores(tmp_path_factory):
    """Empty MLflow and Optuna databases, made once: creating MLflow's tables takes seconds, copying them not."""
    from ablations.tracking import Tracker

    folder = tmp_path_factory.mktemp("stores")
    Tracker(f"sqlite:///{folder}/mlflow.db")
    optuna.storages.RDBStorage(f"sqlite:///{folder}/optuna.db")
    return folder


def _fresh_stores(folder: Path, empty: Path) -> None:
    (folder / "mlruns").mkdir()
    for name in ("mlflow.db", "optuna.db"):
        shutil.copy(empty / name, folder / "mlruns" / name)


@pytest.fixture
def env(tmp_path, monkeypatch, empty_stores):
    """A working directory with its own (empty) default stores, and tiny in-memory data."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("ABLATE_OPTUNA_STORAGE", raising=False)
    monkeypatch.setattr(runner, "load_splits", lambda cfg: tiny_splits())  # splits_for lives in the runner
    _fresh_stores(tmp_path, empty_stores)
    return tmp_path


def _client():
    from mlflow import MlflowClient

    from ablations.tracking import resolve_tracking_uri

    return MlflowClient(resolve_tracking_uri(None))


def _runs(study="tiny", role="cell"):
    client = _client()
    exp = client.get_experiment_by_name(study)
    return client.search_runs([exp.experiment_id], f"tags.`ablate.role` = '{role}'", max_results=1000)


def _trials(name):
    from ablations.search import resolve_storage

    return optuna.load_study(study_name=name, storage=resolve_storage(None)).get_trials()


def test_search_runs_the_trials_logs_the_best_and_respects_the_cap(env):
    study = load_study(write(env, SEARCH))
    summary = hpsearch.run_search(study, progress=False)
    arm = summary.arms[0]
    assert arm.optuna_study == study.key and len(arm.complete) == 3 and arm.counts["complete"] == 3
    trials = _trials(study.key)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    assert all(t.params["optim.name"] in ("adam", "sgd") and 1e-4 <= t.params["optim.lr"] <= 1e-2 for t in trials)
    assert len({t.params["optim.lr"] for t in trials}) == 3  # the per-trial seeds draw different values

    (parent,) = _runs(role="parent")
    runs = _runs()
    assert sorted(r.info.run_name for r in runs) == ["trial 0", "trial 1", "trial 2"]
    run = next(r for r in runs if r.info.run_name == "trial 1")
    assert run.info.status == "FINISHED" and run.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert run.data.tags["optuna.trial_number"] == "1" and run.data.tags["ablate.seed"] == "0"
    assert run.data.tags["ablate.arm"] == "" and run.data.tags["ablate.trial_state"] == "COMPLETE"
    assert run.data.params["search.optim.lr"] == run.data.params["optim.lr"] == str(trials[1].params["optim.lr"])
    assert run.data.params["train.seed"] == "0" and run.data.params["model.batchnorm"] == "True"  # full config
    assert {"val_acc", "test_acc", "trial_value"} <= set(run.data.metrics)
    assert trials[1].user_attrs["mlflow_run_id"] == run.info.run_id

    client = _client()
    files = {f.path for f in client.list_artifacts(parent.info.run_id)}
    assert set(hpsearch.PLOTS) | {"best_config.yaml", "config.yaml"} <= files
    best = min(trials, key=lambda t: (-t.value, t.number))
    text = Path(client.download_artifacts(parent.info.run_id, "best_config.yaml", str(env))).read_text()
    assert yaml.safe_load(text) == best.params == arm.best_params and f"best trial {best.number}" in text
    assert list(yaml.safe_load(text)) == ["optim.lr", "model.dropout_p", "optim.name"]  # file order
    assert parent.data.tags["ablate.best_trial"] == str(best.number)

    # the same command again: the cap is reached, nothing is trained, no new trial or run
    again = hpsearch.run_search(study, progress=False)
    assert again.arms[0].trained == 0 and len(_trials(study.key)) == 3 and len(_runs()) == 3
    # a larger cap continues the same search
    more = hpsearch.run_search(load_study(env / "tiny.yaml", sets={"search.n_trials": 4}), progress=False)
    assert more.arms[0].complete == [3] and more.arms[0].parent_run_id == parent.info.run_id

    rep = render_search(load_search("tiny"))
    assert "(4 of 4 finished: 4 complete, 0 pruned, 0 failed)" in rep
    lines = [line.split() for line in rep.splitlines() if line.split()[:1] in (["0"], ["1"], ["2"], ["3"])]
    values = [float(line[2]) for line in lines]
    assert values == sorted(values, reverse=True) and int(lines[0][0]) == more.arms[0].best_trial
    assert f"best config (trial {more.arms[0].best_trial}), for a study's base:" in rep and "  optim.lr: " in rep


def test_pruned_trials_end_killed_with_the_epoch(env):
    # a threshold no validation accuracy reaches, checked from epoch 2 on: every trial is pruned there
    text = SEARCH.replace("{name: median}", "{name: threshold, lower: 2.0, n_warmup_steps: 2}")
    text = text.replace("n_trials: 3", "n_trials: 2").replace("train.epochs: 1", "train.epochs: 3")
    study = load_study(write(env, text))
    summary = hpsearch.run_search(study, progress=False)
    assert summary.arms[0].pruned == [0, 1] and summary.arms[0].complete == []
    trials = _trials(study.key)
    assert [t.state.name for t in trials] == ["PRUNED", "PRUNED"]
    assert list(trials[0].intermediate_values) == [1, 2]  # val_acc reported after epochs 1 and 2
    runs = _runs()
    assert {r.info.status for r in runs} == {"KILLED"}
    assert {r.data.tags["ablate.failure"] for r in runs} == {"pruned at epoch 2"}
    assert all(r.data.tags["ablate.trial_state"] == "PRUNED" for r in runs)
    assert hpsearch.run_search(study, progress=False).arms[0].trained == 0  # pruned trials count toward the cap
    rep = render_search(load_search("tiny"))
    assert "(2 of 2 finished: 0 complete, 2 pruned, 0 failed)" in rep and "pruned at epoch 2" in rep
    assert "no complete trial yet" in rep


def test_a_diverging_trial_fails_and_the_search_goes_on(env, monkeypatch):
    real_fit, calls = hpsearch.fit, []

    def fit_diverging_once(cfg, splits, callbacks):
        calls.append(1)
        if len(calls) == 1:
            raise DivergedError(1, float("nan"))
        return real_fit(cfg, splits, callbacks)

    monkeypatch.setattr(hpsearch, "fit", fit_diverging_once)
    study = load_study(write(env, SEARCH.replace("n_trials: 3", "n_trials: 2")))
    arm = hpsearch.run_search(study, progress=False).arms[0]
    assert arm.complete == [1] and list(arm.failed) == [0] and "diverged" in arm.failed[0]
    assert [t.state.name for t in _trials(study.key)] == ["FAIL", "COMPLETE"]
    failed = [r for r in _runs() if r.info.status == "FAILED"]
    assert len(failed) == 1 and "diverged" in failed[0].data.tags["ablate.failure"]
    assert arm.counts == {"complete": 1, "pruned": 0, "failed": 1, "running": 0}  # the failure used a place
    again = hpsearch.summary_text(hpsearch.run_search(study, progress=False))
    assert "trained 0 trial(s)" in again and "2 of 2 finished (1 complete, 0 pruned, 1 failed)" in again


def test_an_interrupted_trial_gives_its_place_back(env, monkeypatch):
    real_fit, calls = hpsearch.fit, []

    def fit_then_ctrl_c(cfg, splits, callbacks):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_fit(cfg, splits, callbacks)

    monkeypatch.setattr(hpsearch, "fit", fit_then_ctrl_c)
    study = load_study(write(env, SEARCH.replace("n_trials: 3", "n_trials: 2")))
    with pytest.raises(KeyboardInterrupt):
        hpsearch.run_search(study, progress=False)
    assert {r.info.status for r in _runs()} == {"FINISHED", "KILLED"}
    assert _runs(role="parent")[0].info.status == "KILLED"
    monkeypatch.setattr(hpsearch, "fit", real_fit)
    arm = hpsearch.run_search(study, progress=False).arms[0]
    assert arm.complete == [2]  # trial 1 was interrupted: not counted, one more fills the cap of 2
    assert [t.state.name for t in _trials(study.key)] == ["COMPLETE", "FAIL", "COMPLETE"]


def test_the_cap_holds_when_another_worker_asks_in_between(env, monkeypatch):
    """Another process takes the last place between this worker's check and its ask: no training."""
    study = load_study(write(env, SEARCH.replace("n_trials: 3", "n_trials: 1")))
    real, calls = optuna.storages.fail_stale_trials, []

    def other_worker_asks(ostudy):  # Optuna calls this just before each ask in optimize
        calls.append(1)
        if len(calls) == 2:  # the first call is ablate's own, when it opens the study
            optuna.load_study(study_name=ostudy.study_name, storage=ostudy._storage).ask()
        return real(ostudy)

    monkeypatch.setattr(optuna.storages, "fail_stale_trials", other_worker_asks)
    arm = hpsearch.run_search(study, progress=False).arms[0]
    assert arm.trained == 0 and arm.running_elsewhere == [0]
    trials = _trials(study.key)
    assert [t.state.name for t in trials] == ["RUNNING", "FAIL"]
    assert trials[1].user_attrs["outcome"] == "over_cap" and not _runs()


def test_each_arm_gets_its_own_search(env):
    text = SEARCH.replace("metric:", "factors: {batchnorm: [true, false]}\nmetric:")
    study = load_study(write(env, text), "smoke", {"search.n_trials": 1})  # 1 epoch, 1 trial per arm
    summary = hpsearch.run_search(study, progress=False)
    assert [a.arm for a in summary.arms] == ["batchnorm=true", "batchnorm=false"]
    assert [a.optuna_study for a in summary.arms] == [f"{study.key}:batchnorm=true", f"{study.key}:batchnorm=false"]
    assert all(a.complete == [0] for a in summary.arms)
    parents = _runs(role="parent")
    assert sorted(p.data.tags["ablate.arm"] for p in parents) == ["batchnorm=false", "batchnorm=true"]
    runs = _runs()
    assert len(runs) == 2 and {r.data.params["factor.batchnorm"] for r in runs} == {"true", "false"}
    assert {r.data.params["model.batchnorm"] for r in runs} == {"True", "False"}
    text = hpsearch.summary_text(summary)
    assert "search tiny [batchnorm=false]: trained 1 trial(s)" in text and "best config" in text
    rep = render_search(load_search("tiny"))
    assert rep.index("arms") < rep.index("trials of batchnorm=true") < rep.index("trials of batchnorm=false")
    assert "compare the tuned arms" in " ".join(rep.split())


def test_cli_runs_a_search_and_reports_its_trials(env):
    write(env, SEARCH.replace("n_trials: 3", "n_trials: 2"))
    runner = CliRunner()
    out = runner.invoke(main, ["run", "tiny.yaml"])
    assert out.exit_code == 0, out.output
    assert "trained 2 trial(s): 2 complete, 0 pruned, 0 failed" in out.output
    assert "best config" in out.output and "    optim.lr: " in out.output  # indented to paste under base:
    rep = runner.invoke(main, ["report", "tiny"])
    assert rep.exit_code == 0, rep.output
    assert "2 of 2 finished: 2 complete" in rep.output and "optim.lr" in rep.output
    csv = runner.invoke(main, ["report", "tiny.yaml", "--format", "csv", "--output", "t.csv", "--plots", "p"])
    assert csv.exit_code == 0, csv.output
    assert (env / "t.csv").read_text().startswith("arm,number,state,value,test_acc,run_id,note,optim.lr")
    assert (env / "p" / "optimization_history.png").exists()
    runs = runner.invoke(main, ["runs", "tiny"])  # the trials' run IDs, for evaluate/predict
    assert runs.exit_code == 0, runs.output
    assert runs.output.startswith("search tiny, parent run ") and runs.output.count(" complete ") == 2


# --------------------------------------------------------------------------------------------- end to end


@pytest.mark.e2e
def test_search_lr_smoke_end_to_end(tmp_path, monkeypatch, real_archive, empty_stores):
    monkeypatch.chdir(tmp_path)
    _fresh_stores(tmp_path, empty_stores)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("ABLATE_OPTUNA_STORAGE", raising=False)
    runner = CliRunner()
    out = runner.invoke(main, ["run", str(ROOT / "studies" / "search_lr.yaml"), "--profile", "smoke"])
    assert out.exit_code == 0, out.output
    assert "trained 3 trial(s)" in out.output and "0 failed" in out.output and "best config" in out.output
    client = _client()
    (parent,) = _runs("search_lr", "parent")
    assert parent.info.status == "FINISHED" and parent.data.tags["ablate.profile"] == "smoke"
    files = {f.path for f in client.list_artifacts(parent.info.run_id)}
    assert {"best_config.yaml", "optimization_history.png", "parallel_coordinate.png"} <= files
    assert "param_importances.png" in files  # 3 complete trials, 3 params
    assert len(_runs("search_lr")) == 3
    again = runner.invoke(main, ["run", str(ROOT / "studies" / "search_lr.yaml"), "--profile", "smoke"])
    assert again.exit_code == 0 and "trained 0 trial(s)" in again.output and len(_runs("search_lr")) == 3
    rep = runner.invoke(main, ["report", "search_lr"])
    assert rep.exit_code == 0 and "3 of 3 finished: 3 complete" in rep.output
