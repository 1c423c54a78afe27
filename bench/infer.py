"""Throughput and memory of pytc's inference engine against MONAI's ``sliding_window_inference``.

1. Engine overhead (goal: ratio >= 0.95). The same model, window, overlap and Gaussian blending on
   the same in-memory uint8 volume, runs interleaved so a noisy machine slows both alike:
   ``pytc.inference.predict_volume`` (normalisation, per-window sigmoid, block plan, float32
   output) against ``sliding_window_inference(x / 255, predictor=sigmoid(model(.)))``. Medians of
   voxels/s and their ratio.
2. Out of core, I/O included. ``pytc.inference.infer`` from a Zarr input to a uint8 Zarr store with
   blocks smaller than the volume (checkpoint loading, reads, halo windows, writes, completion
   records and the final rename all timed), against MONAI in memory on the same volume. The
   number of windows the blocks evaluated is printed: every window of the whole-volume grid once
   (windows across a block border hand their overlap to the next block instead of running twice).
3. Peak memory (goal: ratio <= 1.2). ``infer`` on two volumes 8x apart (2x per axis), each in a
   fresh interpreter reporting VmHWM from /proc/self/status; MONAI's whole-volume prediction of the
   same volumes is measured the same way for contrast (it grows with the volume).

Run: ``python bench/infer.py [--size 48,160,160] [--ooc-size 128,384,384] [--block 64,192,192]
[--rss-size 48,160,160] [--rss-block 32,96,96] [--repeats 5] [--threads 1]``. The defaults (a 3-level
U-Net with 8..32 features, 32x64x64 windows; out of core, 2x2x2 blocks of 2x3x3 windows, so partial
sums are carried across every kind of block border) take about three minutes on 2 CPU cores; one
torch thread keeps the numbers steady on a shared machine (pass --threads 0 for torch's default).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MODEL = ["model.architecture=monai_unet", "model.filters=[8,16,32]", "data.patch_size=[32,64,64]",
         "inference.overlap=0.25", "inference.blending=gaussian", "inference.sw_batch_size=2",
         "system.num_gpus=0", "training.precision=32", "inference.output_dtype=uint8"]
THREADS = 1  # set from --threads; infer() applies system.num_cpus itself


def _numbers(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def _cfg(*overrides):
    from pytc.config import load_config

    return load_config(None, [*MODEL, f"system.num_cpus={THREADS}", *overrides])


def _checkpoint(folder: Path, block: list[int]) -> Path:
    import torch

    from pytc.config import dump_config
    from pytc.engine.checkpoint import save_checkpoint
    from pytc.models import build_model

    cfg = _cfg(f"inference.block_size={block}")
    torch.manual_seed(0)
    model = build_model(cfg.model)
    return save_checkpoint(folder / "checkpoints", 1, weights=model.state_dict(), config_yaml=dump_config(cfg),
                           training_state={}, meta={})


def _volume(shape) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)


def _write_zarr(spec: str, image: np.ndarray) -> str:
    from pytc.io import create_volume

    with create_volume(spec, image.shape, image.dtype, compression="zstd") as out:
        out[...] = image
    return spec


def _monai(model, image: np.ndarray, window, overlap, sw_batch_size) -> np.ndarray:
    import torch
    from monai.inferers import sliding_window_inference

    x = torch.from_numpy(image.astype(np.float32) / 255)[None, None]
    with torch.inference_mode():  # probabilities per window, blended: what pytc computes
        return sliding_window_inference(x, window, sw_batch_size, lambda w: torch.sigmoid(model(w)), overlap=overlap,
                                        mode="gaussian")[0].numpy()


def bench_engine(size, repeats: int) -> None:
    """Median voxels/s of pytc and MONAI in memory, interleaved."""
    import torch

    from pytc.inference import predict_volume
    from pytc.models import build_model

    cfg = _cfg(f"inference.block_size={list(size)}")  # one block: the whole volume
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    image = _volume(size)
    window, inf = list(cfg.data.patch_size), cfg.inference
    ours = predict_volume(model, image, cfg, progress=False)  # warm-up, and the results must agree
    ref = _monai(model, image, window, inf.overlap, inf.sw_batch_size)
    assert np.abs(ours - ref).max() < 1e-5, np.abs(ours - ref).max()
    t_pytc, t_monai = [], []
    for r in range(repeats):  # interleaved, alternating which goes first
        for name in (("pytc", "monai") if r % 2 == 0 else ("monai", "pytc")):
            start = time.perf_counter()
            if name == "pytc":
                predict_volume(model, image, cfg, progress=False)
            else:
                _monai(model, image, window, inf.overlap, inf.sw_batch_size)
            (t_pytc if name == "pytc" else t_monai).append(time.perf_counter() - start)
    voxels = image.size
    pytc_rate, monai_rate = voxels / statistics.median(t_pytc), voxels / statistics.median(t_monai)
    print(f"1. in memory, {'x'.join(map(str, size))} uint8, window {window}, overlap {inf.overlap}, "
          f"{repeats} runs each (median)")
    print(f"   MONAI sliding_window_inference   {monai_rate / 1e6:8.3f} Mvoxel/s")
    print(f"   pytc predict_volume              {pytc_rate / 1e6:8.3f} Mvoxel/s   ratio {pytc_rate / monai_rate:.3f}"
          f"  (goal >= 0.95)")


def bench_out_of_core(size, block, repeats: int, folder: Path) -> None:
    import torch

    from pytc.inference import infer
    from pytc.models import build_model

    ckpt = _checkpoint(folder / "run", block)
    image = _volume(size)
    spec = _write_zarr(f"{folder}/raw.zarr", image)
    cfg = _cfg()
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    window, inf = list(cfg.data.patch_size), cfg.inference
    t_pytc, t_monai = [], []
    for r in range(repeats):
        start = time.perf_counter()
        summary = infer(ckpt, spec, folder / f"pred{r}.zarr", progress=False)
        t_pytc.append(time.perf_counter() - start)
        start = time.perf_counter()
        _monai(model, image, window, inf.overlap, inf.sw_batch_size)
        t_monai.append(time.perf_counter() - start)
    ratio = statistics.median(t_monai) / statistics.median(t_pytc)
    print(f"2. out of core: {'x'.join(map(str, size))} zarr -> uint8 zarr in {summary['blocks']} blocks of {block}, "
          f"I/O and checkpoint loading included ({repeats} runs, median)")
    print(f"   MONAI in memory                  {np.prod(size) / statistics.median(t_monai) / 1e6:8.3f} Mvoxel/s")
    print(f"   pytc infer                       {np.prod(size) / statistics.median(t_pytc) / 1e6:8.3f} Mvoxel/s   "
          f"ratio {ratio:.3f}")
    print(f"   windows evaluated: {summary['windows_computed']} of the whole-volume grid's {summary['windows']} "
          f"({summary['windows_computed'] / summary['windows']:.2f}x)")


_CHILD = """
import json, sys, time
mode, ckpt, spec, out = sys.argv[1:5]
if mode == "pytc":
    from pytc.inference import infer
    infer(ckpt, spec, out, progress=False)
