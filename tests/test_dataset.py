"""Patch sampling: determinism, resume/worker/process equivalence, foreground, caching, validation data, errors."""

from __future__ import annotations

import itertools
import pickle
import re
import warnings

import h5py
import numpy as np
import pytest
import torch

from pytc.config import config_from_dict
from pytc.data.dataset import PatchDataset, StepSampler, build_train_loader, load_val_volumes
from pytc.data.volumes import VolumeStats, normalization_stats, normalize_image, volume_stats
from pytc.errors import ConfigError, DataError

SHAPE = (24, 32, 32)
PATCH = [8, 16, 16]
TARGETS = [{"name": "binary"}, {"name": "affinity", "offsets": [[0, 0, 1]]}]  # 2 channels
NO_AUG = {"enabled": False}


def _label(shape=SHAPE) -> np.ndarray:
    """Two small objects in a mostly empty volume, so random patches often miss them."""
    label = np.zeros(shape, np.uint32)
    label[3:6, 2:6, 3:7] = 5
    label[15:19, 24:28, 22:27] = 9
    return label


def _write(path, **arrays) -> dict[str, str]:
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            f.create_dataset(key, data=value, chunks=True)
    return {key: f"{path}:{key}" for key in arrays}


@pytest.fixture
def vol(tmp_path):
    """Addresses of a uint8 image, its label and a mask (half the volume valid)."""
    image = np.random.default_rng(0).integers(0, 256, SHAPE, dtype=np.uint8)
    mask = np.zeros(SHAPE, np.uint8)
    mask[:, :, :20] = 1
    return _write(tmp_path / "vol.h5", image=image, label=_label(), mask=mask)


def _cfg(vol, data=None, **sections):
    data = {"train_image": vol["image"], "train_label": vol["label"], "patch_size": PATCH, "targets": TARGETS,
            "num_workers": 0, "batch_size": 2, **(data or {})}
    return config_from_dict({"data": data, "system": {"seed": 3}, **sections})


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _batches(loader, n: int) -> list[dict]:
    return list(itertools.islice(iter(loader), n))


# ------------------------------------------------------------------------------ normalisation --
def test_normalize_modes():
    u8 = np.array([0, 51, 255], np.uint8)
    np.testing.assert_array_equal(normalize_image(u8, "unit"), np.float32([0, 0.2, 1]))
    assert normalize_image(np.array([0, 65535], np.uint16), "unit").tolist() == [0.0, 1.0]
    assert normalize_image(np.array([-128, 127], np.int8), "unit").tolist() == [0.0, 1.0]
    f = np.array([-1.5, 3.0], np.float32)
    out = normalize_image(f, "unit")
    assert out.tolist() == [-1.5, 3.0] and out is not f  # floats pass through, as a copy
    # Already cast to float (e.g. by a reader): the stored dtype decides the scale.
    cast = u8.astype(np.float32)
    np.testing.assert_array_equal(normalize_image(cast, "unit", source_dtype=np.uint8), np.float32([0, 0.2, 1]))
    assert normalize_image(u8, "none").dtype == np.float32 and normalize_image(u8, "none").tolist() == [0, 51, 255]
    z = normalize_image(u8, "zscore", stats=normalization_stats(u8, "zscore"))
    assert abs(z.mean()) < 1e-6 and abs(z.std() - 1) < 1e-6
    with pytest.raises(ValueError, match="needs the volume's statistics"):  # never a patch's own statistics
        normalize_image(u8, "zscore")
    assert normalization_stats(u8, "unit") is None
    assert normalize_image(u8, "zscore", stats=VolumeStats(51.0, 2.0)).tolist() == [-25.5, 0.0, 102.0]
    constant = np.full(4, 7, np.uint8)
    assert normalize_image(constant, "zscore", stats=volume_stats(constant)).tolist() == [0.0] * 4  # no NaN
    with pytest.raises(ValueError, match="unknown normalisation"):
        normalize_image(u8, "minmax")


def test_volume_stats_chunkwise_matches_numpy():
    x = np.random.default_rng(1).normal(100, 20, (9, 13, 17)).astype(np.float32)
    mean, std = volume_stats(x, block_voxels=50)  # many uneven blocks
    assert mean == pytest.approx(x.astype(np.float64).mean(), rel=1e-9)
    assert std == pytest.approx(x.astype(np.float64).std(), rel=1e-9)


