"""Sequential studies end to end: the look plan, resuming, stopping when decided, equivalence of identical arms,
a large effect stopping at the first look, and the report's looks."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import ablations.runner as runner
from ablations.cli import main
from ablations.rendering import render
from ablations.report import build_report, load_runs
from ablations.study import StudyError, load_study
from tests.conftest import tiny_splits

TINY = (
    "name: {name}\nquestion: q\nbase: {{train.epochs: 1, train.batch_size: 16, train.device: cpu}}\n"
    "factors:\n  batchnorm: [true, false]\nseeds: [0, 1, 2]\n"
)


def write(tmp_path: Path, text: str, name: str = "seq") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


def test_the_look_plan_adds_step_seeds_up_to_the_cap(tmp_path):
    path = write(tmp_path, TINY.format(name="seq") + "sequential: {max_seeds: 8, step: 2}\n")
    study = load_study(path)
    assert study.looks() == [[0, 1, 2], [0, 1, 2, 3, 4], [0, 1, 2, 3, 4, 5, 6], [0, 1, 2, 3, 4, 5, 6, 7]]
    assert load_study(path, max_seeds=4).looks() == [[0, 1, 2], [0, 1, 2, 3]]
    plain = write(tmp_path, TINY.format(name="plain"), "plain")
    assert load_study(plain).looks() == [[0, 1, 2]]
    assert load_study(plain, until_decided=True).sequential.max_seeds == 20  # the block's defaults
    assert load_study(plain).key == load_study(plain, until_decided=True).key  # same study, same finished cells


@pytest.mark.parametrize(
    ("block", "where", "message"),
    [
        ("sequential: {max_seeds: 2}\n", "sequential.max_seeds", "fewer than the study's 3 seeds"),
        ("sequential: {step: 0}\n", "sequential.step", "greater than or equal to 1"),
        ("sequential: {max_seed: 9}\n", "sequential.max_seed", "Extra inputs"),
        ("sequential: {equivalence_margin: -1}\n", "sequential.equivalence_margin", "greater than 0"),
    ],
)
def test_a_bad_sequential_block_names_the_file_and_key(tmp_path, block, where, message):
    path = write(tmp_path, TINY.format(name="bad") + block)
    with pytest.raises(StudyError) as err:
        load_study(path)
    assert str(path) in str(err.value) and where in str(err.value) and message in str(err.value)


@pytest.fixture
def tiny_store(tmp_path, monkeypatch):
    """Run studies in tmp_path (its mlruns/) on tiny data."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(runner, "load_splits", lambda cfg: tiny_splits())
    return tmp_path


def test_a_sequential_study_resumes_from_its_finished_seeds_and_a_finished_one_trains_nothing(
    tmp_path, tiny_store, capsys
):
    # planned looks with Pocock's boundary (the default is the anytime-valid sequence alone, which has no looks
    # beyond a plan)
    path = write(tmp_path, TINY.format(name="resume") + "sequential: {boundary: pocock}\n")
    first = runner.run_study(load_study(path, max_seeds=3), progress=False)  # as if killed after look 1
    assert len(first.trained) == 6 and first.stopped == "max_seeds"
    again = runner.run_study(load_study(path, max_seeds=5), progress=False)
    assert (
        "plan: looks at 3 seeds per arm, fixed by the study's first sequential run; the looks at 5 seeds per arm"
        in (capsys.readouterr().out)
    )
    assert sorted(again.trained) == sorted(f"batchnorm={b} seed={s}" for b in ("true", "false") for s in (3, 4))
    assert again.skipped == 6 and len(again.looks) == 2
    done = runner.run_study(load_study(path, max_seeds=5), progress=False)
    assert done.trained == [] and done.skipped == 10 and done.stopped == again.stopped
    r = build_report(load_runs("resume"))
    # tiny random images, no true effect: 5 seeds per arm decide nothing, and the study says it hit its cap
    assert r.sequential["stopped"] == "max_seeds" and [x["seeds"] for x in r.sequential["looks"]] == [3, 5]
    assert json.loads(render(r, "json"))["sequential"]["looks"][1]["seeds"] == 5
    page = render(r, "html")  # one self-contained page: the figures inline, the looks plot among them
    assert "<h2>Looks</h2>" in page and 'alt="looks" src="data:image/png;base64,' in page
    assert 'alt="effects"' in page and 'alt="learning_curves"' in page
    # The first sequential run planned one look (max 3): the later --max-seeds 5 keeps that plan, so look 2
    # lies beyond it and gets the anytime-valid interval alone.
    assert r.sequential["plan"] == {"looks": [3], "reserve": 0.1, "boundary": "pocock"}
    assert r.sequential["analysis"]["alpha"] == 0.05 and r.sequential["analysis"]["claims"] == []
    assert [look["comparisons"][0]["test"] for look in r.sequential["looks"]] == ["RCI", "t-CS"]
    text = render(r, "table")
    assert "at the 1 look the study's first sequential run planned (3 seeds per arm)" in " ".join(text.split())
    assert "\n2       5*" in text and "* beyond the plan of the study's first sequential run" in text


