"""Prediction → instances: each decoder on hand-made predictions with known answers, errors, CLI."""

from __future__ import annotations

import subprocess
import sys

import h5py
import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from pytc.cli import app
from pytc.config import TargetConfig
from pytc.data.targets import build_targets
from pytc.decode import WATERZ_SCORES, decode, decode_volume
from pytc.errors import ConfigError, DataError, OutputExistsError
from pytc.io import open_volume

LONG_RANGE = [[1, 0, 0], [0, 1, 0], [0, 0, 1], [3, 0, 0], [0, 3, 0], [0, 0, 3]]


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to renaming the ids, with background (0) kept as background."""
    pairs = set(zip(a.ravel().tolist(), b.ravel().tolist()))
    return len(pairs) == len(np.unique(a)) == len(np.unique(b)) and ((a == 0) == (b == 0)).all()


def soft(target: np.ndarray, lo: float = 0.05, hi: float = 0.95) -> np.ndarray:
    """{0, 1} target → probabilities that are never exactly 0 or 1."""
    return (lo + (hi - lo) * target).astype(np.float32)


def two_touching_blobs() -> tuple[np.ndarray, np.ndarray]:
    """Two boxes sharing a face along x (ids 1, 2) and their soft binary + contour prediction."""
    label = np.zeros((8, 12, 20), np.uint32)
    label[1:7, 1:11, 1:10] = 1
    label[1:7, 1:11, 10:19] = 2
    pred = soft(build_targets(label, [TargetConfig(name="binary"), TargetConfig(name="contour")]))
    return label, pred


def blocks(seed: int = 0, background: bool = False) -> np.ndarray:
    """Connected instances made of random 3x3x3 blocks (some of them background)."""
    import cc3d

    values = np.random.default_rng(seed).integers(0 if background else 1, 6, (3, 4, 4))
    label = cc3d.connected_components(values.repeat(3, 0).repeat(3, 1).repeat(3, 2), connectivity=6)
    assert (label == 0).any() == background
    return label


# ------------------------------------------------------------------- threshold and bc-watershed --
def test_threshold_merges_touching_blobs_bc_watershed_splits_them():
    label, pred = two_touching_blobs()
    merged = decode(pred[:1], "threshold", min_size=0)
    assert merged.max() == 1 and ((merged > 0) == (label > 0)).all()
    split = decode(pred, "bc-watershed", ["binary", "contour"], min_size=0)
    assert split.max() == 2 and same_partition(split, label)


def test_threshold_picks_the_binary_channel_and_min_size():
    pred = np.zeros((2, 6, 10, 10), np.float32)
    pred[1, 1:4, 1:4, 1:4] = 0.9  # 27 voxels
    pred[1, 1, 7, 7:9] = 0.9  # 2 voxels
    pred[0] = 0.99  # a distance channel, everything would be one object
    kinds = ["distance", "binary"]
    assert decode(pred, "threshold", kinds, min_size=0).max() == 2
    kept = decode(pred, "threshold", kinds, min_size=5)
    assert kept.max() == 1 and (kept > 0).sum() == 27
    assert decode(pred, "threshold", kinds, min_size=0, threshold=0.95).max() == 0
    # 26-connectivity: two voxels touching at a corner are one object.
    corner = np.zeros((3, 3, 3), np.float32)
    corner[0, 0, 0] = corner[1, 1, 1] = 1.0
    assert decode(corner, "threshold", min_size=0).max() == 1


@pytest.mark.parametrize("block", [None, [3, 20, 10]])  # whole volume, and blocks with the seeds apart
def test_bc_watershed_min_seed_size_drops_noise_seeds(block):
    binary = np.full((6, 20, 24), 0.95, np.float32)
    binary[:, :, 15:] = 0.8  # foreground, too weak for seeds ...
    binary[3, 10, 18] = 0.95  # ... but for one noise voxel
    contour = np.full_like(binary, 0.1)
    contour[:, :, 14] = 0.5  # a faint ridge between the two seeds
    pred = np.stack([binary, contour])
    params = {"min_size": 0, **({"block_size": block, "halo": [3, 20, 24]} if block else {})}
    split = decode(pred, "bc-watershed", ["binary", "contour"], **params)
    assert split.max() == 2  # the one-voxel seed claims everything past the ridge
    whole = decode(pred, "bc-watershed", ["binary", "contour"], min_seed_size=2, **params)
    assert whole.max() == 1 and (whole == 1).all()


def test_bc_watershed_thresholds():
    label, pred = two_touching_blobs()
    # Seeds need foreground above seed_threshold: none pass 0.96, so nothing is found.
    assert decode(pred, "bc-watershed", ["binary", "contour"], seed_threshold=0.96, min_size=0).max() == 0
    # A contour_threshold above the contour probability lets the seeds touch: one object.
    assert decode(pred, "bc-watershed", ["binary", "contour"], contour_threshold=0.99, min_size=0).max() == 1
    # min_size works on the watershed result: both boxes have 540 voxels.
    assert decode(pred, "bc-watershed", ["binary", "contour"], min_size=541).max() == 0


def test_labels_are_consecutive_uint32_from_a_uint8_view():
    rng = np.random.default_rng(1)
    pred = np.zeros((10, 30, 30), np.float32)
    for z, y, x in rng.integers(1, 26, (12, 3)):
        pred[z % 8 : z % 8 + 2, y : y + 3, x : x + 3] = rng.uniform(0.6, 1.0)
    labels = decode(pred, "threshold", min_size=4)
    assert labels.dtype == np.uint32 and labels.shape == pred.shape
    assert np.array_equal(np.unique(labels), np.arange(labels.max() + 1)) and labels.max() >= 3
    before = pred.copy()
    decode(np.stack([pred, pred]), "bc-watershed", ["binary", "contour"])
    assert np.array_equal(pred, before)  # the caller's array is never modified


# ------------------------------------------------------------------------------------- waterz --
def test_waterz_recovers_ground_truth_with_background(capfd):
    label = blocks(seed=3, background=True)
    aff = build_targets(label, [TargetConfig(name="affinity")])
    seg = decode(aff, "affinity-waterz", ["affinity"] * 3, min_size=0)
    assert seg.dtype == np.uint32 and same_partition(seg, label)
    assert capfd.readouterr().out == ""  # waterz's C++ progress messages are silenced


def test_waterz_several_thresholds_give_distinct_outputs():
    label, _ = two_touching_blobs()
    aff = build_targets(label, [TargetConfig(name="affinity")])
    # The x-edges across the shared face get affinity 0.5: boundary score 1 - 0.5.
    face = np.zeros(label.shape, bool)
    face[1:7, 1:11, 10] = True
    aff[2][face] = 0.5
    out = decode(aff, "affinity-waterz", ["affinity"] * 3, merge_thresholds=[0.7, 0.3], min_size=0)
    assert list(out) == [0.3, 0.7]
    assert same_partition(out[0.3], label)  # 0.5 > 0.3: kept apart
    assert out[0.7].max() == 1 and ((out[0.7] > 0) == (label > 0)).all()  # 0.5 < 0.7: merged
    assert out[0.3] is not out[0.7]


def test_waterz_finds_the_short_range_channels_by_offset_and_masks_with_binary():
    label = blocks(seed=4)
    offsets = [[0, 0, 1], [0, 3, 0], [1, 0, 0], [0, 1, 0]]  # shuffled, plus an ignored long-range one
    aff = build_targets(label, [TargetConfig(name="binary"), TargetConfig(name="affinity", offsets=offsets)])
    seg = decode(aff, "affinity-waterz", ["binary"] + ["affinity"] * 4, offsets, min_size=0)
    assert same_partition(seg, label)
    aff[0, :, :, :4] = 0.1  # the binary channel now says background there
    seg = decode(aff, "affinity-waterz", ["binary"] + ["affinity"] * 4, offsets, min_size=0)
    assert (seg[:, :, :4] == 0).all() and (seg[:, :, 4:] > 0).all()


@pytest.mark.parametrize("function", ["mean", "quantile-50", "quantile-95"])
def test_waterz_merge_functions_are_prebuilt(function):
    from waterz._codegen import normalize
    from waterz._prebuilt.agglomerate import SPECS

    assert (normalize(WATERZ_SCORES[function]), "0") in {(normalize(f), q) for f, q in SPECS}
    label = blocks(seed=5)
    aff = build_targets(label, [TargetConfig(name="affinity")])
    assert same_partition(decode(aff, "affinity-waterz", ["affinity"] * 3, merge_function=function, min_size=0), label)


def test_every_offered_merge_function_is_prebuilt():
    from waterz._codegen import normalize
    from waterz._prebuilt.agglomerate import SPECS

    prebuilt = {normalize(f) for f, _ in SPECS}
    assert len(WATERZ_SCORES) == 19 and all(normalize(f) in prebuilt for f in WATERZ_SCORES.values())


# ---------------------------------------------------------------------------- mutex watershed --
def test_mutex_watershed_needs_long_range_repulsion_to_recover_ground_truth():
    label = blocks(seed=6)
    aff = build_targets(label, [TargetConfig(name="affinity", offsets=LONG_RANGE)])
    # Short-range affinities are 0.25 across boundaries: attractive everywhere, so only the
    # long-range repulsions (weight 1 - 0 = 1) keep the instances apart.
    aff[:3] = 0.25 + 0.5 * aff[:3]
    seg = decode(aff, "mutex-watershed", ["affinity"] * 6, LONG_RANGE, min_size=0)
    assert seg.dtype == np.uint32 and same_partition(seg, label)


def test_mutex_watershed_background_and_binary_mask():
    label = blocks(seed=7, background=True)
    targets = [TargetConfig(name="binary"), TargetConfig(name="affinity", offsets=LONG_RANGE)]
    pred = soft(build_targets(label, targets))
    seg = decode(pred, "mutex-watershed", ["binary"] + ["affinity"] * 6, LONG_RANGE, min_size=0)
    assert same_partition(seg, label)
    # Without the binary channel the background falls apart into fragments of its own.
    seg = decode(pred[1:], "mutex-watershed", ["affinity"] * 6, LONG_RANGE, min_size=0)
    fg = label > 0
    assert same_partition(seg[fg], label[fg]) and not np.isin(seg[~fg], seg[fg]).any()


# ------------------------------------------------------------------------------------- errors --
def test_error_messages():
    _, bc = two_touching_blobs()
    aff = np.zeros((3, 4, 4, 4), np.float32)
    cases = [
        (lambda: decode(bc[:1], "bc-watershed"),
         DataError, "bc-watershed needs a binary and a contour channel; the prediction has 1 channel: binary; "
                    "predict those targets (data.targets) or choose another --method"),
        (lambda: decode(aff, "threshold", ["affinity"] * 3),
         DataError, "threshold needs a binary channel (or a single-channel prediction); the prediction has "
                    "3 channels: affinity x3; predict those targets (data.targets) or choose another --method"),
        (lambda: decode(bc, "affinity-waterz", ["binary", "contour"]),
         DataError, "affinity-waterz needs affinity channels; the prediction has 2 channels: binary, contour; "
                    "predict those targets (data.targets) or choose another --method"),
        (lambda: decode(aff, "mutex-watershed", ["affinity"] * 3, LONG_RANGE),
         DataError, "6 affinity offsets for 3 affinity channels (3 channels: affinity x3); "
                    "give one offset per affinity channel"),
        (lambda: decode(aff, "mutex-watershed", ["affinity"] * 3),
         DataError, "mutex-watershed needs short-range (max |o| == 1) and long-range affinity offsets; the "
                    "prediction's offsets are [[1, 0, 0], [0, 1, 0], [0, 0, 1]]; train with long-range offsets "
                    "or use --method affinity-waterz"),
        (lambda: decode(aff, "affinity-waterz", ["affinity"] * 3, [[1, 0, 0], [0, 1, 0], [0, 0, 2]]),
         DataError, "affinity-waterz needs the short-range offsets [1, 0, 0], [0, 1, 0], [0, 0, 1]; the "
                    "prediction's affinity offsets are [[1, 0, 0], [0, 1, 0], [0, 0, 2]] (missing [[0, 0, 1]]); "
                    "use --method mutex-watershed"),
        (lambda: decode(np.zeros((4, 3, 3, 3), np.float32), "affinity-waterz", ["affinity"] * 4),
         DataError, "the prediction has 4 affinity channels but no offsets; give their offsets with "
                    "--offsets (pytc infer stores them as pytc_offsets)"),
        (lambda: decode(aff, "affinity-waterz", ["affinity"] * 3, [[0, 0, 0], [0, 1, 0], [0, 0, 1]]),
         DataError, "affinity offsets must be non-zero (dz, dy, dx) triples, got [[0, 0, 0], [0, 1, 0], [0, 0, 1]]"),
        (lambda: decode(bc, "threshold"),
         DataError, "the prediction has 2 channels but their kinds are unknown; give them, e.g. "
                    "--channels binary,contour (pytc infer stores them as pytc_channels)"),
        (lambda: decode(bc, "threshold", ["binary"]),
         DataError, "1 channel kinds given (binary) for a prediction with 2 channels; give one kind per channel"),
        (lambda: decode(bc, "threshold", ["binary", "boundary"]),
         DataError, "unknown channel kind 'boundary'; each channel is one of binary, contour, affinity, distance"),
        (lambda: decode(bc[0] * 4 - 2, "threshold"),
         DataError, "channel 0 (binary) holds values in [-1.8, 1.8], not probabilities in [0, 1]; "
                    "decode sigmoid outputs (pytc infer writes them)"),
        (lambda: decode(bc[0, 0], "threshold"),
         DataError, "a prediction must be (C, Z, Y, X) or (Z, Y, X), got shape (12, 20); give 2D data a z axis of 1"),
        (lambda: decode(bc, "watershed"),
         ConfigError, "unknown decode method 'watershed'; choose one of threshold, bc-watershed, affinity-waterz, "
                      "mutex-watershed"),
        (lambda: decode(bc[:1], "threshold", min_sise=3),
         ConfigError, "decoding parameters: decoding.min_sise: unknown key — did you mean decoding.min_size?"),
        (lambda: decode(bc[:1], "threshold", threshold=1.5),
         ConfigError, "decoding parameters: decoding.threshold: Input should be less than or equal to 1, got 1.5"),
    ]
    for call, kind, message in cases:
        with pytest.raises(kind) as err:
            call()
        assert str(err.value) == message
    with pytest.raises(ConfigError, match="merge_function"):
        decode(aff, "affinity-waterz", ["affinity"] * 3, merge_function="median")
    nan = bc[:1].copy()
    nan[0, 0, 0, 0] = np.nan
    with pytest.raises(DataError, match=r"holds values in \[nan, nan\]"):
        decode(nan, "threshold")


# ------------------------------------------------------------------------ volumes and the CLI --
def write_zarr(path, data: np.ndarray, **attrs) -> str:
    """A prediction as pytc infer stores it: an array with pytc_* attributes inside a store."""
    zarr.create_array(store=str(path), name="pred", data=data, chunks=(1, *data.shape[1:]), attributes=attrs)
    return f"{path}/pred"


def write_h5(path, data: np.ndarray, **attrs) -> str:
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("pred", data=data, chunks=(1, *data.shape[1:]))
        ds.attrs.update(attrs)
    return f"{path}:pred"


def quantise(pred: np.ndarray) -> np.ndarray:
    return np.round(pred * 255).astype(np.uint8)


def test_decode_volume_reads_attributes_and_stored_config(tmp_path):
    label, pred = two_touching_blobs()
    config = "decoding:\n  method: bc-watershed\n  min_size: 10\n  seed_threshold: 0.8\n"
    spec = write_zarr(tmp_path / "pred.zarr", quantise(pred), pytc_channels=["binary", "contour"], pytc_scale=255,
                      pytc_config=config, voxel_size=[30.0, 4.0, 4.0])
    summary = decode_volume(spec, tmp_path / "seg.zarr", progress=False)
    assert summary["method"] == "bc-watershed" and summary["params"]["seed_threshold"] == 0.8
    assert summary["params"]["min_size"] == 10 and summary["outputs"][0]["instances"] == 2
    with open_volume(tmp_path / "seg.zarr") as seg:
        assert seg.dtype == np.uint32 and seg.voxel_size == (30.0, 4.0, 4.0)
        assert same_partition(seg[...], label)
    # Explicit arguments beat the stored config.
    summary = decode_volume(spec, tmp_path / "seg.zarr", "threshold", {"min_size": 0}, force=True, progress=False)
    assert summary["method"] == "threshold" and summary["outputs"][0]["instances"] == 1
    with pytest.raises(OutputExistsError, match="exists; pass --force"):
        decode_volume(spec, tmp_path / "seg.zarr", progress=False)


def test_decode_volume_waterz_thresholds_write_one_output_each(tmp_path):
    label, _ = two_touching_blobs()
    aff = build_targets(label, [TargetConfig(name="affinity")])
    aff[2][1:7, 1:11, 10] = 0.5
    spec = write_h5(tmp_path / "pred.h5", aff, pytc_channels=["affinity"] * 3,
                    pytc_offsets=np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]]), pytc_scale=1)
    params = {"merge_thresholds": [0.3, 0.7], "min_size": 0}
    summary = decode_volume(spec, f"{tmp_path}/seg.h5:labels", "affinity-waterz", params, progress=False)
    assert [(o["path"], o["instances"]) for o in summary["outputs"]] == [
        (f"{tmp_path}/seg.h5:labels_t0.3", 2), (f"{tmp_path}/seg.h5:labels_t0.7", 1)]
    with h5py.File(tmp_path / "seg.h5") as f:
        assert sorted(f) == ["labels_t0.3", "labels_t0.7"]
    with pytest.raises(OutputExistsError, match=r"seg.h5:labels_t0.3 exists"):  # before decoding anything
        decode_volume(spec, f"{tmp_path}/seg.h5:labels", "affinity-waterz", params, progress=False)
    decode_volume(spec, f"{tmp_path}/seg.h5:labels", "affinity-waterz", params, force=True, progress=False)
    decode_volume(spec, f"{tmp_path}/pred.h5:seg", "threshold", {"merge_thresholds": [0.1, 0.2]},
                  ["binary", "binary", "binary"], progress=False)  # one output: thresholds only split waterz
    with h5py.File(tmp_path / "pred.h5") as f:
        assert sorted(f) == ["pred", "seg"] and f["pred"].attrs["pytc_scale"] == 1
    summary = decode_volume(spec, tmp_path / "seg.zarr", "affinity-waterz", params, progress=False)
    assert [o["path"] for o in summary["outputs"]] == [str(tmp_path / "seg_t0.3.zarr"), str(tmp_path / "seg_t0.7.zarr")]
    with open_volume(tmp_path / "seg_t0.3.zarr") as seg:
        assert same_partition(seg[...], label)
    assert not [p for p in tmp_path.iterdir() if "pytc" in p.name]  # no trial or temporary stores left


def test_cli_decode(tmp_path):
    label, pred = two_touching_blobs()
    spec = write_h5(tmp_path / "pred.h5", quantise(pred))  # no attributes at all
    out = str(tmp_path / "seg.h5")
    runner = CliRunner()
    args = ["decode", spec, "--method", "bc-watershed", "--output", out, "--min-size", "5"]

    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "Error: the prediction has 2 channels but their kinds are unknown" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "seg.h5").exists()

    with pytest.warns(UserWarning, match="no pytc_scale attribute: reading its uint8 values as probability x 255"):
        result = runner.invoke(app, [*args, "--channels", "binary,contour"])
    assert result.exit_code == 0, result.output
    assert f"Wrote {out}: 2 instances" in result.output
    assert "bc-watershed: 8×12×20 uint32 labels" in result.output
    with open_volume(out) as seg:
        assert same_partition(seg[...], label)

    result = runner.invoke(app, [*args, "--channels", "binary,contour"])
    assert result.exit_code == 2 and result.output.strip() == f"Error: {out} exists; pass --force to overwrite"

    result = runner.invoke(app, [*args, "--channels", "binary,contour", "--method", "threshold", "--force"])
    assert result.exit_code == 0 and f"Wrote {out}: 1 instance\n" in result.output

    for bad, message in [
        (["--merge-thresholds", "0.3,x"], "--merge-thresholds expects numbers separated by commas"),
        (["--merge-function", "median"], "decoding.merge_function: use mean or quantile-N with N = 10, 15, ..., 95"),
        (["--channels", "binary"], "1 channel kinds given (binary) for a prediction with 2 channels"),
    ]:
        result = runner.invoke(app, [*args, "--force", *bad])
        assert result.exit_code == 2 and message in result.output and len(result.output.strip().splitlines()) == 1
    result = runner.invoke(app, [*args, "--method", "magic"])
    assert result.exit_code == 2 and "'magic' is not one of" in result.output


def test_decode_needs_no_torch():
    code = """