# ------------------------------------------------------------------------------- determinism --
def test_sample_is_a_pure_function_of_seed_and_index(vol):
    cfg = _cfg(vol, {"train_mask": vol["mask"]})  # default augmentation on
    a, b = PatchDataset(cfg), PatchDataset(cfg)
    s = a[7]
    assert set(s) == {"image", "target", "mask"}
    assert s["image"].shape == (1, *PATCH) and s["image"].dtype == torch.float32
    assert s["target"].shape == (2, *PATCH) and s["target"].dtype == torch.float32
    assert s["mask"].shape == (1, *PATCH) and s["mask"].dtype == torch.float32
    assert _same(s, a[7]) and _same(s, b[7])  # repeated, and from a freshly built dataset
    assert not torch.equal(s["image"], a[8]["image"])
    other_seed = PatchDataset(_cfg(vol, {"train_mask": vol["mask"]}, system={"seed": 4}))
    assert not torch.equal(s["image"], other_seed[7]["image"])
    assert set(PatchDataset(_cfg(vol))[0]) == {"image", "target"}  # no mask configured → no key


def test_loader_resume_matches_fresh_run(vol):
    cfg = _cfg(vol, {"augment": NO_AUG}, training={"accumulate_grad_batches": 2})
    ds = PatchDataset(cfg)
    fresh = _batches(build_train_loader(cfg, dataset=ds), 8)  # optimizer steps 0-3
    resumed = _batches(build_train_loader(cfg, start_step=2, dataset=ds), 4)  # steps 2-3
    assert all(_same(x, y) for x, y in zip(fresh[4:], resumed))
    assert fresh[0]["image"].shape == (2, 1, *PATCH)


def test_workers_do_not_change_batches(vol):
    # Lazy mode: each worker must open its own HDF5 handle.
    cfg = _cfg(vol, {"augment": NO_AUG, "cache_budget_gb": 0, "train_mask": vol["mask"]})
    serial = _batches(build_train_loader(cfg), 3)
    cfg.data.num_workers = 2
    parallel = _batches(build_train_loader(cfg), 3)
    assert all(_same(x, y) for x, y in zip(serial, parallel))


def test_processes_get_disjoint_indices(vol):
    ranks = [StepSampler(3, start_micro_batch=0, process_index=p, num_processes=2) for p in (0, 1)]
    seen = [list(itertools.islice(iter(s), 3 * 10)) for s in ranks]
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(60))  # together: every index once
    assert list(itertools.islice(iter(StepSampler(3, 4, 1, 2)), 3)) == [27, 28, 29]  # (4 * 2 + 1) * 3 + j
    cfg = _cfg(vol, {"augment": NO_AUG})
    ds = PatchDataset(cfg)
    b0, b1 = (next(iter(build_train_loader(cfg, process_index=p, num_processes=2, dataset=ds))) for p in (0, 1))
    assert not torch.equal(b0["image"], b1["image"])
    with pytest.raises(ValueError):
        StepSampler(2, 0, process_index=2, num_processes=2)


# -------------------------------------------------------------------------------- sampling --
@pytest.mark.parametrize("fraction", [1.0, 0.0])
def test_foreground_fraction(vol, fraction):
    ds = PatchDataset(_cfg(vol, {"augment": NO_AUG, "foreground_fraction": fraction}))
    has_fg = [bool(ds[i]["target"][0].any()) for i in range(40)]
    if fraction == 1.0:
        assert all(has_fg)
    else:  # the objects are small: plain random patches often miss them (so the test above means something)
        assert not all(has_fg)


def test_lazy_reads_match_cached(vol):
    cached = PatchDataset(_cfg(vol, {"train_mask": vol["mask"]}))
    lazy = PatchDataset(_cfg(vol, {"train_mask": vol["mask"], "cache_budget_gb": 0}))
    assert all(src.cached for src in cached.volumes.sources)
    assert not any(src.cached for src in lazy.volumes.sources)
    assert all(_same(cached[i], lazy[i]) for i in range(6))
    # spawn/forkserver workers get a pickled dataset: lazy handles reopen by address there.
    assert _same(pickle.loads(pickle.dumps(lazy))[2], cached[2])
    off = PatchDataset(_cfg(vol, {"use_cache": False}))
    assert not any(src.cached for src in off.volumes.sources)


def test_cache_budget_is_shared_in_order(vol):
    # image (uint8) 24 KiB fits a 30 KiB budget; the uint32 label (96 KiB) then does not.
    ds = PatchDataset(_cfg(vol, {"cache_budget_gb": 30 * 1024 / 2**30}))
    region = ds.volumes.regions[0]
    assert region.image.cached and not region.label.cached


def test_val_z_range_is_never_sampled(vol):
    z0, z1 = 14, 20  # holds the second object
    cfg = _cfg(vol, {"augment": NO_AUG, "val_z_range": [z0, z1], "patch_size": [4, 16, 16]})
    ds = PatchDataset(cfg)
    assert [(r.z0, r.z1) for r in ds.volumes.regions] == [(0, 14), (20, 24)]
    for i in range(200):
        r, start, _ = ds.position(i)
        z = start[0]
        assert z + 4 <= z0 or z >= z1, f"sample {i} starts at z {z}"
    (val,) = load_val_volumes(cfg)
    with h5py.File(vol["image"].split(":")[0]) as f:
        expected = f["image"][z0:z1]  # as stored: the block predictor normalises it, as pytc infer does
        label = f["label"][z0:z1]
    assert val["image"].shape == (1, 6, *SHAPE[1:]) and val["label"].max() == 9 and val["stats"] is None
    np.testing.assert_array_equal(val["image"][0], expected)
    np.testing.assert_array_equal(val["label"], label)
    assert val["target"].shape == (2, 6, *SHAPE[1:]) and "mask" not in val