def test_a_study_that_ran_sequentially_before_plans_were_recorded_keeps_the_anytime_intervals(
    tmp_path, tiny_store, capsys
):
    from ablations.report import PLAN_TAG
    from ablations.tracking import Tracker

    path = write(tmp_path, TINY.format(name="legacy"))
    first = runner.run_study(load_study(path, max_seeds=3), progress=False)
    assert build_report(load_runs("legacy")).sequential["plan"]["looks"] == [3]  # the plan is recorded
    client = Tracker(None).client
    client.delete_tag(first.parent_run_id, PLAN_TAG)  # as an earlier version left it: no plan on the parent run
    r = build_report(load_runs("legacy"))
    assert r.sequential["plan"] is None and r.sequential["looks"][0]["comparisons"][0]["test"] == "t-CS"
    capsys.readouterr()
    runner.run_study(load_study(path, max_seeds=5), progress=False)  # its looks were seen: no plan now
    assert "plan: none recorded" in capsys.readouterr().out
    recorded = json.loads(client.get_run(first.parent_run_id).data.tags[PLAN_TAG])
    assert recorded["looks"] is None and recorded["analysis"]["alpha"] == 0.05  # the analysis is frozen from now on
    r = build_report(load_runs("legacy"))
    assert {look["comparisons"][0]["test"] for look in r.sequential["looks"]} == {"t-CS"}


def test_a_fixed_seed_study_cannot_start_a_plan_on_the_runs_its_report_has_seen(tmp_path, tiny_store):
    """Peeking at a fixed-seed report and going sequential only when it was not significant would spend the
    alpha twice: the runner refuses instead of recording a fresh plan whose first look is data already tested."""
    path = write(tmp_path, TINY.format(name="peek"))
    runner.run_study(load_study(path), progress=False)  # 3 seeds per arm, reported at alpha 0.05
    with pytest.raises(runner.PlanError) as err:
        runner.run_study(load_study(path, until_decided=True), progress=False)
    message = str(err.value)
    assert "\n" not in message and "already has 6 finished run(s) of seeds 0, 1, 2" in message
    assert "start a new study: give" in message and "a new name: and seeds not yet run" in message
    out = CliRunner().invoke(main, ["run", str(path), "--until-decided"])  # the same stores (mlruns/ here)
    assert out.exit_code == 1 and "Traceback" not in out.output and "already has 6 finished run(s)" in out.output


def test_editing_the_analysis_after_the_first_sequential_run_is_refused(tmp_path, tiny_store):
    """alpha, the margins and the claims are fixed with the looks: loosening them after an undecided look would
    make a decision at the next look more likely than the plan's error rate allows."""
    claim = (
        "claims:\n  - {source: s, text: t, treatment: {batchnorm: false}, control: {batchnorm: true},"
        " direction: increase, min_effect: 2.0}\n"
    )
    block = "sequential: {equivalence_margin: 1.0}\n"
    path = write(tmp_path, TINY.format(name="frozen") + block + claim)
    original = path.read_text()
    runner.run_study(load_study(path, max_seeds=3), progress=False)
    for key, edited, recorded in (
        ("alpha", original + "alpha: 0.1\n", "0.05"),
        ("equivalence_margin", original.replace(block, "sequential: {equivalence_margin: 5.0}\n"), "1.0"),
        ("claims", original.replace("min_effect: 2.0", "min_effect: 0.5"), '"min_effect": 2.0'),
    ):
        path.write_text(edited)
        with pytest.raises(runner.PlanError) as err:
            runner.run_study(load_study(path, max_seeds=5), progress=False)
        message = str(err.value)
        assert "\n" not in message and f"{key} is " in message and recorded in message, message
        assert "put the value back, or" in message and "start a new study" in message
    path.write_text(original.replace("text: t", "text: the same test in other words"))  # words may change
    runner.run_study(load_study(path, max_seeds=3), progress=False)
    # `ablate report --alpha` on the study: the recorded plan's verdict, and beside it an exploratory one
    out = CliRunner().invoke(main, ["report", "frozen", "--alpha", "0.2", "--format", "json"])
    assert out.exit_code == 0, out.output
    rep = json.loads(out.output)
    assert rep["alpha"] == 0.05 and rep["sequential"]["analysis"]["alpha"] == 0.05
    assert rep["exploratory"]["alpha"] == 0.2 and rep["exploratory"]["changed"][0]["key"] == "alpha"
    text = CliRunner().invoke(main, ["report", "frozen", "--alpha", "0.2"]).output
    assert "exploratory" in text and "not error-controlled" in " ".join(text.split())


