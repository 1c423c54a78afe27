"""Benchmark `pytc.io.convert` (HDF5 → Zarr) against a naive whole-array copy.

The naive baseline is what one writes by hand: read the whole HDF5 dataset with h5py, create a
Zarr array with the same chunks and codec, assign the whole array. Each measurement runs in a
fresh subprocess, so its peak RSS is its own. Prints medians (time and peak RSS), throughput, the speed ratio
pytc/naive (goal: >= 1.0) and both peak RSS values.

    python bench/convert.py                       # 256×1024×1024 uint8 (256 MB), 3 repeats
    python bench/convert.py --shape 64,512,512 --repeats 5 --compression zstd
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _triple(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def make_source(path: Path, shape, chunks) -> None:
    """EM-like uint8 content (smooth membranes-and-cells texture plus shot noise), gzip-chunked
    like typical published volumes; compresses about 1.5× — neither random nor trivially flat."""
    import h5py

    rng = np.random.default_rng(0)
    y, x = np.ogrid[: shape[1], : shape[2]]
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("raw", shape=shape, dtype="uint8", chunks=chunks, compression="gzip")
        for z0 in range(0, shape[0], chunks[0]):
            z1 = min(z0 + chunks[0], shape[0])
            slab = np.empty((z1 - z0, *shape[1:]), np.uint8)
            for k, z in enumerate(range(z0, z1)):
                cells = np.sin(x / 23.0 + z / 17.0) * np.cos(y / 19.0 - z / 29.0)
                membranes = 90 * np.exp(-((cells * 6) ** 2))  # dark thin walls where cells ≈ 0
                plane = 150 + 30 * cells - membranes + rng.normal(0, 8, shape[1:])
                slab[k] = np.clip(plane, 0, 255)
            ds[z0:z1] = slab
        ds.attrs["voxel_size"] = [30.0, 4.0, 4.0]


def run_one(method: str, src: str, dst: str, chunks, compression: str) -> dict:
    """Child-process side: convert once and report seconds and own peak RSS."""
    import h5py
    import zarr

    import pytc.io
    from pytc.io.zarr_store import zarr_compressors  # the exact codec pytc writes, for a fair baseline

    start = time.perf_counter()
    if method == "pytc":
        pytc.io.convert(src, dst, chunks=chunks, compression=compression, progress=False)
    else:
        path, key = src.split(":")
        with h5py.File(path, "r") as f:
            data = f[key][...]
        out = zarr.create_array(
            dst,
            shape=data.shape,
            dtype=data.dtype,
            chunks=chunks,
            fill_value=0,
            compressors=zarr_compressors(compression, 3),
        )
        out[...] = data
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "maxrss_mb": _peak_rss_mb()}


def _peak_rss_mb() -> float:
    """This process's own peak RSS. Linux folds the parent's peak into a child's ru_maxrss at
    exec time, so prefer VmHWM, which belongs to the process's own address space."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(method: str, src: str, dst: Path, args) -> dict:
    import shutil

    shutil.rmtree(dst, ignore_errors=True)
    cmd = [
        sys.executable,
        __file__,
        "--child",
        method,
        "--src",
        src,
        "--dst",
        str(dst),
        "--chunks",
        ",".join(map(str, args.chunks)),
        "--compression",
        args.compression,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def verify(src: str, dst: Path) -> None:
    """Spot-check that the pytc output equals the source, slab by slab."""
    from pytc.io import open_volume

    with open_volume(src) as a, open_volume(dst) as b:
        assert a.shape == b.shape and a.dtype == b.dtype
        for z in range(0, a.shape[0], 64):
            assert np.array_equal(a[z : z + 64], b[z : z + 64]), f"mismatch at z={z}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", type=_triple, default=(256, 1024, 1024))
    parser.add_argument("--chunks", type=_triple, default=(64, 64, 64))
    parser.add_argument("--compression", default="gzip", choices=["gzip", "zstd", "lz4", "none"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", choices=["pytc", "naive"], help=argparse.SUPPRESS)
    parser.add_argument("--src", help=argparse.SUPPRESS)
    parser.add_argument("--dst", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_one(args.child, args.src, args.dst, args.chunks, args.compression)))
        return

    nbytes = int(np.prod(args.shape))
    with tempfile.TemporaryDirectory(prefix="pytc-bench-") as tmp:
        src_path = Path(tmp) / "src.h5"
        t0 = time.perf_counter()
        make_source(src_path, args.shape, tuple(min(c, n) for c, n in zip((64, 128, 128), args.shape)))
        print(
            f"source: {args.shape} uint8 ({nbytes / 1e6:.0f} MB, {src_path.stat().st_size / 1e6:.0f} MB on disk, "
            f"made in {time.perf_counter() - t0:.1f} s); dst chunks {args.chunks}, {args.compression}"
        )
        src = f"{src_path}:raw"
        results: dict[str, list[dict]] = {"pytc": [], "naive": []}
        for i in range(args.repeats):
            for method in ("naive", "pytc"):  # interleaved, so drifting machine load hits both alike
                results[method].append(measure(method, src, Path(tmp) / f"{method}.zarr", args))
            if i == 0:
                verify(src, Path(tmp) / "pytc.zarr")
        rows = {}
        for method, runs in results.items():
            secs = statistics.median(r["seconds"] for r in runs)
            rss = [r["maxrss_mb"] for r in runs]
            rows[method] = secs
            each = ", ".join(f"{r['seconds']:.2f}" for r in runs)
            print(
                f"{method:>6}: median {secs:6.2f} s  {nbytes / 1e6 / secs:6.1f} MB/s  "
                f"peak RSS median {statistics.median(rss):4.0f} MB (max {max(rss):4.0f})  runs: {each} s"
            )
        print(f"ratio pytc/naive throughput: {rows['naive'] / rows['pytc']:.2f}× (goal >= 1.0)")


if __name__ == "__main__":
    main()
