"""Throughput of every decoder (`pytc.decode.decode`) on a synthetic prediction.

The prediction is derived from `pytc.synth.make_em_volume` ground truth the way a network's output
looks: binary + contour channels from the mitochondria, short- and long-range affinities from the
cells, each Gaussian-smoothed (sigma 1) with noise (sd 0.05) added and clipped to [0, 1]. Each
decoder reads only its own channels from an in-memory float32 array; times are medians over
repeats, printed with voxels/s and the instances found next to the ground-truth count (a sanity
check, not a quality score). One extra line times `decode_volume` end to end on a uint8 Zarr
store (read, dequantise, decode, write), to show what I/O adds.

    python bench/decode.py                           # 128×512×512, 3 repeats
    python bench/decode.py --shape 64,256,256 --repeats 5 --methods threshold,bc-watershed
"""

from __future__ import annotations

import argparse
import statistics
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", type=_triple, default=(128, 512, 512))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--methods", default=",".join(CHANNELS), help="comma-separated subset")
    parser.add_argument("--no-volume", action="store_true", help="skip the end-to-end decode_volume line")
    args = parser.parse_args()

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

    if not args.no_volume:
        from pytc.io import create_volume

        with tempfile.TemporaryDirectory(prefix="pytc-bench-") as tmp:
            with create_volume(f"{tmp}/pred.zarr/pred", pred[:2].shape, np.uint8, chunks=(1, 64, 128, 128),
                               compression="zstd") as out:
                out[...] = np.round(pred[:2] * 255).astype(np.uint8)
                out.set_attrs({"pytc_channels": ["binary", "contour"], "pytc_scale": 255})
            start = time.perf_counter()
            summary = decode_volume(f"{tmp}/pred.zarr/pred", f"{tmp}/seg.zarr", "bc-watershed", progress=False)
            secs = time.perf_counter() - start
        print(f"{'decode_volume':>16}: {secs:7.2f} s  {voxels / secs / 1e6:7.2f} Mvoxel/s  bc-watershed, "
              f"uint8 Zarr in, Zarr out, {summary['outputs'][0]['instances']} instances (one run)")


if __name__ == "__main__":
    main()
