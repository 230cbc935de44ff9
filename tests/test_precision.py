"""``train.precision``: what ``auto`` resolves to (the CPU detection mocked both ways), what bf16 keeps in fp32,
and that a run records the precision it trained in."""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch
from torch import nn

import ablations.runner as runner
import core.precision as precision_mod
import core.train as train_mod
from ablations.study import load_study
from core.config import RunConfig, apply_overrides
from core.precision import cpu_features, cpu_summary, resolve_precision
from core.train import Callback, autocast_context, fit
from tests.conftest import tiny_splits

CPU = torch.device("cpu")
TINY = {
    "train.epochs": 1,
    "train.batch_size": 16,
    "train.device": "cpu",
    "model.widths": [8, 8, 16, 16],
    "train.eval_batch_size": 16,
}


@pytest.fixture(params=[True, False], ids=["native-bf16", "no-native-bf16"])
def native(request, monkeypatch) -> bool:
    """The CPU detection replaced: this CPU computes bf16 natively, or it does not."""
    monkeypatch.setattr(precision_mod, "cpu_bf16_native", lambda: request.param)
    return request.param


def test_auto_is_bf16_where_the_cpu_computes_it_natively_and_fp32_elsewhere(native):
    assert resolve_precision("auto", "cpu") == ("bf16" if native else "fp32")
    assert resolve_precision("auto", CPU) == ("bf16" if native else "fp32")
    assert resolve_precision("auto", "cuda:0") == "bf16"  # CUDA: bf16 whatever the CPU
    assert resolve_precision("auto", "mps") == "fp32"
    for explicit in ("fp32", "bf16", "fp16"):  # only auto depends on the host
        assert resolve_precision(explicit, "cpu") == explicit
    with pytest.raises(ValueError, match="train.precision"):
        resolve_precision("bf32", "cpu")


def test_autocast_context_follows_the_resolution(native):
    ctx, scaler = autocast_context(apply_overrides(RunConfig(), {"train.precision": "auto"}), CPU)
    assert scaler is False
    if native:
        assert isinstance(ctx, torch.autocast) and ctx.fast_dtype == torch.bfloat16
    else:
        assert isinstance(ctx, nullcontext)
    ctx, _ = autocast_context(apply_overrides(RunConfig(), {"train.precision": "fp32"}), CPU)
    assert isinstance(ctx, nullcontext)  # an explicit setting wins over the detection


def test_the_detection_reads_the_native_instructions(monkeypatch):
    """AVX512-BF16 or AMX-BF16 with oneDNN on: native; AVX-512 alone (oneDNN emulates bf16 there): not."""
    base = {"model": "x", "capability": "AVX512", "onednn": True, "onednn_bf16": True}
    cases = [
        ({"avx512_bf16": True, "amx_bf16": False}, True),
        ({"avx512_bf16": False, "amx_bf16": True}, True),
        ({"avx512_bf16": False, "amx_bf16": False}, False),  # e.g. Skylake-SP, Ice Lake: emulated, slower
        ({"avx512_bf16": True, "amx_bf16": True, "onednn": False}, False),
    ]
    for flags, expected in cases:
        monkeypatch.setattr(precision_mod, "cpu_features", lambda flags=flags: {**base, **flags})
        assert precision_mod.cpu_bf16_native() is expected, flags
    monkeypatch.undo()
    f = cpu_features()  # the real host: every key is there, and the summary names the pick
    assert {"model", "capability", "onednn", "onednn_bf16", "avx512_bf16", "amx_bf16"} <= set(f)
    assert f"train.precision auto = {resolve_precision('auto', 'cpu')}" in cpu_summary()


def test_bf16_keeps_batchnorm_statistics_loss_and_optimiser_state_in_fp32(monkeypatch):
    """One bf16 epoch of a tiny cnn4 through the real loop: convolutions run in bf16, everything autocast
    leaves alone stays fp32 (the weights, BatchNorm's running statistics, the loss, Adam's moments)."""
    seen: dict[str, object] = {"conv": set(), "loss": set()}
    real_create, real_optimizer = train_mod.create_model, train_mod._optimizer

    def create(cfg, seed=0):
        model = real_create(cfg, seed=seed)
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.register_forward_hook(lambda mod, args, out: seen["conv"].add(out.dtype))
        return model

    def optimizer(cfg, params):
        seen["opt"] = real_optimizer(cfg, params)
        return seen["opt"]

    class Loss(Callback):
        def on_batch_end(self, epoch, step, images, loss):
            seen["loss"].add(loss.dtype)

    monkeypatch.setattr(train_mod, "create_model", create)
    monkeypatch.setattr(train_mod, "_optimizer", optimizer)
    cfg = apply_overrides(RunConfig(), {**TINY, "train.precision": "bf16", "model.batchnorm": True})
    result = fit(cfg, tiny_splits(), [Loss()])
    assert seen["conv"] == {torch.bfloat16}  # autocast was on: the convolutions computed in bf16
    assert seen["loss"] == {torch.float32}
    stats = {k: v for k, v in result.state_dict.items() if k.endswith(("running_mean", "running_var"))}
    assert stats and all(v.dtype == torch.float32 for v in stats.values())
    assert all(v.dtype == torch.float32 for v in result.state_dict.values() if v.is_floating_point())
    assert all(v.abs().sum() > 0 for k, v in stats.items() if k.endswith("running_mean"))  # updated, not left at 0
    opt_state = [v for s in seen["opt"].state.values() for v in s.values() if torch.is_tensor(v) and v.dim()]
    assert opt_state and all(v.dtype == torch.float32 for v in opt_state)  # exp_avg, exp_avg_sq


STUDY = (
    "name: prec\nquestion: q\nbase: {train.epochs: 1, train.batch_size: 16, train.device: cpu, "
    "model.widths: [8, 8, 16, 16]}\nfactors:\n  batchnorm: [true, false]\nseeds: [0]\n"
)


def test_a_run_records_the_precision_it_trained_in_not_auto(tmp_path, monkeypatch, capsys, native):
    """The cell's MLflow run has ``ablate.precision`` = what auto resolved to; the param stays ``auto``
    (the study key does not depend on the host), and the budget line says which precision it timed."""
    from mlflow import MlflowClient

    from ablations.tracking import resolve_tracking_uri

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(runner, "load_splits", lambda cfg: tiny_splits())
    path = tmp_path / "prec.yaml"
    path.write_text(STUDY)
    runner.run_study(load_study(path), progress=False)
    expected = "bf16" if native else "fp32"
    assert f" in {expected}, measured just now)" in capsys.readouterr().out
    client = MlflowClient(resolve_tracking_uri(None))
    exp = client.get_experiment_by_name("prec")
    cells = client.search_runs([exp.experiment_id], "tags.`ablate.role` = 'cell'")
    assert len(cells) == 2
    for run in cells:
        assert run.data.tags["ablate.precision"] == expected
        assert run.data.params["train.precision"] == "auto"
    from ablations.report import build_report, load_runs

    sr = load_runs("prec")  # the report reads the tag back: one precision, nothing mixed
    assert sr.precisions["precision"].tolist() == [expected, expected]
    assert build_report(sr).mixed_precision.empty
