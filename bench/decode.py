"""Throughput of every decoder (`pytc.decode.decode`) on a synthetic prediction.

The prediction is derived from `pytc.synth.make_em_volume` ground truth the way a network's output
looks: binary + contour channels from the mitochondria, short- and long-range affinities from the
cells, each Gaussian-smoothed (sigma 1) with noise (sd 0.05) added and clipped to [0, 1]. Each
decoder reads only its own channels from an in-memory float32 array; times are medians over
repeats, printed with voxels/s and the instances found next to the ground-truth count (a sanity
check, not a quality score). The whole volume is one default block, so these are the whole-volume
decoders; `threshold` and `bc-watershed` are timed again block by block (`--block`, 8 blocks by
default), with the share of foreground voxels whose label equals the whole-volume one (threshold:
1 by construction). One extra line times `decode_volume` end to end, block by block, on a uint8
Zarr store (read, dequantise, decode, write), to show what I/O adds.

Last, peak memory: `decode_volume` in a fresh process (VmHWM from /proc/self/status) on a crop
and on the whole prediction (8x the voxels), block by block (`--rss-block`) and as one block
(the whole-volume decoders), for threshold and bc-watershed.

    python bench/decode.py                           # 128×512×512, 3 repeats
    python bench/decode.py --shape 64,256,256 --repeats 5 --methods threshold,bc-watershed
    python bench/decode.py --skip rss,volume
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

# Short-range for waterz and the attractive mutex edges; long-range (z is coarser in EM stacks,
# hence 3 vs 9) for the mutex repulsions.
OFFSETS = [[1, 0, 0], [0, 1, 0], [0, 0, 1], [3, 0, 0], [0, 9, 0], [0, 0, 9]]
KINDS = ["binary", "contour"] + ["affinity"] * len(OFFSETS)
CHANNELS = {  # which channels of the prediction each decoder is given
    "threshold": [0],
    "bc-watershed": [0, 1],
    "affinity-waterz": list(range(2, 5)),
    "mutex-watershed": list(range(2, 2 + len(OFFSETS))),
}


def _triple(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def make_prediction(shape, seed: int = 0) -> tuple[np.ndarray, dict[str, int]]:
    """(8, *shape) float32 probabilities and the ground-truth instance counts."""
    from scipy.ndimage import gaussian_filter

    from pytc.config import TargetConfig
    from pytc.data.targets import build_targets
    from pytc.synth import make_em_volume

    vol = make_em_volume(shape, seed=seed)
    rng = np.random.default_rng(seed)
    pred = np.concatenate([
        build_targets(vol.mito_instances, [TargetConfig(name="binary"), TargetConfig(name="contour")]),
        build_targets(vol.cell_instances, [TargetConfig(name="affinity", offsets=OFFSETS)]),
    ])
    for c in range(len(pred)):  # one channel at a time: the temporaries stay small
        smooth = gaussian_filter(pred[c], 1.0)
        smooth += rng.normal(0, 0.05, shape).astype(np.float32)
        pred[c] = np.clip(smooth, 0, 1)
    counts = {"mito": len(np.unique(vol.mito_instances)) - 1, "cells": len(np.unique(vol.cell_instances)) - 1}
    return pred, counts


def _median_time(fn, repeats: int):
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times, result


def bench_blocks(pred, block, repeats: int, voxels: int) -> None:
    """threshold and bc-watershed block by block vs as one block, on the same in-memory prediction."""
    from pytc.decode import decode

    n_blocks = 1
    for n, b in zip(pred.shape[1:], block):
        n_blocks *= -(-n // b)
    print(f"block by block ({'×'.join(map(str, block))}, {n_blocks} blocks) vs whole volume:")
    for method, idx in (("threshold", 0), ("bc-watershed", [0, 1])):
        sub, kinds = pred[idx], (["binary", "contour"] if method == "bc-watershed" else None)
        whole_s, _, whole = _median_time(lambda: decode(sub, method, kinds), repeats)
        secs, times, labels = _median_time(lambda: decode(sub, method, kinds, block_size=list(block)), repeats)
        fg = (labels > 0) | (whole > 0)
        same = float((labels == whole)[fg].mean()) if fg.any() else 1.0
        each = ", ".join(f"{t:.2f}" for t in times)
        print(f"{method:>16}: median {secs:7.2f} s  {voxels / secs / 1e6:7.2f} Mvoxel/s  (whole volume "
              f"{voxels / whole_s / 1e6:.2f} Mvoxel/s, ratio {whole_s / secs:.2f})  same label as whole volume: "
              f"{same:.5f} of foreground  runs: {each} s")


_CHILD = """
import json, sys
from pytc.decode import decode_volume
spec, out, method, block = sys.argv[1:5]
decode_volume(spec, out, method, {"block_size": json.loads(block)}, progress=False)
hwm = next(int(ln.split()[1]) for ln in open("/proc/self/status") if ln.startswith("VmHWM"))
print(json.dumps({"peak_kib": hwm}))
"""


def bench_memory(pred, block, folder: str) -> None:
    """Peak RSS of decode_volume (fresh process) on a crop and on 8x its voxels, blockwise and whole."""
    from pytc.io import create_volume

    big = pred.shape[1:]
    small = tuple(n // 2 for n in big)
    peaks = {}
    for name, shape in (("small", small), ("large", big)):
        spec = f"{folder}/rss_{name}.zarr/pred"
        with create_volume(spec, (2, *shape), np.uint8, chunks=(1, 64, 128, 128), compression="zstd") as out:
            out[...] = np.round(pred[:2, : shape[0], : shape[1], : shape[2]] * 255).astype(np.uint8)
            out.set_attrs({"pytc_channels": ["binary", "contour"], "pytc_scale": 255})
        for method in ("threshold", "bc-watershed"):
            for mode, size in (("blocks", list(block)), ("whole", list(shape))):
                out = f"{folder}/rss_{name}_{method}_{mode}.zarr"
                proc = subprocess.run([sys.executable, "-c", _CHILD, spec, out, method, json.dumps(size)],
                                      capture_output=True, text=True, check=True)
                peaks[name, method, mode] = json.loads(proc.stdout.strip().splitlines()[-1])["peak_kib"] / 1024
    print(f"peak RSS (VmHWM, fresh process, decode_volume uint8 Zarr → Zarr): {'×'.join(map(str, small))} and "
          f"{'×'.join(map(str, big))} (8x), blocks {'×'.join(map(str, block))}")
    for method in ("threshold", "bc-watershed"):
        for mode, label in (("blocks", "block by block"), ("whole", "whole volume")):
            lo, hi = peaks["small", method, mode], peaks["large", method, mode]
            print(f"{method:>16} {label:<15} {lo:7.0f} MiB -> {hi:7.0f} MiB   ratio {hi / lo:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", type=_triple, default=(128, 512, 512))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--methods", default=",".join(CHANNELS), help="comma-separated subset")
    parser.add_argument("--block", type=_triple, default=(64, 256, 256), help="block of the blockwise timings")
    parser.add_argument("--rss-block", type=_triple, default=(16, 64, 64),
                        help="block of the memory test (small enough for the crop to have inner blocks, whole halo)")
    parser.add_argument("--skip", default="", help="comma list of parts to skip: blocks,volume,rss")
    parser.add_argument("--no-volume", action="store_true", help="skip the end-to-end decode_volume line")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    if args.no_volume:
        skip.add("volume")

    from pytc.decode import decode, decode_volume

    t0 = time.perf_counter()
    pred, counts = make_prediction(args.shape)
    voxels = int(np.prod(args.shape))
    print(f"prediction: {len(pred)}×{'×'.join(map(str, args.shape))} float32 ({pred.nbytes / 1e9:.2f} GB), "
          f"{counts['mito']} mitochondria, {counts['cells']} cells; made in {time.perf_counter() - t0:.1f} s")
    for method in args.methods.split(","):
        idx = CHANNELS[method]
        sub = pred[idx] if len(idx) > 1 else pred[idx[0]]
        kinds = [KINDS[i] for i in idx] if len(idx) > 1 else None
        offsets = [OFFSETS[i - 2] for i in idx] if method in ("affinity-waterz", "mutex-watershed") else None
        decode(sub[..., :8, :8, :8], method, kinds, offsets)  # warm-up: imports stay out of the timing
        times, found = [], 0
        for _ in range(args.repeats):
            start = time.perf_counter()
            labels = decode(sub, method, kinds, offsets)
            times.append(time.perf_counter() - start)
            found = int(labels.max())
            del labels
        secs = statistics.median(times)
        truth = counts["mito"] if method in ("threshold", "bc-watershed") else counts["cells"]
        each = ", ".join(f"{t:.2f}" for t in times)
        print(f"{method:>16}: median {secs:7.2f} s  {voxels / secs / 1e6:7.2f} Mvoxel/s  "
              f"{found:5d} instances (ground truth {truth})  runs: {each} s")

    if "blocks" not in skip:
        bench_blocks(pred, args.block, args.repeats, voxels)

    if "volume" not in skip:
        from pytc.io import create_volume

        with tempfile.TemporaryDirectory(prefix="pytc-bench-") as tmp:
            with create_volume(f"{tmp}/pred.zarr/pred", pred[:2].shape, np.uint8, chunks=(1, 64, 128, 128),
                               compression="zstd") as out:
                out[...] = np.round(pred[:2] * 255).astype(np.uint8)
                out.set_attrs({"pytc_channels": ["binary", "contour"], "pytc_scale": 255})
            start = time.perf_counter()
            summary = decode_volume(f"{tmp}/pred.zarr/pred", f"{tmp}/seg.zarr", "bc-watershed",
                                    {"block_size": list(args.block)}, progress=False)
            secs = time.perf_counter() - start
        print(f"{'decode_volume':>16}: {secs:7.2f} s  {voxels / secs / 1e6:7.2f} Mvoxel/s  bc-watershed block by "
              f"block, uint8 Zarr in, Zarr out, {summary['outputs'][0]['instances']} instances (one run)")

    if "rss" not in skip:
        with tempfile.TemporaryDirectory(prefix="pytc-bench-") as tmp:
            bench_memory(pred, args.rss_block, tmp)


if __name__ == "__main__":
    main()
