"""Soak (slow, `pytest -m slow tests/test_soak.py -s`): no memory leak over a long run.

* `pytc train`, 2,000 steps of a tiny model with 2 persistent data-loader workers, validation and
  checkpoints on the way: the resident memory at step 2,000 is within 10% of that at step 200.
* `pytc infer` over 500 blocks: the memory after block 500 is within 10% of that after block 50.

Memory is sampled from outside, every 50 ms, with psutil: RSS of the main process alone, and
the sum over the process tree (main + workers). The tree sum counts pages that forked workers share
with the main process more than once, so PSS (shared pages divided among the sharers) is printed
too. Both RSS figures are asserted; all figures are printed (run with -s) for bench/RESULTS.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import psutil
import pytest
import torch

from pytc.config import dump_config, load_config
from pytc.engine import checkpoint as ckpt
from pytc.models import build_model

pytestmark = pytest.mark.slow

TRAIN_STEPS, BLOCKS = 2000, 500
TOLERANCE = 0.10


def memory(proc: psutil.Process) -> dict:
    """RSS of the main process, and RSS and PSS summed over its process tree (MiB)."""
    tree = [proc, *proc.children(recursive=True)]
    rss, pss = 0, 0
    for p in tree:
        try:
            full = p.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        rss, pss = rss + full.rss, pss + full.pss
    return {"main_rss": proc.memory_info().rss / 2**20, "tree_rss": rss / 2**20, "tree_pss": pss / 2**20,
            "processes": len(tree)}


def watch(argv: list, progress, log: Path) -> list[tuple[int, dict]]:
    """Run ``argv`` and sample (progress(), memory) every 50 ms until it exits."""
    samples = []
    with open(log, "w") as fh:
        popen = subprocess.Popen([sys.executable, *map(str, argv)], stdout=fh, stderr=subprocess.STDOUT)
    proc = psutil.Process(popen.pid)
    while popen.poll() is None:
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:  # an exited process reads as 0 bytes
                samples.append((progress(), memory(proc)))
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    assert popen.wait() == 0, log.read_text()[-3000:]
    return samples


def compare(samples, early: int, late: int, window: int, what: str) -> dict:
    """Median memory over [early, early + window) against the median over [late - window, late):
    medians, so that a validation pass does not count as a trend, and before ``late``, when the run
    ends (workers stop, the last checkpoint is written)."""
    def median(lo, hi):
        picked = [m for n, m in samples if lo <= n < hi and m["main_rss"] > 0]
        assert picked, f"no samples between {lo} and {hi}"
        return {k: float(np.median([m[k] for m in picked])) for k in picked[0]}

    first, last = median(early, early + window), median(late - window, late)
    peak = max(m["tree_rss"] for _, m in samples)
    steps = np.linspace(early, late, 10).astype(int)  # the trend, for the record (MiB: tree RSS / tree PSS)
    trend = {f"{a}..{b - 1}": [round(median(a, b)[k]) for k in ("tree_rss", "tree_pss")]
             for a, b in zip(steps[:-1], steps[1:])}
    report = {"what": what, "early": f"{early}..{early + window - 1}", "late": f"{late - window}..{late - 1}",
              "first": first, "last": last, "peak_tree_rss": peak, "trend": trend}
    print(json.dumps(report, indent=1))
    for key in ("main_rss", "tree_rss"):
        change = (last[key] - first[key]) / first[key]
        assert abs(change) < TOLERANCE, f"{what}: {key} {first[key]:.0f} → {last[key]:.0f} MiB ({change:+.1%})"
    return report


def logged_step(run_dir: Path) -> int:
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    for line in reversed(lines):
        try:
            return json.loads(line)["step"]
        except (ValueError, KeyError):
            continue
    return 0


def test_training_memory_is_flat_over_2000_steps(tmp_path):
    rng = np.random.default_rng(0)
    label = (rng.random((32, 64, 64)) < 0.3).astype(np.uint8)
    image = (rng.normal(60, 20, label.shape) + label * 100).clip(0, 255).astype(np.uint8)
    with h5py.File(tmp_path / "vol.h5", "w") as f:
        f["raw"], f["label"] = image, label
    cfg = tmp_path / "cfg.yaml"
    vol = tmp_path / "vol.h5"
    cfg.write_text(f"data:\n  train_image: {vol}:raw\n  train_label: {vol}:label\n"
                   f"  val_image: {vol}:raw\n  val_label: {vol}:label\n")
    overrides = ["data.patch_size=[16,32,32]", "data.batch_size=2", "data.num_workers=2",
                 "data.persistent_workers=true", "model.architecture=monai_unet", "model.filters=[4,8,16]",
                 "system.num_cpus=1", "system.num_gpus=0",
                 f"training.max_steps={TRAIN_STEPS}", "training.val_check_interval=500", "checkpoint.every_n_steps=500",
                 "logging.log_every_n_steps=10", "scheduler.name=constant"]
    run_dir = tmp_path / "run"
    samples = watch(["-m", "pytc.cli", "train", cfg, *overrides, "--run-dir", run_dir],
                    lambda: logged_step(run_dir), tmp_path / "train.log")
    report = compare(samples, 200, TRAIN_STEPS, 50, f"train {TRAIN_STEPS} steps, 2 workers")
    assert report["first"]["processes"] == 3  # main + 2 workers were alive when measured


def test_inference_memory_is_flat_over_500_blocks(tmp_path):
    cfg = load_config(None, ["data.patch_size=[8,16,16]", "model.architecture=monai_unet", "model.filters=[4,8,16]",
                             "system.num_cpus=1", "system.num_gpus=0", "inference.block_size=[8,16,16]"])
    torch.manual_seed(0)
    folder = ckpt.save_checkpoint(tmp_path / "run" / ckpt.CHECKPOINT_DIR, 1,
                                  weights=build_model(cfg.model).state_dict(), config_yaml=dump_config(cfg),
                                  training_state={}, meta={})
    image = np.random.default_rng(0).integers(0, 256, (40, 160, 160), dtype=np.uint8)  # 5 × 10 × 10 blocks
    with h5py.File(tmp_path / "raw.h5", "w") as f:
        f["raw"] = image
    done = tmp_path / ".pred.zarr.pytc-partial" / ".pytc-record" / "done"

    def blocks_done() -> int:
        try:
            return sum(1 for _ in done.iterdir())
        except FileNotFoundError:
            return BLOCKS if (tmp_path / "pred.zarr").exists() else 0

    samples = watch(["-m", "pytc.cli", "infer", "--ckpt", folder, "--input", f"{tmp_path / 'raw.h5'}:raw", "--output",
                     tmp_path / "pred.zarr"], blocks_done, tmp_path / "infer.log")
    assert f"{BLOCKS} blocks: {BLOCKS} computed" in (tmp_path / "infer.log").read_text()
    compare(samples, 50, BLOCKS, 50, f"infer {BLOCKS} blocks")
