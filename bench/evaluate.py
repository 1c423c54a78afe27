"""Benchmark pytc's instance metrics against scikit-image's on one label pair.

Ground truth: the cell instances of `pytc.synth.make_em_volume`; prediction: a perturbed copy
(10% of objects merged into another, 10% split in half, boundaries shifted by one voxel, so
some prediction 0 lies inside objects). Both are in-memory uint32 arrays.

Compared, as medians over --repeats interleaved runs:
  * ARAND + VOI: `pytc.metrics` (one streamed contingency table → adapted Rand + VOI) against
    `skimage.metrics.adapted_rand_error` + `variation_of_information` (goal: pytc faster);
  * AP: pytc's MitoEM-style AP (match + 10 thresholds) from an already built table, and the
    whole `instance_metrics` call (table, ARAND, VOI, CREMI, AP, F1). scikit-image has no AP.
The numbers themselves are printed too: VOI agrees; the adapted Rand errors differ by convention
(scikit-image counts pairs n(n−1) and keeps prediction 0 as an ordinary segment).

    python bench/evaluate.py                        # 128×512×512, 3 repeats
    python bench/evaluate.py --shape 64,256,256 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def _triple(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def make_pair(shape, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    from pytc.synth import make_em_volume

    gt = make_em_volume(shape, seed=seed).cell_instances
    rng = np.random.default_rng(seed + 1)
    ids = np.unique(gt)[1:]
    lut = np.arange(int(gt.max()) + 1, dtype=np.uint32)
    merged = rng.choice(ids, len(ids) // 10, replace=False)
    lut[merged] = rng.choice(ids, len(merged))
    pred = lut[gt]
    split = np.isin(gt, rng.choice(ids, len(ids) // 10, replace=False)) & (np.arange(shape[2]) >= shape[2] // 2)
    pred[split] += np.uint32(gt.max() + 1)
    pred = np.ascontiguousarray(np.roll(pred, 1, axis=2))
    return pred, gt


def time_it(fn, repeats: int) -> tuple[float, object]:
    runs, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", type=_triple, default=(128, 512, 512), help="Z,Y,X of the label pair")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from skimage.metrics import adapted_rand_error, variation_of_information

    from pytc.metrics import (
        adapted_rand,
        average_precision,
        contingency_table,
        instance_metrics,
        match_instances,
        true_positives,
    )
    from pytc.metrics import variation_of_information as voi

    t0 = time.perf_counter()
    pred, gt = make_pair(args.shape)
    print(
        f"labels: {args.shape} uint32, {len(np.unique(gt)) - 1} GT objects, "
        f"{np.count_nonzero((pred == 0) & (gt > 0))} prediction-0 voxels inside objects "
        f"(made in {time.perf_counter() - t0:.1f} s)"
    )

    def pytc_rand_voi():
        table = contingency_table(pred, gt)
        return {**adapted_rand(table), **voi(table)}

    def skimage_rand_voi():
        are, prec, rec = adapted_rand_error(gt, pred)
        split, merge = variation_of_information(gt, pred, ignore_labels=(0,))
        return {"adapted_rand": are, "precision": prec, "recall": rec, "voi_split": split, "voi_merge": merge}

    table = contingency_table(pred, gt)

    def pytc_ap():
        _, best_gt, best_iou, n_gt = match_instances(table)
        return [average_precision(true_positives(best_gt, best_iou, t / 100), n_gt) for t in range(50, 100, 5)]

    cases = {
        "skimage ARAND+VOI": skimage_rand_voi,
        "pytc ARAND+VOI": pytc_rand_voi,
        "pytc AP (from table)": pytc_ap,
        "pytc instance_metrics (all)": lambda: instance_metrics(pred, gt),
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    results = {}
    for _ in range(args.repeats):  # interleaved, so drifting machine load hits both alike
        for name, fn in cases.items():
            seconds, results[name] = time_it(fn, 1)
            times[name].append(seconds)

    med = {name: statistics.median(runs) for name, runs in times.items()}
    for name, runs in times.items():
        print(f"{name:>28}: median {med[name]:7.3f} s  runs: {', '.join(f'{r:.3f}' for r in runs)}")
    ratio = med["skimage ARAND+VOI"] / med["pytc ARAND+VOI"]
    print(f"speed-up pytc vs scikit-image (ARAND+VOI): {ratio:.1f}× (goal > 1)")

    ours, theirs = results["pytc ARAND+VOI"], results["skimage ARAND+VOI"]
    print(
        f"VOI split/merge  pytc {ours['voi_split']:.6f}/{ours['voi_merge']:.6f}  "
        f"skimage {theirs['voi_split']:.6f}/{theirs['voi_merge']:.6f}"
    )
    print(
        f"adapted Rand     pytc {ours['adapted_rand']:.6f} (SNEMI3D: precision {ours['are_precision']:.4f}, "
        f"recall {ours['are_recall']:.4f})  skimage {theirs['adapted_rand']:.6f} (its 'precision' "
        f"{theirs['precision']:.4f}, 'recall' {theirs['recall']:.4f}: swapped, scikit-image #6485)"
    )
    m = results["pytc instance_metrics (all)"]
    print(f"AP@0.50 {m['ap_50']:.4f}  AP@0.75 {m['ap_75']:.4f}  mAP {m['map']:.4f}  F1@0.50 {m['f1_50']:.4f}")


if __name__ == "__main__":
    main()