def test_val_volumes_from_files_and_centre_crop(vol, tmp_path):
    cfg = _cfg(vol, {"val_image": vol["image"], "val_label": vol["label"], "normalize": "zscore"})
    (val,) = load_val_volumes(cfg)
    assert val["image"].shape == (1, *SHAPE) and val["target"].shape == (2, *SHAPE)
    with h5py.File(vol["image"].split(":")[0]) as f:
        assert val["stats"] == volume_stats(f["image"][...])  # the whole volume's statistics
    assert abs(float(normalize_image(val["image"], "zscore", stats=val["stats"]).mean())) < 1e-4
    small = _cfg(vol, {"val_image": vol["image"], "val_label": vol["label"], "cache_budget_gb": 0})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (crop,) = load_val_volumes(small)
    assert any("validating on its centre (8, 16, 16)" in str(w.message) for w in caught)
    assert crop["image"].shape == (1, *PATCH)  # bounded, but never below one patch
    assert load_val_volumes(_cfg(vol)) == []


def test_two_dimensional_patches(vol, tmp_path):
    ds = PatchDataset(_cfg(vol, {"patch_size": [16, 16], "targets": [{"name": "binary"}]}))
    s = ds[0]
    assert s["image"].shape == (1, 16, 16) and s["target"].shape == (1, 16, 16)
    flat = _write(tmp_path / "flat.h5", image=np.arange(32 * 32, dtype=np.uint16).reshape(32, 32),
                  label=_label()[4])
    cfg = config_from_dict({"data": {
        "train_image": flat["image"], "train_label": flat["label"], "patch_size": [16, 16],
        "targets": [{"name": "binary"}], "val_image": flat["image"], "val_label": flat["label"]}})
    assert PatchDataset(cfg)[1]["image"].shape == (1, 16, 16)
    (val,) = load_val_volumes(cfg)
    assert val["image"].shape == (1, 1, 32, 32) and val["target"].shape == (1, 1, 32, 32)


def test_several_volumes_and_channels(vol, tmp_path):
    two = _write(tmp_path / "two.h5", image=np.random.default_rng(2).integers(0, 256, (2, *SHAPE), dtype=np.uint8),
                 label=_label())
    cfg = config_from_dict({"data": {"train_image": [two["image"], two["image"]], "train_label": [two["label"]] * 2,
                                     "patch_size": PATCH, "augment": NO_AUG}, "model": {"in_channels": 2}})
    ds = PatchDataset(cfg)
    assert ds[0]["image"].shape == (2, *PATCH)
    assert {ds.position(i)[0] for i in range(20)} == {0, 1}  # both volumes are sampled
    with_aug = cfg.model_copy(update={"data": cfg.data.model_copy(update={"augment": type(cfg.data.augment)()})})
    with pytest.raises(ConfigError, match="in_channels=2 set data.augment.enabled=false"):
        PatchDataset(with_aug, ds.volumes)  # refused before training, not at the first sample


# ---------------------------------------------------------------------------------- errors --
def _error(vol, tmp_path, case):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, SHAPE, dtype=np.uint8)
    if case == "count":
        return {"train_label": [vol["label"]] * 2}, "data.train_image has 1 volume but data.train_label has 2"
    if case == "mask count":
        return {"train_mask": [vol["mask"]] * 2}, "data.train_mask has 2; give one mask per image"
    if case == "shape":
        other = _write(tmp_path / "b.h5", label=_label((24, 32, 30)))["label"]
        return {"train_label": other}, (
            rf"image {re.escape(vol['image'])} has shape \(24, 32, 32\) "
            rf"but label {re.escape(other)} has shape \(24, 32, 30\)"
        )
    if case == "mask shape":
        other = _write(tmp_path / "b.h5", mask=np.ones((24, 30, 32), np.uint8))["mask"]
        return {"train_mask": other}, r"mask .* has shape \(24, 30, 32\) but label"
    if case == "patch":
        return {"patch_size": [32, 16, 16]}, (
            r"\[32, 16, 16\] is larger than .*\(24, 32, 32\)\); set data.patch_size to at most \[24, 16, 16\]"
        )
    if case == "negative":
        lab = _write(tmp_path / "b.h5", label=_label().astype(np.int16) - 1)["label"]
        return {"train_label": lab}, r"negative values \(min -1\)"
    if case == "float":
        lab = _write(tmp_path / "b.h5", label=_label().astype(np.float32) * 0.5)["label"]
        return {"train_label": lab}, "float32 with non-integral values .*integer ids"
    if case == "channels":
        img4 = _write(tmp_path / "b.h5", image=np.stack([img, img, img]))["image"]
        return {"train_image": img4}, "3 channels but model.in_channels is 1; set model.in_channels=3"
    if case == "z range":
        return {"val_z_range": [20, 30]}, r"val_z_range \[20, 30\] is not a range"
    if case == "z range patch":
        return {"val_z_range": [4, 20]}, r"leaves z ranges \[0, 4\) and \[20, 24\) .* neither is as deep as data.patch"
    if case == "no image":
        return {"train_image": None}, "data.train_image is not set"
    raise AssertionError(case)


