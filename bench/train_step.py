"""Step time of pytc's training loop against a plain PyTorch loop, and data-loader throughput.

1. Loop overhead (goal: ratio <= 1.05). Two copies of the same model (same seed), loss, optimizer
   and in-memory batch train side by side in this process, steps interleaved so a noisy machine
   slows both alike: pytc runs the real ``pytc.engine.train.train_step`` under Accelerate plus the
   per-step loss read-back that ``fit`` does; the baseline is ``forward, loss, backward, step,
   zero_grad, loss.item()``. Medians and their ratio are printed.
2. Data starvation. Patches/s of ``build_train_loader`` with every augmentation on (num_workers 0
   and 2) against the patches/s the model consumes; a ratio below 1 means the GPU/CPU would wait.

Run: ``python bench/train_step.py [CONFIG] [section.key=value ...] [--steps 30] [--batches 40]``.
The defaults are a CPU-sized U-Net on 32x64x64 patches of a synthetic EM volume; pass a config
(e.g. configs/lucchi.yaml) on a GPU machine for real sizes (its data paths are replaced by the
synthetic volume unless --real-data).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

CPU_DEFAULTS = ["data.patch_size=[32,64,64]", "model.filters=[8,16,32,64,128]", "data.batch_size=2",
                "model.dropout=0.0", "training.precision=32"]


def _synthetic_data(folder: Path) -> list[str]:
    import h5py

    from pytc.synth import make_em_volume

    vol = make_em_volume((64, 192, 192), seed=0)
    path = folder / "synth.h5"
    with h5py.File(path, "w") as f:
        f["raw"], f["label"] = vol.image, vol.mito_instances
    return [f"data.train_image={path}:raw", f"data.train_label={path}:label", "data.val_image=null",
            "data.val_label=null", "data.val_z_range=null", "data.train_mask=null"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_loop(cfg, steps: int, warmup: int) -> tuple[float, float]:
    """Median seconds per optimizer step: (pytc train_step, plain PyTorch)."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from pytc.data.dataset import build_train_loader
    from pytc.engine.optim import build_optimizer, build_scheduler
    from pytc.engine.train import train_step
    from pytc.losses import build_loss
    from pytc.models import build_model
    from pytc.runtime import accelerate_mixed_precision, autocast_dtype, resolve_precision, use_cpu

    cpu = use_cpu(cfg.system.num_gpus)
    precision = resolve_precision(cfg.training.precision, "cpu" if cpu else "cuda")
    accelerator = Accelerator(cpu=cpu, mixed_precision=accelerate_mixed_precision(precision),
                              gradient_accumulation_steps=cfg.training.accumulate_grad_batches,
                              step_scheduler_with_optimizer=False)
    device = accelerator.device
    # The same micro-batches for both loops, already on the device (in-memory data).
    loader = iter(build_train_loader(cfg))
    batches = [{k: v.to(device) for k, v in next(loader).items()} for _ in range(cfg.training.accumulate_grad_batches)]

    def fresh():
        set_seed(cfg.system.seed)
        model = build_model(cfg.model)
        optimizer = build_optimizer(model.parameters(), cfg.optimizer)
        return model, build_loss(cfg.model, cfg.data.targets), optimizer

    model, criterion, optimizer = fresh()
    scheduler = build_scheduler(optimizer, cfg.scheduler, cfg.training.iters_per_epoch, steps + warmup)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    plain_model, plain_criterion, plain_optimizer = fresh()
    plain_model.to(device).train()
    dtype = autocast_dtype(precision)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    def pytc_step():
        loss, _ = train_step(accelerator, model, criterion, optimizer, scheduler, batches,
                             cfg.training.gradient_clip_val)
        accelerator.reduce(loss, "mean").item()  # what fit does each step (NaN check, progress bar)

    def plain_step():
        n = len(batches)
        for batch in batches:
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                out = plain_model(batch["image"])
            loss, _ = plain_criterion(out, batch["target"], batch.get("mask"))
            scaler.scale(loss / n).backward()
        if cfg.training.gradient_clip_val is not None:
            scaler.unscale_(plain_optimizer)
            torch.nn.utils.clip_grad_norm_(plain_model.parameters(), cfg.training.gradient_clip_val)
        scaler.step(plain_optimizer)
        scaler.update()
        plain_optimizer.zero_grad(set_to_none=True)
        loss.item()

    times = {"pytc": [], "plain": []}
    for i in range(warmup + steps):
        order = (("pytc", pytc_step), ("plain", plain_step))
        for name, fn in order if i % 2 else order[::-1]:  # alternate who goes first
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
    accelerator.free_memory()
    return statistics.median(times["pytc"]), statistics.median(times["plain"])