import sys
import numpy as np
from pytc.decode import decode
p = np.full((6, 4, 4, 4), 0.5, np.float32)
decode(p[:1], "threshold"); decode(p[:2], "bc-watershed", ["binary", "contour"])
decode(p[:3], "affinity-waterz", ["affinity"] * 3)
decode(p, "mutex-watershed", ["affinity"] * 6, [[1, 0, 0], [0, 1, 0], [0, 0, 1], [2, 0, 0], [0, 2, 0], [0, 0, 2]])
assert "torch" not in sys.modules, "torch was imported"
"""
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_offsets_longer_than_the_volume_link_nothing():
    label = np.zeros((1, 9, 12), np.uint32)  # one section: z offsets link nothing
    label[0, :, :6], label[0, :, 6:] = 1, 2
    offsets = [[1, 0, 0], [0, 1, 0], [0, 0, 1], [4, 0, 0], [0, 0, 3], [0, 0, 20]]
    aff = build_targets(label, [TargetConfig(name="affinity", offsets=offsets)])
    aff[:3] = 0.25 + 0.5 * aff[:3]
    seg = decode(aff, "mutex-watershed", ["affinity"] * 6, offsets, min_size=0)
    assert same_partition(seg, label)
    short = build_targets(label, [TargetConfig(name="affinity")])  # (1, 0, 0) links nothing here
    assert same_partition(decode(short, "affinity-waterz", ["affinity"] * 3, min_size=0), label)
    with pytest.raises(DataError, match=r"every long-range offset is as long as an axis of the 1×9×12 volume"):
        decode(aff[[0, 1, 2, 3, 5]], "mutex-watershed", ["affinity"] * 5, offsets[:4] + offsets[5:])


def test_decode_volume_attribute_errors(tmp_path):
    _, pred = two_touching_blobs()
    cases = [
        (write_h5(tmp_path / "a.h5", (pred[:1] * 1000).astype(np.int16)),
         DataError, "holds int16 values and no pytc_scale attribute; a prediction is float probabilities or uint8"),
        (write_h5(tmp_path / "b.h5", pred[:1], pytc_scale=0),
         DataError, "pytc_scale must be a positive number, got 0"),
        (write_zarr(tmp_path / "c.zarr", pred[:1], pytc_config="decoding: [unclosed"),
         ConfigError, "pytc_config attribute: line 2 invalid YAML"),
        (write_zarr(tmp_path / "d.zarr", pred[:1], pytc_config="decoding:\n  min_size: -1\n"),
         ConfigError, "decoding parameters: decoding.min_size: Input should be greater than or equal to 0, got -1"),
    ]
    for spec, kind, message in cases:
        with pytest.raises(kind) as err:
            decode_volume(spec, tmp_path / "seg.zarr", "threshold", progress=False)
        assert message in str(err.value)
    assert not (tmp_path / "seg.zarr").exists()


# ------------------------------------------------------------------------- block by block --
def smooth_prediction(shape, seed: int, channels: int = 1) -> np.ndarray:
    """Smooth random probabilities in [0, 1]: blobs of many sizes, some much larger than a block."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    out = np.empty((channels, *shape), np.float32)
    for c in range(channels):
        field = gaussian_filter(rng.random(shape), 1.5)
        out[c] = (field - field.min()) / (field.max() - field.min())
    return out