else:
    sys.path.insert(0, {bench!r})
    from infer import _monai
    from pytc.engine.checkpoint import load_checkpoint_for_inference
    from pytc.io import open_volume
    cfg, model = load_checkpoint_for_inference(ckpt)
    with open_volume(spec) as vol:
        image = vol[...]
    _monai(model, image, list(cfg.data.patch_size), cfg.inference.overlap, cfg.inference.sw_batch_size)
hwm = next(int(ln.split()[1]) for ln in open("/proc/self/status") if ln.startswith("VmHWM"))
print(json.dumps({{"peak_kib": hwm}}))
"""


def bench_memory(size, block, folder: Path) -> None:
    big = [2 * s for s in size]
    ckpt = _checkpoint(folder / "run_rss", block)
    code = _CHILD.format(bench=str(Path(__file__).resolve().parent))
    peaks: dict = {}
    for name, shape in (("small", size), ("large", big)):
        spec = _write_zarr(f"{folder}/rss_{name}.zarr", _volume(shape))
        for mode in ("pytc", "monai"):
            out = f"{folder}/rss_{name}_{mode}.zarr"
            proc = subprocess.run([sys.executable, "-c", code, mode, str(ckpt), spec, out],
                                  capture_output=True, text=True, check=True)
            peaks[name, mode] = json.loads(proc.stdout.strip().splitlines()[-1])["peak_kib"] / 1024
    print(f"3. peak RSS (VmHWM, fresh process), blocks {block}: volumes {'x'.join(map(str, size))} and "
          f"{'x'.join(map(str, big))} (8x)")
    for mode, label in (("pytc", "pytc infer (out of core)"), ("monai", "MONAI whole volume in memory")):
        small, large = peaks["small", mode], peaks["large", mode]
        goal = "  (goal <= 1.2)" if mode == "pytc" else ""
        print(f"   {label:<30} {small:7.0f} MiB -> {large:7.0f} MiB   ratio {large / small:.2f}{goal}")


def main() -> None:
    global THREADS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="48,160,160", help="in-memory volume Z,Y,X")
    parser.add_argument("--ooc-size", default="128,384,384", help="out-of-core volume Z,Y,X")
    parser.add_argument("--block", default="64,192,192", help="out-of-core block Z,Y,X")
    parser.add_argument("--rss-size", default="48,160,160", help="smaller volume of the memory test (the other is 2x per axis)")
    parser.add_argument("--rss-block", default="32,96,96", help="block of the memory test")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--skip", default="", help="comma list of parts to skip: ooc,rss")
    args = parser.parse_args()
    import torch

    THREADS = args.threads if args.threads > 0 else torch.get_num_threads()
    torch.set_num_threads(THREADS)
    skip = set(filter(None, args.skip.split(",")))
    with tempfile.TemporaryDirectory(prefix="pytc-bench-infer-") as tmp:
        bench_engine(_numbers(args.size), args.repeats)
        if "ooc" not in skip:
            bench_out_of_core(_numbers(args.ooc_size), _numbers(args.block), max(1, args.repeats - 1), Path(tmp))
        if "rss" not in skip:
            bench_memory(_numbers(args.rss_size), _numbers(args.rss_block), Path(tmp))


if __name__ == "__main__":
    main()