ERRORS = ["count", "mask count", "shape", "mask shape", "patch", "negative", "float", "channels", "z range",
          "z range patch", "no image"]


@pytest.mark.parametrize("case", ERRORS)
def test_data_errors(vol, tmp_path, case):
    data, message = _error(vol, tmp_path, case)
    with pytest.raises(DataError, match=message) as err:
        PatchDataset(_cfg(vol, data))
    assert "\n" not in str(err.value)


def test_channel_counts_are_singular_for_one(vol, tmp_path):
    img = _write(tmp_path / "b.h5", image=np.zeros((1, *SHAPE), np.uint8))["image"]
    cfg = _cfg(vol, {"train_image": img, "augment": NO_AUG}, model={"in_channels": 2})
    with pytest.raises(DataError, match=r"has 1 channel \(shape \(1, 24, 32, 32\)\) but model.in_channels is 2$"):
        PatchDataset(cfg)


def test_val_errors(vol):
    with pytest.raises(DataError, match="data.val_image has 2 volumes but data.val_label has 1"):
        load_val_volumes(_cfg(vol, {"val_image": [vol["image"]] * 2, "val_label": vol["label"]}))
    with pytest.raises(DataError, match="both set"):
        load_val_volumes(_cfg(vol, {"val_image": vol["image"], "val_label": vol["label"], "val_z_range": [0, 4]}))


def test_val_image_and_val_label_go_together(vol):
    """Only one of them set used to mean silently no validation; now the config is refused."""
    with pytest.raises(ConfigError, match=r"data: val_image is set but val_label is not; give both validation "
                                          r"volumes, or set data.val_image=null as well"):
        _cfg(vol, {"val_image": vol["image"]})
    with pytest.raises(ConfigError, match="val_label is set but val_image is not; .* set data.val_label=null"):
        _cfg(vol, {"val_label": vol["label"]})
    assert _cfg(vol, {"val_image": None, "val_label": None}).data.val_image is None


@pytest.mark.parametrize("key, hint", [
    ("val_image", " or set data.val_image=null data.val_label=null to train without these validation volumes"),
    ("val_label", " or set data.val_image=null data.val_label=null to train without these validation volumes"),
    ("train_image", ""),
    ("train_mask", " or set data.train_mask=null to sample everywhere"),
])
def test_a_missing_volume_names_its_config_key(vol, tmp_path, key, hint):
    from pytc.errors import VolumeError

    data = {"val_image": vol["image"], "val_label": vol["label"], key: f"{tmp_path / 'gone.zarr'}"}
    cfg = _cfg(vol, data)
    with pytest.raises(VolumeError) as err:
        (load_val_volumes if key.startswith("val") else PatchDataset)(cfg)
    assert str(err.value) == f"data.{key}: {tmp_path / 'gone.zarr'} does not exist; check the path{hint}"
    # In a list, the message says which entry.
    many = _cfg(vol, {"train_image": [vol["image"], f"{tmp_path / 'gone.h5'}:raw"], "train_label": [vol["label"]] * 2})
    with pytest.raises(VolumeError, match=r"^data.train_image\[1\]: .*gone.h5 does not exist; check the path$"):
        PatchDataset(many)


def test_integral_float_labels_are_accepted_and_background_only_warns(vol, tmp_path):
    files = _write(tmp_path / "b.h5", f=_label().astype(np.float32), empty=np.zeros(SHAPE, np.uint8))
    assert PatchDataset(_cfg(vol, {"train_label": files["f"], "augment": NO_AUG}))[0]["target"].shape == (2, *PATCH)
    with pytest.warns(UserWarning, match="no labelled voxels"):
        ds = PatchDataset(_cfg(vol, {"train_label": files["empty"], "foreground_fraction": 1.0, "augment": NO_AUG}))
    assert not ds[0]["target"].any()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PatchDataset(_cfg(vol, {"augment": NO_AUG}))  # labelled data: no warning