def matched_fraction(a: np.ndarray, b: np.ndarray) -> float:
    """Share of the voxels labelled in either volume where b's label is the one that overlaps a's
    label most (1.0: the same partition up to renaming)."""
    fg = (a > 0) | (b > 0)
    pairs, counts = np.unique(np.stack([b[fg], a[fg]]), axis=1, return_counts=True)
    best: dict = {}
    for (bb, _), n in zip(pairs.T.tolist(), counts.tolist()):
        best[bb] = max(best.get(bb, 0), n)
    return sum(best.values()) / fg.sum()


@pytest.mark.parametrize("seed", range(4))
def test_threshold_block_by_block_is_exact(seed):
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in rng.integers(9, 26, 3))
    pred = smooth_prediction(shape, seed)[0]
    params = {"threshold": float(rng.uniform(0.6, 0.7)), "min_size": int(rng.integers(0, 10))}
    whole = decode(pred, "threshold", **params)
    assert whole.max() >= 2
    for block in ([4, 5, 7], [1, 9, 9], [3, 2, 30], [shape[0], shape[1], 1]):
        # Same labels, numbers included (raster order of each object's first voxel).
        assert np.array_equal(decode(pred, "threshold", block_size=block, **params), whole), block


def test_line_shaped_blocks_and_volumes_are_labelled():
    # cc3d's 26-connected labelling fails on (1, 1, k) arrays with many pieces: edge blocks of a
    # volume, or thin 2D images, go through 6-connectivity (the same relation on a line).
    pred = np.zeros((3, 5, 3), np.float32)
    pred[2, 4] = [0.9, 0.1, 0.9]  # the last block (1, 1, 3) holds two separate voxels
    whole = decode(pred, "threshold", min_size=0)
    assert whole.max() == 2
    assert np.array_equal(decode(pred, "threshold", min_size=0, block_size=[2, 2, 3]), whole)
    line = np.zeros((1, 1, 400), np.float32)
    line[0, 0, ::2] = 0.9  # 200 single voxels
    assert decode(line, "threshold", min_size=0).max() == 200
    assert np.array_equal(decode(line, "threshold", min_size=0, block_size=[1, 1, 64]), decode(line, "threshold", min_size=0))


