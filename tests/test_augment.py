"""Augmentation: image/label alignment after every geometric transform, intensity transforms
leave labels alone, EM transforms do what they say, dtypes/shapes kept, seeded reproducibility."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import minimum_filter, maximum_filter

from pytc.config import AugmentConfig
from pytc.data.augment import build_augmentation
from pytc.errors import DataError

PROBS = [name for name in AugmentConfig.model_fields if name.endswith("_prob")]
GEOMETRIC = ["flip_prob", "rot90_prob", "zflip_prob", "affine_prob", "elastic_prob", "misalignment_prob"]
INTENSITY = [p for p in PROBS if p not in GEOMETRIC]
EXACT = {"flip_prob", "rot90_prob", "zflip_prob", "misalignment_prob"}  # no interpolation


def _only(prob: str | None, **kw) -> AugmentConfig:
    """Every probability 0 except `prob` (None: all 1)."""
    return AugmentConfig(**{p: float(prob is None or p == prob) for p in PROBS}, **kw)


def _sample(shape=(12, 32, 32), seed=0):
    """Blocky instance label with huge uint64 ids; image and mask are functions of the label."""
    rng = np.random.default_rng(seed)
    step = (4, 8, 8)[3 - len(shape):]  # 8x8 in-plane blocks leave an interior after interpolation
    blocks = rng.integers(0, 9, size=[s // k for s, k in zip(shape, step)])
    for axis, k in enumerate(step):
        blocks = blocks.repeat(k, axis)
    ids = np.array([0, *range(2**40, 2**40 + 8)], np.uint64)
    label = ids[blocks][None]
    return {"image": _image_of(label), "label": label, "mask": _mask_of(label)}


def _image_of(label):
    return ((label % 1000).astype(np.float32) + 1) / 1000  # distinct per id, in (0, 0.01)


def _mask_of(label):
    return (label % 3) != 1


def _run(cfg, sample, seed=0, dims=3):
    aug = build_augmentation(cfg, spatial_dims=dims)
    aug.set_random_state(seed=seed)
    return aug(sample)


def _interior(label, radius=2):
    """Voxels whose in-plane (2r+1)^2 neighbourhood holds a single id: safe from interpolation."""
    size = (1,) * (label.ndim - 2) + (2 * radius + 1,) * 2
    return maximum_filter(label, size=size, mode="nearest") == minimum_filter(label, size=size, mode="nearest")


def test_disabled_or_all_zero_gives_none():
    assert build_augmentation(AugmentConfig(enabled=False)) is None
    assert build_augmentation(AugmentConfig(**{p: 0.0 for p in PROBS})) is None
    assert build_augmentation(AugmentConfig()) is not None


@pytest.mark.parametrize("prob", GEOMETRIC)
def test_geometric_keeps_image_label_mask_aligned(prob):
    sample = _sample()
    changed = False
    for seed in range(3):
        out = _run(_only(prob), sample, seed)
        label = out["label"]
        assert label.dtype == np.uint64 and out["mask"].dtype == bool and out["image"].dtype == np.float32
        assert label.shape == out["image"].shape == out["mask"].shape == sample["label"].shape
        assert set(np.unique(label)) <= set(np.unique(sample["label"]))  # ids survive exactly
        np.testing.assert_array_equal(out["mask"], _mask_of(label))
        where = np.ones(label.shape, bool) if prob in EXACT else _interior(label)
        assert where.mean() > 0.3
        np.testing.assert_allclose(out["image"][where], _image_of(label)[where], atol=1e-6)
        changed |= not np.array_equal(label, sample["label"])
    assert changed


def test_rot90_skips_non_square_planes():
    sample = _sample((8, 16, 32))
    out = _run(_only("rot90_prob"), sample)
    np.testing.assert_array_equal(out["label"], sample["label"])


@pytest.mark.parametrize("prob", INTENSITY)
def test_intensity_changes_image_only(prob):
    sample = _sample()
    sample["image"] = np.random.default_rng(1).random(sample["label"].shape, dtype=np.float32)
    before = {k: v.copy() for k, v in sample.items()}
    out = _run(_only(prob), sample)
    np.testing.assert_array_equal(out["label"], sample["label"])
    np.testing.assert_array_equal(out["mask"], sample["mask"])
    assert out["image"].shape == sample["image"].shape and out["image"].dtype == np.float32
    assert not np.allclose(out["image"], sample["image"])
    for k in sample:  # the caller's arrays are never edited
        np.testing.assert_array_equal(sample[k], before[k])


def _changed_box(before, after):
    """Bounding box (per axis: min, max) of the voxels that changed."""
    idx = np.nonzero(~np.isclose(before, after))
    return [(i.min(), i.max()) for i in idx]


def test_missing_section_blanks_whole_sections():
    image = np.random.default_rng(2).uniform(0.2, 1, (1, 12, 16, 16)).astype(np.float32)
    for seed in range(4):
        out = _run(_only("missing_section_prob"), {"image": image}, seed)["image"]
        blank = [z for z in range(12) if (out[0, z] == 0).all()]
        assert 1 <= len(blank) <= 2
        kept = [z for z in range(12) if z not in blank]
        np.testing.assert_array_equal(out[0, kept], image[0, kept])


def test_misalignment_shifts_image_and_label_from_a_section_on():
    sample = _sample((8, 32, 32))
    sample["image"] = np.random.default_rng(3).random(sample["label"].shape, dtype=np.float32)
    out = _run(_only("misalignment_prob", misalignment_max_shift=3), sample)
    moved = [z for z in range(8) if not np.array_equal(out["image"][0, z], sample["image"][0, z])]
    z0 = moved[0]
    assert z0 >= 1 and moved == list(range(z0, 8))
    found = []
    for dy in range(-3, 4):
        for dx in range(-3, 4):
            ys, xs = slice(3 + dy, 29 + dy), slice(3 + dx, 29 + dx)  # away from the filled strip
            if all(np.array_equal(out[k][0, z0:, ys, xs], sample[k][0, z0:, 3:29, 3:29]) for k in ("image", "label")):
                found.append((dy, dx))
    assert len(found) == 1 and found[0] != (0, 0)


@pytest.mark.parametrize("prob", ["cut_blur_prob", "cut_noise_prob"])
def test_cut_transforms_change_one_box(prob):
    image = np.random.default_rng(4).random((1, 12, 40, 40), dtype=np.float32)
    out = _run(_only(prob), {"image": image})["image"]
    box = _changed_box(image, out)
    (_, _), *sides = box
    for (lo, hi), n in zip(sides, (12, 40, 40)):
        assert hi - lo + 1 <= 0.5 * n + 1  # a box, not the whole patch
    inside = tuple(slice(lo, hi + 1) for lo, hi in box)
    assert (~np.isclose(image[inside], out[inside])).mean() > 0.9


def test_motion_blur_touches_a_few_sections_along_a_line():
    image = np.zeros((1, 8, 33, 33), np.float32)
    image[0, :, 16, 16] = 1  # a point per section: blurred, it becomes the kernel's line
    out = _run(_only("motion_blur_prob"), {"image": image})["image"]
    moved = [z for z in range(8) if not np.array_equal(out[0, z], image[0, z])]
    assert 1 <= len(moved) <= 2
    for z in moved:
        streak = out[0, z] > 0
        assert 5 <= streak.sum() <= 2 * 11 and out[0, z].sum() == pytest.approx(1, abs=1e-5)


def test_seed_makes_output_a_pure_function():
    sample = _sample()
    aug = build_augmentation(_only(None))
    outs = []
    for seed in (7, 7, 8):
        aug.set_random_state(seed=seed)
        outs.append(aug(sample))
    for k in sample:
        np.testing.assert_array_equal(outs[0][k], outs[1][k])
    assert not np.array_equal(outs[0]["image"], outs[2]["image"])


@pytest.mark.parametrize("dims", [2, 3])
def test_everything_on_keeps_shapes_and_dtypes(dims):
    sample = _sample((12, 32, 32)[3 - dims:])
    sample["label"] = (sample["label"] % 7).astype(np.int32)
    sample["mask"] = _mask_of(sample["label"])
    for seed in range(2):
        out = _run(_only(None), sample, seed, dims)
        assert set(out) == set(sample)
        for k in sample:
            assert out[k].shape == sample[k].shape and out[k].dtype == sample[k].dtype
            assert isinstance(out[k], np.ndarray) and out[k].flags.c_contiguous
        np.testing.assert_array_equal(out["mask"], _mask_of(out["label"]))


def test_2d_skips_z_transforms_and_label_is_optional():
    names = [type(t).__name__ for t in build_augmentation(_only(None), spatial_dims=2).transforms]
    assert "RandMissingSectiond" not in names and "RandMisalignmentd" not in names
    out = _run(_only(None), {"image": np.random.rand(1, 16, 16).astype(np.float32)}, dims=2)
    assert set(out) == {"image"} and out["image"].shape == (1, 16, 16)


def test_mismatched_shapes_are_a_data_error():
    aug = build_augmentation(AugmentConfig())
    with pytest.raises(DataError, match="must match"):
        aug({"image": np.zeros((1, 4, 8, 8), np.float32), "label": np.zeros((1, 4, 8, 9), np.uint8)})
    with pytest.raises(DataError, match="3 spatial dims"):
        aug({"image": np.zeros((4, 8, 8), np.float32)})


def test_labels_come_back_renumbered_when_ids_need_not_be_restored():
    from pytc.config import AugmentConfig
    from pytc.data.augment import build_augmentation

    label = np.zeros((1, 8, 16, 16), np.uint64)
    label[0, :, :8] = 7
    label[0, :, 8:] = 2**40
    sample = {"image": np.random.default_rng(0).random((1, 8, 16, 16), dtype=np.float32), "label": label}
    cfg = AugmentConfig(flip_prob=1.0)
    kept = build_augmentation(cfg)
    kept.set_random_state(seed=3)
    fast = build_augmentation(cfg, restore_ids=False)
    fast.set_random_state(seed=3)
    a, b = kept(dict(sample))["label"], fast(dict(sample))["label"]
    assert a.dtype == np.uint64 and b.dtype == np.int32
    assert set(np.unique(a)) == {7, 2**40} and set(np.unique(b)) == {1, 2}
    assert np.array_equal(a == 7, b == b[a == 7][0]) and np.array_equal(a == 2**40, b == b[a == 2**40][0])
