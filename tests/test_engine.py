"""The training engine: learning, accumulation, exact resume, NaN/early stop, multi-process, CLI."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from pytc.config import load_config
from pytc.engine import fit
from pytc.errors import ConfigError, OutputExistsError, PytcError

# A tiny residual U-Net (3 levels, 4..16 features) on 16×32×32 patches: ~15 ms a step on one core
# (one thread: on a busy 2-core machine two OpenMP threads per process run ~5x slower, not faster).
TINY = [
    "data.patch_size=[16,32,32]", "data.batch_size=2", "data.num_workers=0", "data.augment.enabled=false",
    "model.architecture=monai_unet", "model.filters=[4,8,16]", "system.num_cpus=1", "system.num_gpus=0",
    "optimizer.lr=0.01", "scheduler.name=constant", "logging.log_every_n_steps=1", "checkpoint.every_n_steps=1000",
]


def write_blobs(path: Path, shape=(32, 64, 64), seed: int = 0) -> str:
    """Bright balls on dark noise (labels = balls) as HDF5; returns the file path."""
    import h5py

    rng = np.random.default_rng(seed)
    zz, yy, xx = np.mgrid[: shape[0], : shape[1], : shape[2]]
    label = np.zeros(shape, np.uint8)
    for _ in range(12):
        c = rng.uniform([4, 8, 8], [shape[0] - 4, shape[1] - 8, shape[2] - 8])
        r = rng.uniform(4, 7)
        label[(zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 < r * r] = 1
    image = (rng.normal(60, 20, shape) + label * 120).clip(0, 255).astype(np.uint8)
    with h5py.File(path, "w") as f:
        f["raw"], f["label"] = image, label
    return str(path)


@pytest.fixture(scope="module")
def blobs(tmp_path_factory) -> str:
    return write_blobs(tmp_path_factory.mktemp("data") / "blobs.h5")


def tiny_cfg(h5: str, *overrides: str, val: bool = True):
    data = [f"data.train_image={h5}:raw", f"data.train_label={h5}:label"]
    if val:
        data += [f"data.val_image={h5}:raw", f"data.val_label={h5}:label"]
    return load_config(None, [*data, *TINY, *overrides])


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def weights(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------------------------


def test_tiny_model_learns_blobs(blobs, tmp_path):
    settings = ["training.max_steps=100", "training.val_check_interval=50", "optimizer.lr=0.02"]
    out = fit(tiny_cfg(blobs, *settings), run_dir=tmp_path)  # ~3 s
    lines = read_metrics(tmp_path)
    losses = [ln["loss"] for ln in lines if "loss" in ln]
    assert len(losses) == 100
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])  # the loss falls
    val = [ln for ln in lines if "val/iou" in ln]
    assert [ln["step"] for ln in val] == [50, 100] and val[1]["val/iou"] > val[0]["val/iou"]
    # Sliding-window foreground IoU on the whole volume; 0.92 measured, 0.7 leaves room for other CPUs.
    assert out["metrics"]["val/iou"] >= 0.7, out["metrics"]
    assert out["metrics"]["val/dice"] >= out["metrics"]["val/iou"]
    for key in ("lr", "samples_per_s", "loss/binary/DiceLoss", "loss/binary/BCEWithLogitsLoss"):
        assert key in lines[0]
    from PIL import Image

    preview = np.asarray(Image.open(tmp_path / "previews" / "step-000100.png"))
    assert preview.dtype == np.uint8 and preview.shape == (64, 3 * 64 + 4)  # image | label | prediction
    assert load_config(tmp_path / "config.yaml") == tiny_cfg(blobs, *settings)
    assert out["best_checkpoint"] and Path(out["best_checkpoint"]).name == "step-000100"


def test_gradient_accumulation_matches_a_bigger_batch(blobs, tmp_path):
    # Micro-batch b of a step covers samples (b*P + p)*batch .. +batch, so 2 × 2 sees the same four
    # patches as 1 × 4. BCE is a per-voxel mean (Dice is a batch Dice, not additive) and SGD keeps the
    # update linear in the gradient, so the weights must agree up to float summation order.
    common = ["model.loss_functions=[BCEWithLogitsLoss]", "model.loss_weights=[1.0]", "optimizer.name=SGD",
              "optimizer.lr=0.1", "optimizer.momentum=0.0", "optimizer.weight_decay=0.0", "training.max_steps=2"]
    big = fit(tiny_cfg(blobs, *common, "data.batch_size=4", val=False), run_dir=tmp_path / "big")
    acc = fit(tiny_cfg(blobs, *common, "data.batch_size=2", "training.accumulate_grad_batches=2", val=False),
              run_dir=tmp_path / "acc")
    init = fit(tiny_cfg(blobs, *common, "training.max_steps=1", "optimizer.lr=1e-12", val=False),
               run_dir=tmp_path / "init")
    w_big, w_acc, w_init = weights(big["model"]), weights(acc["model"]), weights(init["model"])
    moved = max((w_big[k] - w_init[k]).abs().max().item() for k in w_big)
    assert moved > 1e-3  # the steps did change the weights
    for k in w_big:
        torch.testing.assert_close(w_acc[k], w_big[k], rtol=1e-5, atol=1e-6)


def test_resume_is_bit_exact(blobs, tmp_path, monkeypatch):
    # Dropout, EMA, warm-up + cosine, AdamW, augmentation and a validation in between: everything
    # that carries state across steps.
    settings = ["training.max_steps=6", "training.val_check_interval=3", "checkpoint.every_n_steps=3",
                "model.dropout=0.2", "training.ema_decay=0.9", "scheduler.name=CosineAnnealingLR",
                "scheduler.warmup_epochs=1", "training.iters_per_epoch=2", "optimizer.name=AdamW",
                "data.augment.enabled=true"]
    straight = fit(tiny_cfg(blobs, *settings), run_dir=tmp_path / "straight")

    import pytc.engine.train as train_mod

    real_step, calls = train_mod.train_step, []

    def killed_after_three(*args, **kwargs):  # the job is killed during step 4
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(train_mod, "train_step", killed_after_three)
    with pytest.raises(KeyboardInterrupt):
        fit(tiny_cfg(blobs, *settings), run_dir=tmp_path / "resumed")
    monkeypatch.setattr(train_mod, "train_step", real_step)
    assert [p.name for p in (tmp_path / "resumed" / "checkpoints").glob("step-*")] == ["step-000003"]
    resumed = fit(tiny_cfg(blobs, *settings), run_dir=tmp_path / "resumed", resume="auto")
    assert resumed["steps_this_run"] == 3 and resumed["step"] == 6

    a, b = weights(straight["model"]), weights(resumed["model"])
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:3]
    from safetensors.torch import load_file  # the EMA weights in the final checkpoints agree too

    ema_a = load_file(tmp_path / "straight/checkpoints/step-000006/model.safetensors")
    ema_b = load_file(tmp_path / "resumed/checkpoints/step-000006/model.safetensors")
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)
    # The resumed log continues the interrupted one without repeating steps.
    steps = [ln["step"] for ln in read_metrics(tmp_path / "resumed") if "loss" in ln]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(blobs, tmp_path, monkeypatch):
    import pytc.losses

    real_build = pytc.losses.build_loss

    def poisoned(model_cfg, targets):
        criterion, calls = real_build(model_cfg, targets), []

        def wrapped(outputs, target, mask=None):
            calls.append(1)
            loss, terms = criterion(outputs, target, mask)
            return (loss * float("nan") if len(calls) == 3 else loss), terms

        return wrapped

    monkeypatch.setattr(pytc.losses, "build_loss", poisoned)
    with pytest.raises(PytcError, match=r"loss became nan at step 3; lower optimizer\.lr") as err:
        fit(tiny_cfg(blobs, "training.max_steps=10", "checkpoint.every_n_steps=2", val=False), run_dir=tmp_path)
    assert "step-000002" in str(err.value)
    # TINY runs fp32 without clipping: clipping is suggested, precision is not.
    assert "set training.gradient_clip_val" in str(err.value) and "precision" not in str(err.value)
    ckpts = tmp_path / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["last", "step-000002"]
    assert (ckpts / "last").read_text().strip() == "step-000002"


def test_nan_message_suggests_only_remedies_that_apply(blobs):
    from pytc.engine.train import _nan_message

    clipped = tiny_cfg(blobs, "training.gradient_clip_val=1.0")
    text = _nan_message(float("nan"), 20, clipped, 8e-6, "16-mixed", None)
    assert text.startswith("loss became nan at step 20; lower optimizer.lr (the optimizer's lr is now 8.00e-06)")
    assert "gradient_clip_val" not in text and "or use training.precision=32" in text
    assert text.endswith("last good checkpoint: none saved yet")
    assert "precision" not in _nan_message(float("inf"), 3, clipped, 1e-3, "32", None)


def test_cpu_bf16_training_stays_finite_and_repeats_bit_for_bit(blobs, tmp_path):
    # The snemi recipe in small: affinities with WeightedBCE + Dice, clipping, bf16 asked for on a CPU.
    # PyTorch's CPU bf16 Conv3d weight gradients are unreliable: on an AVX512-BF16 CPU they came out
    # different on each call and sometimes inf/NaN (NaN losses within ~20 steps, two identical runs
    # that differ), so CPU training must run fp32 whatever the config asks.
    cfg = tiny_cfg(blobs, "training.max_steps=20", "training.precision=bf16-mixed", "training.gradient_clip_val=1.0",
                   "model.architecture=monai_basic_unet3d", "model.filters=[8,8,16,16,32]", "model.out_channels=3",
                   "optimizer.lr=1e-3", "model.loss_functions=[WeightedBCELoss,DiceLoss]", "model.loss_weights=[1.0,1.0]",
                   "data.targets=[{name: affinity}]", val=False)
    runs = []
    for name in ("a", "b"):
        out = fit(cfg, run_dir=tmp_path / name)
        runs.append([ln["loss"] for ln in read_metrics(tmp_path / name) if "loss" in ln])
        assert out["step"] == 20 and len(runs[-1]) == 20
    assert all(np.isfinite(runs[0])), runs[0]
    assert runs[0] == runs[1]


def test_early_stopping_stops(blobs, tmp_path):
    # min_delta far above any change: only the first validation counts as an improvement.
    out = fit(tiny_cfg(blobs, "training.max_steps=50", "training.val_check_interval=1", "early_stopping.enabled=true",
                       "early_stopping.patience=2", "early_stopping.min_delta=100", "checkpoint.save_top_k=1"),
              run_dir=tmp_path)
    assert out["stopped_early"] and out["step"] == 3
    assert [ln["step"] for ln in read_metrics(tmp_path) if "val/loss" in ln] == [1, 2, 3]
    assert Path(out["last_checkpoint"]).name == "step-000003"


def test_max_minutes_stops_with_a_checkpoint_and_the_run_resumes(blobs, tmp_path, monkeypatch, capsys):
    import pytc.engine.train as train

    ticks = iter(range(0, 10_000, 60))  # every reading of the clock is one minute later
    monkeypatch.setattr(train, "_clock", lambda: next(ticks))
    cfg = tiny_cfg(blobs, "training.max_steps=5", "training.val_check_interval=100", "training.max_minutes=2.5")
    out = fit(cfg, run_dir=tmp_path)
    assert out["out_of_time"] and not out["stopped_early"] and out["step"] == 3  # 60, 120 < 150 <= 180 s
    assert "stopped at step 3: training.max_minutes=2.5 reached" in capsys.readouterr().out
    assert Path(out["last_checkpoint"]).name == "step-000003"
    assert [ln["step"] for ln in read_metrics(tmp_path) if "val/loss" in ln] == [3]  # validated before stopping
    more = fit(cfg.model_copy(update={"training": cfg.training.model_copy(update={"max_minutes": None})}),
               run_dir=tmp_path, resume="auto")
    assert (more["step"], more["steps_this_run"], more["out_of_time"]) == (5, 2, False)
    ticks = iter(range(0, 10_000, 60))  # step and time limit on the same step: finished, no resume advice
    capsys.readouterr()
    both = fit(tiny_cfg(blobs, "training.max_steps=2", "training.max_minutes=1.5", val=False), run_dir=tmp_path / "b")
    assert both["step"] == 2 and not both["out_of_time"] and "resume" not in capsys.readouterr().out


def test_resuming_a_finished_run_says_so_and_keeps_its_metrics(blobs, tmp_path):
    from pytc.cli import app

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"data:\n  train_image: {blobs}:raw\n  train_label: {blobs}:label\n"
                   f"  val_image: {blobs}:raw\n  val_label: {blobs}:label\n")
    run = tmp_path / "run"
    args = ["train", str(cfg), *TINY, "training.max_steps=2", "--run-dir", str(run)]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    log = (run / "metrics.jsonl").read_text()
    val = [ln for ln in read_metrics(run) if "val/iou" in ln][-1]

    again = CliRunner().invoke(app, [*args, "--resume", "auto"])
    assert again.exit_code == 0, again.output
    assert f"{run} already finished at step 2 (training.max_steps=2); to train on, raise training.max_steps" \
        in again.output
    assert "nan" not in again.output and "no validation data" not in again.output
    assert f"Final metrics: val/loss {val['val/loss']:.4f}" in again.output and "[already finished]" in again.output
    assert (run / "metrics.jsonl").read_text() == log  # nothing trained, nothing logged
    elsewhere = CliRunner().invoke(app, [*args[:-1], str(tmp_path / "new"), "--resume", str(run / "checkpoints" / "last")])
    assert elsewhere.exit_code == 0, elsewhere.output  # the finished run is the resumed one, not the new folder
    assert f"{run} already finished at step 2" in elsewhere.output and "[already finished]" in elsewhere.output
    assert f"Final metrics: val/loss {val['val/loss']:.4f}" in elsewhere.output and not (tmp_path / "new").exists()

    summary = fit(tiny_cfg(blobs, "training.max_steps=2"), run_dir=run, resume="auto")
    assert summary["already_finished"] and summary["steps_this_run"] == 0 and summary["step"] == 2
    assert summary["metrics"] == {k: val[k] for k in ("val/loss", "val/iou", "val/dice")}
    more = fit(tiny_cfg(blobs, "training.max_steps=3"), run_dir=run, resume="auto")  # raising the limit trains on
    assert (more["step"], more["steps_this_run"], more["already_finished"]) == (3, 1, False)


def test_a_run_directory_with_checkpoints_is_not_overwritten(blobs, tmp_path):
    fit(tiny_cfg(blobs, "training.max_steps=1", val=False), run_dir=tmp_path)
    with pytest.raises(OutputExistsError, match="--resume auto"):
        fit(tiny_cfg(blobs, "training.max_steps=1", val=False), run_dir=tmp_path)


def test_fit_without_run_dir_writes_to_runs_slash_config_name(blobs, tmp_path, monkeypatch):
    # The same default as `pytc train` (README: runs/<config name>/), not a name of fit's own.
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "mito.yaml"
    config.write_text("{}\n")
    out = fit(tiny_cfg(blobs, "training.max_steps=1", val=False), inputs=[config])
    assert Path(out["run_dir"]) == Path("runs/mito")
    assert (tmp_path / "runs" / "mito" / "checkpoints").is_dir()


def test_unknown_monitor_is_refused_by_the_config_with_did_you_mean(blobs):
    with pytest.raises(ConfigError) as err:
        tiny_cfg(blobs, "checkpoint.monitor=val/iuo")
    assert str(err.value) == ("override 'checkpoint.monitor=val/iuo': checkpoint.monitor: Input should be "
                              "'val/loss', 'val/iou' or 'val/dice', got 'val/iuo' — did you mean 'val/iou'?")
    with pytest.raises(ConfigError, match="early_stopping.monitor: Input should be 'val/loss'"):
        tiny_cfg(blobs, "early_stopping.monitor=val/acc")


def test_the_metrics_a_monitor_may_name_are_the_metrics_validation_logs(blobs, tmp_path):
    from pytc.choices import VAL_METRICS

    fit(tiny_cfg(blobs, "training.max_steps=1", "training.val_check_interval=1"), run_dir=tmp_path)
    logged = {k for row in read_metrics(tmp_path) for k in row if k.startswith("val/")}
    assert logged == set(VAL_METRICS)


def test_two_processes_stay_in_sync(blobs, tmp_path):
    # A fresh interpreter forks the two ranks (forking this test process, whose torch thread pool
    # is running, could hang). Each rank writes a digest of its weights after training.
    # Three validation volumes on two ranks: rank 0 predicts volumes 0 and 2, rank 1 volume 1.
    vals = [write_blobs(tmp_path / f"val{i}.h5", seed=i + 1) for i in range(3)]
    ddp_overrides = [f"data.train_image={blobs}:raw", f"data.train_label={blobs}:label",
                     f"data.val_image={[v + ':raw' for v in vals]}", f"data.val_label={[v + ':label' for v in vals]}",
                     *TINY, "training.max_steps=3", "system.num_cpus=1"]
    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent(f"""
        import hashlib
        import torch
        from accelerate import debug_launcher
        from pytc.config import load_config
        from pytc.engine import fit

        def main():
            cfg = load_config(None, {ddp_overrides!r})
            out = fit(cfg, run_dir={str(tmp_path / "run")!r})
            digest = hashlib.sha256()
            for name, value in sorted(out["model"].state_dict().items()):
                digest.update(name.encode() + value.detach().cpu().numpy().tobytes())
            rank = torch.distributed.get_rank()
            with open({str(tmp_path)!r} + f"/rank{{rank}}.txt", "w") as fh:
                fh.write(digest.hexdigest() + " " + str(out["step"]) + " " + str(torch.distributed.get_world_size()))

        if __name__ == "__main__":
            debug_launcher(main, num_processes=2)
    """))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (tmp_path / "rank0.txt").read_text(), (tmp_path / "rank1.txt").read_text()
    assert r0 == r1 and r0.endswith(" 3 2")  # same weights after 3 synchronised steps on 2 ranks
    lines = read_metrics(tmp_path / "run")
    assert [ln["step"] for ln in lines if "loss" in ln] == [1, 2, 3]  # logged once, by rank 0
    assert lines[0]["samples_per_s"] > 0
    assert (tmp_path / "run" / "checkpoints" / "step-000003" / "meta.json").is_file()

    # The sharded validation equals a single-process validation of the saved weights.
    from accelerate import Accelerator

    from pytc.data.dataset import load_val_volumes
    from pytc.engine import load_checkpoint_for_inference, validate
    from pytc.engine.train import _release
    from pytc.losses import build_loss

    cfg, model = load_checkpoint_for_inference(tmp_path / "run" / "checkpoints" / "last")
    accelerator = Accelerator(cpu=True)
    try:
        single = validate(accelerator, model, build_loss(cfg.model, cfg.data.targets), load_val_volumes(cfg), cfg)
    finally:
        _release(accelerator)
    sharded = next(ln for ln in lines if "val/iou" in ln)
    assert single == pytest.approx({k: sharded[k] for k in single}, rel=1e-5)


# --------------------------------------------------------------------------------------------
# CLI


def test_cli_fast_dev_run_writes_a_run(blobs, tmp_path):
    from pytc.cli import app

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"data:\n  train_image: {blobs}:raw\n  train_label: {blobs}:label\n"
                   f"  val_image: {blobs}:raw\n  val_label: {blobs}:label\n")
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", str(cfg), *TINY, "--fast-dev-run", "--run-dir", str(run)])
    assert result.exit_code == 0, result.output
    assert f"Run directory: {run} (step 1)" in result.output
    assert "Best checkpoint:" in result.output and "val/iou" in result.output
    assert (run / "config.yaml").is_file()
    assert [ln["step"] for ln in read_metrics(run)] == [1, 1]  # one train line, one validation line
    assert (run / "checkpoints" / "step-000001" / "meta.json").is_file()
    assert (run / "checkpoints" / "last").read_text().strip() == "step-000001"


def test_cli_out_channels_mismatch_is_one_line_exit_2(blobs, tmp_path):
    from pytc.cli import app

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"data:\n  train_image: {blobs}:raw\n  train_label: {blobs}:label\n")
    args = ["train", str(cfg), *TINY, "model.out_channels=3", "--run-dir", str(tmp_path / "r")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: model.out_channels is 3"), result.output
    assert not (tmp_path / "r").exists()  # checked before anything is written


# --------------------------------------------------------------------------------------------
# Precision and schedules


def test_cpu_mixed_precision_falls_back_to_fp32_without_native_bf16(monkeypatch, caplog):
    import pytc.runtime as runtime

    monkeypatch.setattr(runtime, "_warned", set())
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    with caplog.at_level(logging.WARNING, logger="pytc"):
        assert runtime.resolve_precision("bf16-mixed", "cpu") == "32"
        assert runtime.resolve_precision("bf16-mixed", "cpu") == "32"
    assert len(caplog.records) == 1 and "precision 32" in caplog.records[0].getMessage()
    assert runtime.resolve_precision("32", "cpu") == "32"
    assert runtime.accelerate_mixed_precision("bf16-mixed") == "bf16"


def test_cpu_precision_16_mixed_means_fp32_and_training_never_runs_bf16(monkeypatch, caplog):
    import pytc.runtime as runtime

    monkeypatch.setattr(runtime, "_warned", set())
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    with caplog.at_level(logging.WARNING, logger="pytc"):
        # The shipped configs ask for 16-mixed (for GPUs): a CPU runs them in full precision, quietly.
        assert runtime.resolve_precision("16-mixed", "cpu") == "32"
        assert runtime.resolve_precision("16-mixed", "cpu", training=True) == "32"
        assert not caplog.records
        assert runtime.resolve_precision("bf16-mixed", "cpu") == "bf16-mixed"  # inference with native bf16
        assert runtime.resolve_precision("bf16-mixed", "cpu", training=True) == "32"
    assert len(caplog.records) == 1 and "not used for training on a CPU" in caplog.records[0].getMessage()
    assert runtime.resolve_precision("16-mixed", "cuda", training=True) == "16-mixed"


def _lrs(name: str, steps: int, **kw) -> list[float]:
    from pytc.config import OptimizerConfig, SchedulerConfig
    from pytc.engine.optim import build_optimizer, build_scheduler

    opt = build_optimizer(torch.nn.Linear(1, 1).parameters(), OptimizerConfig(lr=1.0))
    sched = build_scheduler(opt, SchedulerConfig(name=name, **kw), iters_per_epoch=10, total_steps=steps)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_schedules_count_optimizer_steps():
    cos = _lrs("CosineAnnealingLR", 100, warmup_epochs=1, min_lr=0.01)
    assert cos[:3] == pytest.approx([0.1, 0.2, 0.3]) and cos[9] == pytest.approx(1.0)  # 10-step warm-up
    assert cos[55] == pytest.approx(0.01 + 0.99 * 0.5)  # half way through the cosine
    assert cos[-1] == pytest.approx(0.01, abs=1e-3) and all(a >= b for a, b in zip(cos[9:], cos[10:]))
    assert _lrs("StepLR", 50, step_size=2, gamma=0.5)[::10] == pytest.approx([1, 1, 0.5, 0.5, 0.25])
    assert set(_lrs("constant", 20, warmup_epochs=0.5)[5:]) == {1.0}


def test_init_from_starts_from_a_checkpoints_weights(blobs, tmp_path):
    first = fit(tiny_cfg(blobs, "training.max_steps=2", val=False), run_dir=tmp_path / "a")
    trained = weights(first["model"])
    # Zero steps of training are not possible; compare the weights *before* the first update by
    # training with lr ~ 0: the result must equal the checkpoint, not a fresh initialisation.
    tuned = fit(tiny_cfg(blobs, "training.max_steps=1", "optimizer.lr=1e-30", "optimizer.weight_decay=0",
                         f"model.init_from={tmp_path / 'a' / 'checkpoints' / 'last'}", val=False),
                run_dir=tmp_path / "b")
    for key, value in weights(tuned["model"]).items():
        assert torch.allclose(value, trained[key], atol=1e-6), key
    bad = tiny_cfg(blobs, "training.max_steps=1", "model.filters=[4,8,32]",
                   f"model.init_from={tmp_path / 'a' / 'checkpoints' / 'last'}", val=False)
    with pytest.raises(PytcError, match="does not fit this model"):
        fit(bad, run_dir=tmp_path / "c")


def test_resume_from_an_older_checkpoint_branches_the_run(blobs, tmp_path):
    settings = ["training.max_steps=4", "checkpoint.every_n_steps=2", "checkpoint.save_top_k=5",
                "training.val_check_interval=2"]
    fit(tiny_cfg(blobs, *settings), run_dir=tmp_path)
    ckpts = tmp_path / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("step-*")) == ["step-000002", "step-000004"]
    out = fit(tiny_cfg(blobs, "training.max_steps=3", *settings[1:]), run_dir=tmp_path,
              resume=ckpts / "step-000002")
    # The abandoned step 4 is set aside, not resumed from or pointed at; the branch ends at step 3.
    assert out["step"] == 3 and (ckpts / "abandoned" / "step-000004" / "meta.json").is_file()
    assert sorted(p.name for p in ckpts.glob("step-*")) == ["step-000002", "step-000003"]
    assert (ckpts / "last").read_text().strip().endswith("step-000003")
    assert [ln["step"] for ln in read_metrics(tmp_path) if "loss" in ln] == [1, 2, 3]