def test_decodes_side_by_side_get_their_own_scratch(tmp_path):
    # bc-watershed of a non-numpy prediction keeps seeds in a scratch store; threads decoding at
    # the same time must not share (and delete) each other's.
    from concurrent.futures import ThreadPoolExecutor

    pred = smooth_prediction((24, 40, 40), 3, channels=2)
    stored = zarr.create_array(store=str(tmp_path / "p.zarr"), shape=pred.shape, dtype="float32", chunks=(1, 8, 20, 20))
    stored[...] = pred
    params = dict(block_size=[8, 20, 20], halo=[2, 4, 4], min_size=0, seed_threshold=0.6, contour_threshold=0.6,
                  foreground_threshold=0.4)
    ref = decode(pred, "bc-watershed", ["binary", "contour"], **params)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: decode(stored, "bc-watershed", ["binary", "contour"], **params), range(6)))
    assert all(np.array_equal(r, ref) for r in results)


def test_scratch_chunks_stay_reasonable_for_prime_block_edges():
    from pytc.decode.scratch import scratch_chunk

    assert [scratch_chunk(b) for b in (512, 488, 128, 8, 487, 17, 1)] == [64, 61, 64, 8, 64, 17, 1]


def test_threshold_block_by_block_joins_diagonal_contacts():
    # Blocks of 4: voxels on either side of a block corner, edge or face, touching diagonally.
    pred = np.zeros((8, 8, 8), np.float32)
    pred[3, 3, 3] = pred[4, 4, 4] = 1  # across a corner of 8 blocks
    pred[3, 3, 7] = pred[4, 4, 6] = 1  # across an edge (z and y borders), x moves too
    pred[1, 3, 1] = pred[2, 4, 0] = 1  # across a y face, z and x move
    pred[6, 0, 3] = pred[6, 2, 4] = 1  # two apart: not touching
    whole = decode(pred, "threshold", min_size=0)
    assert whole.max() == 5
    assert np.array_equal(decode(pred, "threshold", min_size=0, block_size=[4, 4, 4]), whole)
    assert np.array_equal(decode(pred, "threshold", min_size=2, block_size=[4, 4, 4]),
                          decode(pred, "threshold", min_size=2))


