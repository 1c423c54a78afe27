"""Metrics: cross-checks against scikit-image, waterz and the SNEMI3D/CREMI evaluator, hand-computed
AP cases, invariances, chunked == whole-volume, user errors and the `pytc evaluate` command."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from typer.testing import CliRunner

from pytc.cli import app
from pytc.errors import DataError, OutputExistsError
from pytc.metrics import (
    contingency_table,
    evaluate,
    evaluate_volumes,
    instance_metrics,
    semantic_metrics,
    write_report,
)

runner = CliRunner()


class Chunked:
    """A numpy array dressed as a chunked store (h5py/zarr-like): ``chunks`` and ``attrs``."""

    def __init__(self, data, chunks, attrs=None):
        self.data, self.chunks, self.attrs = np.asarray(data), tuple(chunks), dict(attrs or {})
        self.shape, self.dtype = self.data.shape, self.data.dtype

    def __getitem__(self, index):
        return self.data[index]


def blobs(shape=(12, 20, 24), cell=(4, 5, 6), seed=0, zero_fraction=0.15) -> np.ndarray:
    """Label volume of box-shaped objects (each coarse cell one id) with some background cells."""
    rng = np.random.default_rng(seed)
    coarse_shape = tuple(-(-n // c) for n, c in zip(shape, cell))
    coarse = rng.permutation(np.prod(coarse_shape)).reshape(coarse_shape).astype(np.uint32) + 1
    coarse[rng.random(coarse_shape) < zero_fraction] = 0
    full = coarse.repeat(cell[0], 0).repeat(cell[1], 1).repeat(cell[2], 2)
    return np.ascontiguousarray(full[: shape[0], : shape[1], : shape[2]])


def perturb(gt: np.ndarray, seed=1, zeros_in_objects=False) -> np.ndarray:
    """A plausible segmentation of ``gt``: merges, splits, shifted boundaries (optionally holes)."""
    rng = np.random.default_rng(seed)
    ids = np.unique(gt)[1:]
    lut = np.arange(gt.max() + 1, dtype=np.uint64)
    merged = rng.choice(ids, len(ids) // 4, replace=False)
    lut[merged] = rng.choice(ids, len(merged))
    pred = lut[gt]
    split = np.isin(gt, rng.choice(ids, len(ids) // 4, replace=False)) & (np.arange(gt.shape[2]) % 7 < 3)
    pred[split] += gt.max() + 1
    pred = np.roll(pred, 1, axis=1)  # boundaries off by one voxel; background spills into objects
    if not zeros_in_objects:
        pred[(pred == 0) & (gt > 0)] = gt.max() * 3 + 7  # no prediction 0 inside objects
    else:
        pred[rng.random(gt.shape) < 0.05] = 0
    return pred


def snemi3d_reference(seg: np.ndarray, gt: np.ndarray):
    """The SNEMI3D/CREMI evaluator (cremi_python `adapted_rand`), transcribed with dense numpy."""
    seg_a, seg_b = gt.ravel().astype(np.int64), seg.ravel().astype(np.int64)
    n = seg_a.size
    p_ij = np.zeros((seg_a.max() + 1, seg_b.max() + 1))
    np.add.at(p_ij, (seg_a, seg_b), 1)
    a, b, c = p_ij[1:, :], p_ij[1:, 1:], p_ij[1:, 0]
    a_i, b_i = a.sum(1), b.sum(0)
    sum_a = np.sum(a_i * a_i)
    sum_b = np.sum(b_i * b_i) + np.sum(c) / n
    sum_ab = np.sum(b * b) + np.sum(c) / n
    precision, recall = sum_ab / sum_b, sum_ab / sum_a
    return 1.0 - 2.0 * precision * recall / (precision + recall), precision, recall


def waterz_rand_voi(seg: np.ndarray, gt: np.ndarray) -> dict:
    """waterz.evaluate(segmentation, gt) (uint64, 3D, C-contiguous) plus its adapted Rand error."""
    import waterz

    w = waterz.evaluate(np.ascontiguousarray(seg, np.uint64), np.ascontiguousarray(gt, np.uint64))
    return {**w, "adapted_rand": 1 - 2 * w["rand_split"] * w["rand_merge"] / (w["rand_split"] + w["rand_merge"])}


# ------------------------------------------------------------------------------ cross-checks --
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_voi_equals_scikit_image(seed):
    from skimage.metrics import variation_of_information

    gt = blobs(seed=seed)
    pred = perturb(gt, seed=seed + 10, zeros_in_objects=True)
    m = instance_metrics(pred, gt)
    # skimage returns [H(image1|image0), H(image0|image1)]: with (gt, pred) that is [split, merge].
    split, merge = variation_of_information(gt, pred, ignore_labels=(0,))
    assert m["voi_split"] == pytest.approx(split, abs=1e-6)
    assert m["voi_merge"] == pytest.approx(merge, abs=1e-6)
    assert m["voi"] == pytest.approx(split + merge, abs=1e-6)
    assert m["voi_split"] != pytest.approx(m["voi_merge"], abs=1e-3)  # the direction is really tested


def test_voi_direction_split_and_merge():
    gt = np.array([[[1, 1, 1, 1, 2, 2, 2, 2]]], np.uint32)
    split = instance_metrics(np.array([[[1, 1, 3, 3, 2, 2, 2, 2]]]), gt)
    merge = instance_metrics(np.array([[[1, 1, 1, 1, 1, 1, 1, 1]]]), gt)
    assert split["voi_split"] == pytest.approx(0.5) and split["voi_merge"] == 0  # 1 bit on half the voxels
    assert merge["voi_merge"] == pytest.approx(1.0) and merge["voi_split"] == 0
    assert split["are_precision"] == 1 and split["are_recall"] < 1  # splits lower recall
    assert merge["are_recall"] == 1 and merge["are_precision"] < 1  # merges lower precision


@pytest.mark.parametrize("seed", [0, 3])
def test_adapted_rand_equals_waterz_without_zeros_in_objects(seed):
    gt = blobs(seed=seed)
    pred = perturb(gt, seed=seed + 20)
    assert not np.any((pred == 0) & (gt > 0))
    m = instance_metrics(pred, gt)
    w = waterz_rand_voi(pred, gt)
    assert m["adapted_rand"] == pytest.approx(w["adapted_rand"], abs=1e-6)
    assert m["are_recall"] == pytest.approx(w["rand_split"], abs=1e-9)  # rand_split = recall (drops with splits)
    assert m["are_precision"] == pytest.approx(w["rand_merge"], abs=1e-9)  # rand_merge = precision (merges)
    assert m["voi_split"] == pytest.approx(w["voi_split"], abs=1e-6)
    assert m["voi_merge"] == pytest.approx(w["voi_merge"], abs=1e-6)


@pytest.mark.parametrize("seed", [0, 4, 5])
def test_adapted_rand_equals_snemi3d_evaluator_with_zeros_in_objects(seed):
    gt = blobs(seed=seed)
    pred = perturb(gt, seed=seed + 30, zeros_in_objects=True)
    assert np.count_nonzero((pred == 0) & (gt > 0)) > 100
    are, precision, recall = snemi3d_reference(pred, gt)
    m = instance_metrics(pred, gt)
    assert m["adapted_rand"] == pytest.approx(are, abs=1e-12)
    assert m["are_precision"] == pytest.approx(precision, abs=1e-12)
    assert m["are_recall"] == pytest.approx(recall, abs=1e-12)
    # Prediction 0 inside objects really behaves like single-voxel segments: give each such voxel
    # its own id and waterz (n², 0 ordinary) agrees up to the evaluator's c/n-for-c normalisation.
    singletons = pred.copy()
    holes = (pred == 0) & (gt > 0)
    singletons[holes] = pred.max() + 1 + np.arange(np.count_nonzero(holes))
    assert m["adapted_rand"] == pytest.approx(waterz_rand_voi(singletons, gt)["adapted_rand"], abs=2e-3)
    # ... while treating 0 as an ordinary segment (waterz as is) gives a different, larger-merge number.
    assert abs(m["adapted_rand"] - waterz_rand_voi(pred, gt)["adapted_rand"]) > 1e-3


def test_large_label_ids_take_the_unpacked_path():
    gt = blobs(seed=6)
    pred = perturb(gt, seed=7, zeros_in_objects=True)
    big = np.where(pred > 0, pred.astype(np.uint64) + np.uint64(2**62), 0)
    big_gt = np.where(gt > 0, gt.astype(np.uint64) * np.uint64(2**40), 0)
    assert instance_metrics(big, big_gt) == instance_metrics(pred, gt)


# ---------------------------------------------------------------------------------------- AP --
def ap_case():
    """GT objects A=1, B=2, C=3, D=4 (10 voxels each); predictions: A split into 11 (6 voxels,
    IoU .6) and 12 (4, IoU .4); B and C merged into 13 (20, IoU .5 with each); D missed; 14 is a
    5-voxel false positive in the background."""
    gt = np.zeros(60, np.uint32)
    pred = np.zeros(60, np.uint32)
    for k, label in enumerate((1, 2, 3, 4)):
        gt[10 * k : 10 * k + 10] = label
    pred[0:6], pred[6:10], pred[10:30], pred[50:55] = 11, 12, 13, 14
    return pred.reshape(1, 1, -1), gt.reshape(1, 1, -1)


def test_ap_hand_computed_split_merge_miss_false_positive():
    pred, gt = ap_case()
    m = instance_metrics(pred, gt)
    # Rank by size: 13 (20), 11 (6), 14 (5), 12 (4).
    # t=0.50: TP TP FP FP → precision 1 up to recall 0.5 → 51 of 101 recall points: 51/101.
    # t=0.55, 0.60: FP TP FP FP → precision 1/2 up to recall 0.25 → 26 points × 0.5: 13/101.
    # t>=0.65: no TP → 0.
    assert m["ap_50"] == pytest.approx(51 / 101, abs=1e-12)
    assert m["ap_by_iou"]["0.55"] == pytest.approx(13 / 101, abs=1e-12)
    assert m["ap_by_iou"]["0.60"] == pytest.approx(13 / 101, abs=1e-12)
    assert m["ap_75"] == 0.0
    assert m["map"] == pytest.approx((51 + 13 + 13) / 1010, abs=1e-12)
    assert (m["n_gt"], m["n_pred"], m["tp_50"]) == (4, 4, 2)
    assert (m["precision_50"], m["recall_50"], m["f1_50"]) == (0.5, 0.5, 0.5)


def test_ap_each_object_counts_once_and_scores_reorder():
    gt = np.zeros((1, 1, 20), np.uint32)
    gt[0, 0, :10] = 1
    pred = np.zeros_like(gt)
    pred[0, 0, :5], pred[0, 0, 5:10] = 2, 3  # exact halves: both have IoU 0.5 with object 1
    m = instance_metrics(pred, gt)
    assert m["tp_50"] == 1 and m["precision_50"] == 0.5  # the second claimant is a false positive
    assert m["ap_50"] == 1.0  # the first-ranked prediction (label 2: size tie → lower id) is the TP

    pred, gt = ap_case()
    # Confidence puts the false positive first: t=0.5 ranks FP TP TP FP → precision 2/3 to recall .5.
    m = instance_metrics(pred, gt, scores={14: 0.9, 13: 0.8, 11: 0.7, 12: 0.1})
    assert m["ap_50"] == pytest.approx(51 * (2 / 3) / 101, abs=1e-12)


def test_identical_segmentations_are_perfect():
    gt = blobs(seed=8)
    m = instance_metrics(gt, gt)
    assert (m["adapted_rand"], m["voi_split"], m["voi_merge"], m["cremi_score"]) == (0.0, 0.0, 0.0, 0.0)
    assert (m["ap_50"], m["ap_75"], m["map"], m["f1_50"]) == (1.0, 1.0, 1.0, 1.0)


def test_no_ground_truth_objects_gives_undefined_not_a_crash(tmp_path):
    m = instance_metrics(np.ones((2, 3, 4), np.uint8), np.zeros((2, 3, 4), np.uint8))
    assert np.isnan(m["adapted_rand"]) and np.isnan(m["voi"]) and np.isnan(m["map"])
    out = write_report({"metrics": m}, tmp_path / "m.json")
    assert json.loads(out.read_text())["metrics"]["map"] is None  # NaN → null, valid JSON


labels = arrays(np.uint8, (3, 4, 5), elements=st.integers(0, 5))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pred=labels, gt=labels, perm=st.permutations(range(1, 6)), offset=st.sampled_from([0, 100, 2**33]))
def test_relabelling_changes_nothing(pred, gt, perm, offset):
    lut = np.array([0, *(p + offset for p in perm)], np.uint64)
    base = instance_metrics(pred, gt)
    pred_perm, gt_perm = instance_metrics(lut[pred], gt), instance_metrics(pred, lut[gt])
    _, sizes = np.unique(pred[pred > 0], return_counts=True)
    size_ties = len(set(sizes.tolist())) < len(sizes)  # AP ranks equal sizes by label id
    for other in (pred_perm, gt_perm):
        for key, value in base.items():
            if key == "ap_by_iou" or (size_ties and key in ("ap_50", "ap_75", "map") and other is pred_perm):
                continue
            np.testing.assert_allclose(other[key], value, rtol=1e-12, atol=1e-12, err_msg=key)


# ---------------------------------------------------------------------------------- semantic --
def test_semantic_hand_computed():
    pred = np.array([0.9, 0.8, 0.1, 0.2, 0.6, 0.45])
    gt = np.array([1, 0, 0, 3, 1, 0])  # any label > 0 is foreground
    m = semantic_metrics(pred, gt)
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (2, 1, 1, 2)
    assert m["iou"] == pytest.approx(2 / 4) and m["dice"] == pytest.approx(4 / 6)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["iou_background"] == pytest.approx(2 / 4) and m["mean_iou"] == pytest.approx(0.5)
    q = semantic_metrics(Chunked(np.round(pred * 255).astype(np.uint8), (6,), {"pytc_scale": 255}), gt)
    assert q == m  # uint8 store: compared with 0.5 · 255
    assert semantic_metrics((pred > 0.5).astype(np.uint8), gt) == m  # a mask: > 0
    assert semantic_metrics(np.full(6, 0.5), gt)["fp"] == 0  # strictly above the threshold
    assert semantic_metrics(pred, gt, ignore_label=3)["fn"] == 0


def test_semantic_picks_the_binary_channel():
    gt = blobs(seed=9) > 0
    probs = np.stack([np.zeros(gt.shape), gt * 0.9, np.ones(gt.shape)]).astype(np.float32)
    tagged = Chunked(probs, (3, 4, 5, 6), {"pytc_channels": ["contour", "binary", "distance"]})
    assert semantic_metrics(tagged, gt)["iou"] == 1.0
    assert semantic_metrics(probs, gt)["iou"] == 0.0  # no channel names: channel 0
    with pytest.raises(DataError, match="needs a binary channel"):
        semantic_metrics(Chunked(probs[:1], (1, 4, 5, 6), {"pytc_channels": ["affinity"]}), gt)


@settings(max_examples=40, deadline=None)
@given(a=arrays(np.bool_, (4, 5)), b=arrays(np.bool_, (4, 5)))
def test_semantic_iou_is_symmetric(a, b):
    ab, ba = semantic_metrics(a, b), semantic_metrics(b, a)
    for key in ("iou", "dice", "accuracy", "mean_iou"):
        np.testing.assert_equal(ab[key], ba[key])
    np.testing.assert_equal(ab["precision"], ba["recall"])


# --------------------------------------------------------------------------------- streaming --
@pytest.mark.parametrize("task", ["semantic", "instance"])
def test_chunked_equals_whole_volume_exactly(task, monkeypatch):
    import pytc.metrics.counts as counts

    gt = blobs((17, 23, 29), seed=11)
    pred = perturb(gt, seed=12, zeros_in_objects=True)
    if task == "semantic":
        pred = np.random.default_rng(0).random(gt.shape) * (0.4 + 0.6 * (pred > 0))
    whole = evaluate(pred, gt, task)
    monkeypatch.setattr(counts, "_MERGE_EVERY", 10)  # merge partial tables often
    chunked = evaluate(Chunked(pred, (5, 7, 4)), Chunked(gt, (3, 8, 6)), task, block_bytes=1)
    assert chunked == whole
    if task == "instance":  # and the table itself is the whole volume's, pair for pair
        a = contingency_table(pred, gt)
        b = contingency_table(Chunked(pred, (4, 4, 4)), Chunked(gt, (4, 4, 4)), block_bytes=1)
        assert all(np.array_equal(x, y) for x, y in zip((a.gt, a.pred, a.count), (b.gt, b.pred, b.count)))


def test_ignore_label_drops_voxels():
    gt = blobs(seed=13).astype(np.int32)
    pred = perturb(gt.astype(np.uint32), seed=14, zeros_in_objects=True)
    gt[:, :4] = -1  # an unlabelled margin
    keep = gt != -1
    expected = instance_metrics(pred[keep].reshape(1, 1, -1), gt[keep].reshape(1, 1, -1))
    assert instance_metrics(pred, gt, ignore_label=-1) == expected


def test_evaluate_volumes_from_files(volume_factory):
    gt = blobs(seed=15)
    pred = perturb(gt, seed=16).astype(np.uint32)
    gt_spec = volume_factory("hdf5", gt, chunks=(4, 8, 8))
    pred_spec = volume_factory("zarr", pred, chunks=(8, 8, 8))
    report = evaluate_volumes(pred_spec, gt_spec, task="instance", progress=False)
    assert report["metrics"] == instance_metrics(pred, gt)
    assert (report["pred"], report["gt"], report["task"]) == (pred_spec, gt_spec, "instance")
    assert report["shape"] == list(gt.shape)
    assert "SNEMI3D" in report["definitions"]["adapted_rand"]


def test_uint8_prediction_store_is_thresholded_with_its_scale(tmp_path):
    import h5py

    gt = (blobs(seed=17) > 0).astype(np.uint8)
    probs = np.where(gt > 0, 0.7, 0.3)
    with h5py.File(tmp_path / "pred.h5", "w") as f:
        ds = f.create_dataset("main", data=np.round(probs * 255).astype(np.uint8), chunks=(4, 8, 8))
        ds.attrs["pytc_scale"] = 255
        assert evaluate(ds, gt)["iou"] == 1.0
        assert evaluate(ds, gt, threshold=0.8)["iou"] == 0.0


def test_prediction_store_from_pytc_infer(tmp_path, volume_factory):
    """A (C, Z, Y, X) uint8 store with pytc_scale / pytc_channels, as `pytc infer` writes it."""
    from pytc.io import create_volume

    gt = (blobs(seed=22) > 0).astype(np.uint8)
    probs = np.stack([np.full(gt.shape, 0.9), np.where(gt > 0, 0.6, 0.2)])
    spec = str(tmp_path / "pred.zarr")
    with create_volume(spec, probs.shape, np.uint8, chunks=(2, 4, 8, 8)) as out:
        out[...] = np.round(probs * 255).astype(np.uint8)
        out.set_attrs({"pytc_scale": 255, "pytc_channels": ["contour", "binary"]})
    report = evaluate_volumes(spec, volume_factory("hdf5", gt), progress=False)
    assert report["metrics"]["iou"] == 1.0 and report["threshold"] == 0.5
    high = evaluate_volumes(spec, volume_factory("hdf5", gt, name="g2.h5"), threshold=0.7, progress=False)
    assert high["metrics"]["tp"] == 0  # 0.6 · 255 = 153 is not above 0.7 · 255


def test_library_defaults_match_the_config():
    import inspect

    from pytc.commands.evaluate import evaluate as evaluate_cmd
    from pytc.config import EvaluationConfig

    cfg = EvaluationConfig()
    for fn in (evaluate, evaluate_volumes, evaluate_cmd):
        params = inspect.signature(fn).parameters
        assert params["threshold"].default == cfg.threshold
        assert params["ignore_label"].default == cfg.ignore_label
        assert params["task"].default == cfg.task


def test_metrics_never_import_torch():
    code = (
        "import sys, numpy as np, pytc.metrics as m; "
        "m.evaluate(np.ones(4), np.ones(4), 'instance'); print('torch' in sys.modules)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "False"


# ------------------------------------------------------------------------------------ errors --
@pytest.mark.parametrize(
    ("pred", "gt", "task", "match"),
    [
        (np.zeros((2, 3, 4), np.uint8), np.zeros((2, 3, 5), np.uint8), "instance", r"\(2, 3, 4\) but .*\(2, 3, 5\)"),
        (np.zeros((2, 3, 4), np.uint8), np.full((2, 3, 4), 1.5), "instance", "ground truth has non-integral"),
        (np.zeros((2, 3, 4), np.uint8), np.full((2, 3, 4), -2, np.int16), "instance", "negative labels"),
        (np.full((2, 3, 4), 0.3, np.float32), np.ones((2, 3, 4), np.uint8), "instance", "pytc decode"),
        (np.zeros((2, 2, 3, 4), np.float32), np.ones((2, 3, 4), np.uint8), "instance", "pytc decode"),
        (Chunked(np.zeros((2, 3, 4), np.uint8), (2, 3, 4), {"pytc_scale": 255}), np.ones((2, 3, 4)), "instance", "decode"),
        (np.full((2, 3, 4), 3.0), np.ones((2, 3, 4), np.uint8), "semantic", r"outside \[0, 1\]"),
    ],
)
def test_user_errors_are_one_line(pred, gt, task, match):
    with pytest.raises(DataError, match=match) as err:
        evaluate(pred, gt, task)
    assert "\n" not in str(err.value)


def test_integral_float_labels_are_accepted():
    gt = blobs(seed=18)
    assert evaluate(gt.astype(np.float32), gt.astype(np.float64), "instance")["adapted_rand"] == 0.0


# ----------------------------------------------------------------------------------------- CLI --
def test_cli_instance_json_and_overwrite(tmp_path, volume_factory):
    gt = blobs(seed=19)
    pred = perturb(gt, seed=20, zeros_in_objects=True).astype(np.uint32)
    pred_spec, gt_spec = volume_factory("zarr", pred), volume_factory("hdf5", gt)
    out = tmp_path / "metrics.json"
    result = runner.invoke(app, ["evaluate", pred_spec, gt_spec, "--task", "instance", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "adapted Rand error" in result.output and "mAP@0.50:0.95" in result.output
    report = json.loads(out.read_text())
    assert (report["pred"], report["gt"]) == (pred_spec, gt_spec)
    assert report["metrics"]["adapted_rand"] == pytest.approx(snemi3d_reference(pred, gt)[0], abs=1e-12)
    assert set(report["definitions"]) == {"adapted_rand", "voi", "cremi_score", "ap"}

    again = runner.invoke(app, ["evaluate", pred_spec, gt_spec, "--task", "instance", "--json", str(out)])
    assert again.exit_code == 2 and "--force" in again.output
    forced = runner.invoke(app, ["evaluate", pred_spec, gt_spec, "--task", "instance", "--json", str(out), "--force"])
    assert forced.exit_code == 0 and not list(tmp_path.glob(".metrics.json*"))  # no temporaries left
    with pytest.raises(OutputExistsError):
        write_report(report, out)


def test_cli_semantic_table_and_errors(volume_factory):
    gt = (blobs(seed=21) > 0).astype(np.uint8)
    pred_spec, gt_spec = volume_factory("tiff", (gt * 0.8).astype(np.float32)), volume_factory("hdf5", gt)
    result = runner.invoke(app, ["evaluate", pred_spec, gt_spec])
    assert result.exit_code == 0, result.output
    assert "foreground IoU" in result.output and "1.0000" in result.output

    bad = volume_factory("zarr", np.zeros((3, 3, 3), np.uint8), name="small.zarr")
    result = runner.invoke(app, ["evaluate", bad, gt_spec, "--task", "instance"])
    assert result.exit_code == 2
    assert "small.zarr" in result.output and "vol.h5" in result.output and "Traceback" not in result.output