def bench_loader(cfg, workers: int, batches: int) -> float:
    """Patches per second delivered by build_train_loader (after the first batch)."""
    from pytc.data.dataset import build_train_loader

    cfg = cfg.model_copy(deep=True)
    cfg.data.num_workers = workers
    loader = iter(build_train_loader(cfg))
    next(loader)  # worker start-up and volume loading are not throughput
    t0 = time.perf_counter()
    for _ in range(batches):
        next(loader)
    seconds = time.perf_counter() - t0
    del loader
    return batches * cfg.data.batch_size / seconds


def main() -> None:
    from pytc.config import load_config
    from pytc.runtime import setup_threads

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", nargs="?", help="YAML config (default: built-in CPU-sized settings)")
    ap.add_argument("overrides", nargs="*", help="section.key=value overrides")
    ap.add_argument("--steps", type=int, default=30, help="timed steps per loop")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batches", type=int, default=40, help="batches timed per loader setting")
    ap.add_argument("--real-data", action="store_true", help="use the config's data instead of a synthetic volume")
    args = ap.parse_args()
    if args.config and "=" in args.config and not args.config.endswith((".yaml", ".yml")):
        args.overrides, args.config = [args.config, *args.overrides], None

    with tempfile.TemporaryDirectory() as tmp:
        data = [] if args.real_data else _synthetic_data(Path(tmp))
        base = [] if args.config else CPU_DEFAULTS
        cfg = load_config(args.config, [*base, *data, *args.overrides])
        threads = setup_threads(cfg.system.num_cpus)
        print(f"model {cfg.model.architecture} filters {cfg.model.filters}, patch {cfg.data.patch_size}, "
              f"batch {cfg.data.batch_size} x accumulate {cfg.training.accumulate_grad_batches}, "
              f"precision {cfg.training.precision}, torch threads {threads}")

        t_pytc, t_plain = bench_loop(cfg, args.steps, args.warmup)
        print(f"\n{'training loop':<28} {'median ms/step':>15}")
        print(f"{'plain PyTorch':<28} {t_plain * 1e3:>15.1f}")
        print(f"{'pytc train_step':<28} {t_pytc * 1e3:>15.1f}")
        print(f"ratio pytc / plain: {t_pytc / t_plain:.3f}  (goal <= 1.05)")

        need = cfg.data.batch_size * cfg.training.accumulate_grad_batches / t_pytc
        aug = cfg.data.augment
        for name in type(aug).model_fields:  # every augmentation on (affine and elastic are off by default)
            if name.endswith("_prob"):
                setattr(aug, name, max(getattr(aug, name), 0.5 if name in ("affine_prob", "elastic_prob") else 0.1))
        aug.enabled = True
        print(f"\n{'data loader (all aug on)':<28} {'patches/s':>15} {'x model rate':>13}")
        print(f"{'model consumes':<28} {need:>15.1f} {1.0:>13.2f}")
        for workers in (0, 2):
            rate = bench_loader(cfg, workers, args.batches)
            flag = "  <- the model would wait for data" if rate < need else ""
            print(f"{f'num_workers={workers}':<28} {rate:>15.1f} {rate / need:>13.2f}{flag}")


if __name__ == "__main__":
    main()