def em_prediction(shape, seed: int) -> np.ndarray:
    """Binary + contour of synthetic EM mitochondria the way a network predicts them: smoothed,
    noisy, clipped to [0, 1] (as bench/decode.py makes them)."""
    from scipy.ndimage import gaussian_filter

    from pytc.synth import make_em_volume

    label = make_em_volume(shape, seed=seed).mito_instances
    pred = build_targets(label, [TargetConfig(name="binary"), TargetConfig(name="contour")])
    rng = np.random.default_rng(seed)
    for c in range(2):
        pred[c] = np.clip(gaussian_filter(pred[c], 1.0) + rng.normal(0, 0.05, shape), 0, 1)
    return pred


def test_bc_watershed_block_by_block():
    pred = smooth_prediction((18, 30, 34), seed=5, channels=2)
    params = {"seed_threshold": 0.6, "contour_threshold": 0.5, "min_size": 5}
    whole = decode(pred, "bc-watershed", ["binary", "contour"], **params)
    assert whole.max() >= 10
    # Exact when every block's halo reaches over the whole volume.
    wide = decode(pred, "bc-watershed", ["binary", "contour"], block_size=[5, 7, 9], halo=[18, 30, 34], **params)
    assert np.array_equal(wide, whole)

    # A realistic prediction, 64 blocks: floods can differ only near block borders, and little.
    pred = em_prediction((32, 128, 128), seed=1)
    whole = decode(pred, "bc-watershed", ["binary", "contour"], min_size=20)
    assert whole.max() == 20
    near = decode(pred, "bc-watershed", ["binary", "contour"], min_size=20, block_size=[8, 32, 32], halo=[2, 8, 8])
    assert near.max() == 20 and matched_fraction(whole, near) >= 0.99
    assert (near == whole)[(near > 0) | (whole > 0)].mean() >= 0.99  # the same numbers, too
    blind = decode(pred, "bc-watershed", ["binary", "contour"], min_size=20, block_size=[8, 32, 32], halo=[0, 0, 0])
    assert matched_fraction(whole, blind) < matched_fraction(whole, near)  # the halo is what makes it close