def test_the_looks_plot_draws_one_panel_per_deciding_comparison():
    from ablations.plots import looks_plot

    looks = [
        {
            "seeds": n,
            "comparisons": [
                {"effect": e, "estimate": 1.0, "ci_low": lo, "ci_high": 2.0, "verdict": v} for e in ("a", "b")
            ],
        }
        for n, lo, v in ((3, float("-inf"), "no detectable difference"), (5, 0.2, "better"))
    ]
    fig = looks_plot(looks, "pp", margin=1.0, title="t")
    assert [ax.get_title() for ax in fig.axes] == ["a", "b"]
    assert all(ax.get_ylim()[0] < 0 < ax.get_ylim()[1] for ax in fig.axes)


def _run(tmp_path, study_file, *extra):
    stores = ["--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--storage", f"sqlite:///{tmp_path}/optuna.db"]
    return CliRunner().invoke(main, ["run", str(study_file), *stores, *extra])


def _report(tmp_path, name):
    out = CliRunner().invoke(
        main, ["report", name, "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--format", "json"]
    )
    assert out.exit_code == 0, out.output
    return json.loads(out.output)


@pytest.mark.e2e
def test_two_identical_arms_under_different_labels_end_equivalent_at_the_first_look(tmp_path, real_archive):
    study = write(
        tmp_path,
        "name: same\nquestion: do two labels of one config differ?\n"
        "base: {train.epochs: 1, train.batch_size: 32, data.train_subset: 320, data.val_fraction: 0.05,"
        " data.test_subset: 500}\n"
        "factors:\n  variant:\n    a: {optim.lr: 1.0e-3}\n    b: {optim.lr: 1.0e-3}\n"
        "seeds: [0, 1, 2]\nsequential: {max_seeds: 9, equivalence_margin: 1.0}\n",
    )
    out = _run(tmp_path, study)
    assert out.exit_code == 0, out.output
    assert "sequential: decided at look 1 (3 seeds per arm)" in out.output
    rep = _report(tmp_path, "same")
    effect = rep["effects"][0]
    assert effect["estimate"] == 0 and effect["ci_low"] == 0 and effect["ci_high"] == 0  # the runs are identical
    assert effect["verdict"] == "equivalent" and rep["sequential"]["stopped"] == "decided"
    assert len(rep["sequential"]["looks"]) == 1


@pytest.mark.e2e
def test_a_large_true_effect_stops_at_the_first_look_not_at_the_cap(tmp_path, real_archive):
    study = write(
        tmp_path,
        "name: lr\nquestion: does a 100x smaller learning rate hurt?\n"
        # cnn4 with one linear layer after its convs (model.hidden: 0) learns fast enough in 2 epochs on 1,600
        # images for a 100x smaller lr to be far behind (seed 000's three-layer head learns slower there)
        "base: {train.epochs: 2, train.batch_size: 64, data.train_subset: 1600, data.val_fraction: 0.05,"
        " data.test_subset: 1000, model.hidden: 0}\n"
        "factors:\n  optim.lr: [1.0e-3, 1.0e-5]\nseeds: [0, 1, 2]\n",
    )
    out = _run(tmp_path, study, "--max-seeds", "9")
    assert out.exit_code == 0, out.output
    assert "sequential: decided at look 1 (3 seeds per arm)" in out.output, out.output
    rep = _report(tmp_path, "lr")
    assert rep["effects"][0]["verdict"] == "worse" and len(rep["runs"]) == 6