def test_bc_watershed_block_by_block_keeps_one_id_across_borders():
    # A long tube through 4 blocks along x with one seed all along it, and a separate blob.
    label = np.zeros((6, 10, 40), np.uint32)
    label[1:5, 2:7, 2:38] = 1
    label[1:5, 8:10, 5:9] = 2
    pred = soft(build_targets(label, [TargetConfig(name="binary"), TargetConfig(name="contour")]))
    seg = decode(pred, "bc-watershed", ["binary", "contour"], block_size=[3, 5, 10], halo=[1, 1, 1], min_size=0)
    assert same_partition(seg, label) and np.array_equal(seg, decode(pred, "bc-watershed", ["binary", "contour"],
                                                                      min_size=0))


def test_block_size_and_halo_are_validated():
    pred = np.zeros((4, 4, 4), np.float32)
    with pytest.raises(ConfigError, match=r"decoding parameters: decoding.block_size: block sizes must be positive, got \[0, 4, 4\]$"):
        decode(pred, "threshold", block_size=[0, 4, 4])
    with pytest.raises(ConfigError, match=r"decoding.halo: halo sizes must be 0 or more, got \[-1, 0, 0\]"):
        decode(pred, "bc-watershed", block_size=[2, 2, 2], halo=[-1, 0, 0])
    with pytest.raises(ConfigError, match="decoding.block_size"):
        decode(pred, "threshold", block_size=[4, 4])


def test_decode_volume_block_by_block(tmp_path):
    pred = smooth_prediction((12, 20, 22), seed=6, channels=2)
    spec = write_zarr(tmp_path / "pred.zarr", quantise(pred), pytc_channels=["binary", "contour"], pytc_scale=255,
                      voxel_size=[30.0, 4.0, 4.0])
    dequantised = quantise(pred) / np.float32(255)
    params = {"threshold": 0.65, "seed_threshold": 0.6, "contour_threshold": 0.5, "min_size": 3, "halo": [12, 20, 22]}
    for method, out in (("threshold", f"{tmp_path}/seg.h5:labels"), ("bc-watershed", tmp_path / "seg.zarr")):
        summary = decode_volume(spec, out, method, {**params, "block_size": [5, 8, 8]}, progress=False)
        expected = decode(dequantised, method, ["binary", "contour"], **params)
        with open_volume(out) as seg:
            assert np.array_equal(seg[...], expected) and seg.voxel_size == (30.0, 4.0, 4.0)
        assert summary["outputs"][0]["instances"] == expected.max() > 1 and summary["dtype"] == "uint32"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred.zarr", "seg.h5", "seg.zarr"]  # no scratch left

    # A bad value in the last block: an error after some blocks were decoded leaves nothing behind.
    bad = pred.copy()
    bad[0, -1, -1, -1] = 1.5
    spec = write_zarr(tmp_path / "bad.zarr", bad, pytc_channels=["binary", "contour"])
    with pytest.raises(DataError, match=r"channel 0 \(binary\) holds values in \[.*, 1.5\]"):
        decode_volume(spec, tmp_path / "out.zarr", "bc-watershed", {"block_size": [5, 8, 8]}, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.zarr", "pred.zarr", "seg.h5", "seg.zarr"]

    # The CLI passes --block-size and --halo on.
    result = CliRunner().invoke(app, ["decode", spec.replace("bad", "pred"), "-o", str(tmp_path / "cli.zarr"), "-m",
                                      "threshold", "--threshold", "0.65", "--min-size", "3", "--block-size", "5,8,8",
                                      "--halo", "1,2,2"])
    assert result.exit_code == 0, result.output
    with open_volume(tmp_path / "cli.zarr") as seg:
        expected = decode(dequantised, "threshold", ["binary", "contour"], threshold=0.65, min_size=3)
        assert expected.max() > 1 and np.array_equal(seg[...], expected)
    result = CliRunner().invoke(app, ["decode", spec, "-o", str(tmp_path / "x.zarr"), "--block-size", "5,8"])
    assert result.exit_code == 2 and "decoding.block_size" in result.output


def test_affinity_decoders_refuse_volumes_that_do_not_fit(monkeypatch, tmp_path):
    import pytc.decode.memory

    monkeypatch.setattr(pytc.decode.memory, "available_memory", lambda: 4096)
    aff = np.full((6, 8, 16, 16), 0.5, np.float32)
    with pytest.raises(DataError) as err:
        decode(aff[:3], "affinity-waterz", ["affinity"] * 3, merge_thresholds=[0.3, 0.5])
    assert str(err.value) == (
        "affinity-waterz decodes the whole volume in memory and needs about 128 KiB for 8×16×16 voxels (3 affinity "
        "channels, 2 merge thresholds), but 4 KiB is available; decode a crop of the prediction, use a machine "
        "with more memory, or use --method threshold or bc-watershed (decoded block by block)")
    spec = write_h5(tmp_path / "aff.h5", aff, pytc_channels=["affinity"] * 6, pytc_offsets=np.array(LONG_RANGE))
    with pytest.raises(DataError, match=r"mutex-watershed decodes the whole volume in memory and needs about "
                                        r"1.0 MiB for 8×16×16 voxels \(6 affinity channels\), but 4 KiB is available"):
        decode_volume(spec, tmp_path / "seg.zarr", "mutex-watershed", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["aff.h5"]
    monkeypatch.setattr(pytc.decode.memory, "available_memory", lambda: None)  # unknown: no check
    assert decode(aff[:3], "affinity-waterz", ["affinity"] * 3).shape == (8, 16, 16)


def test_available_memory_is_read():
    from pytc.decode.memory import available_memory

    available = available_memory()
    assert available is None or 2**20 < available < 2**50
