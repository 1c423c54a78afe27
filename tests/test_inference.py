"""Inference: exact blocked prediction, TTA (affinities included), prediction stores, resume,
two processes, the `pytc infer` command — plus the io support it needs (attributes, resumable writers)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from typer.testing import CliRunner

from pytc.config import config_from_dict, dump_config, load_config
from pytc.engine.checkpoint import load_checkpoint_for_inference, save_checkpoint
from pytc.errors import CheckpointError, ConfigError, DataError, OutputExistsError, VolumeError
from pytc.inference import Aug, BlockPlan, channel_routes, infer, output_chunks, predict_volume, record, window_starts
from pytc.io import create_volume, open_volume
from pytc.models import build_model

# A 3-level U-Net with 4..16 features on 8×16×16 windows: a few ms per window on one core.
TINY = ["data.patch_size=[8,16,16]", "model.architecture=monai_unet", "model.filters=[4,8,16]",
        "system.num_cpus=1", "system.num_gpus=0", "inference.sw_batch_size=1", "inference.block_size=[8,16,16]"]
AFFINITY = ["data.targets=[{name: binary}, {name: affinity}]", "model.out_channels=4"]
SHAPE = (13, 37, 29)  # odd sizes: clipped blocks and a moved-back last window on every axis


def tiny_cfg(*overrides):
    return load_config(None, [*TINY, *overrides])


def tiny_model(cfg, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(cfg.model).eval()


def make_checkpoint(root: Path, *overrides) -> Path:
    cfg = tiny_cfg(*overrides)
    return save_checkpoint(root / "checkpoints", 1, weights=tiny_model(cfg).state_dict(),
                           config_yaml=dump_config(cfg), training_state={}, meta={})


def em_like(shape=SHAPE, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    smooth = F.avg_pool3d(torch.from_numpy(rng.random((1, 1, *shape), np.float32)), 3, 1, 1)[0, 0].numpy()
    return (smooth * 255).astype(np.uint8)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # One thread: on a busy 2-core machine two OpenMP threads per process run several times slower.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("infer")
    image = em_like()
    spec = f"{root}/raw.h5:raw"
    with create_volume(spec, image.shape, image.dtype, voxel_size=(30, 4, 4)) as out:
        out[...] = image
    return {"root": root, "image": image, "input": spec, "ckpt": make_checkpoint(root / "run"),
            "aff_ckpt": make_checkpoint(root / "aff", *AFFINITY)}


# ----------------------------------------------------------------------------------- io support --
def test_attributes_round_trip_in_zarr_and_hdf5(tmp_path):
    attrs = {"pytc_channels": ["binary", "affinity"], "pytc_offsets": [[1, 0, 0], [0, 1, 0]], "pytc_scale": 255,
             "pytc_config": "data:\n  normalize: unit\n", "voxel_size": [30.0, 4.0, 4.0], "flag": True}
    for spec in (f"{tmp_path}/p.zarr", f"{tmp_path}/q.zarr/pred", f"{tmp_path}/p.h5:pred"):
        with create_volume(spec, (2, 3, 4, 4), "uint8", voxel_size=(30, 4, 4)) as out:
            out.set_attrs(attrs)
            out.set_attrs({"extra": {"a": 1}})
            assert out.attrs["pytc_offsets"] == [[1, 0, 0], [0, 1, 0]]
        with open_volume(spec) as vol:
            got = vol.attrs
            assert {k: got[k] for k in attrs} == attrs, spec
            # Zarr keeps any JSON value; HDF5 keeps dicts/None as their JSON text.
            assert got["extra"] == ({"a": 1} if ".zarr" in spec else '{"a": 1}')
    with create_volume(f"{tmp_path}/s.tif", (2, 4, 4), "uint8") as out:
        with pytest.raises(VolumeError, match="no attributes"):
            out.set_attrs({"a": 1})
    with open_volume(f"{tmp_path}/s.tif") as vol:
        assert vol.attrs == {}


@pytest.mark.parametrize("spec", ["r.zarr", "r.h5:pred"])
def test_resumable_writer_keeps_reopens_and_commits(tmp_path, spec):
    spec = f"{tmp_path}/{spec}"
    layout = dict(shape=(1, 4, 8, 8), dtype="uint8", chunks=(1, 4, 4, 4), resumable=True)
    with pytest.raises(RuntimeError):
        with create_volume(spec, **layout) as out:
            out[0, :, :4] = 7
            (out.record_dir / "note").write_text("block 0")
            raise RuntimeError("interrupted")
    partial = out.partial_path
    assert partial.name.endswith(".pytc-partial") and partial.exists()
    assert not Path(spec.split(":")[0]).exists()  # nothing under the final name
    again = create_volume(spec, **layout)
    assert again.resumed and (again.record_dir / "note").read_text() == "block 0"
    assert again[0, 0, :, 0].tolist() == [7] * 4 + [0] * 4
    again.commit()
    assert not partial.exists() and not any(p.name.endswith(".pytc-record") for p in tmp_path.iterdir())
    with open_volume(spec) as vol:
        assert vol[0, 0, :, 0].tolist() == [7] * 4 + [0] * 4
    other = create_volume(spec, **{**layout, "dtype": "float32"}, force=True)  # other layout: started over
    assert not other.resumed
    other.abort()
    assert not other.partial_path.exists()


# -------------------------------------------------------------------------------- window geometry --
def test_window_starts_are_monais():
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    for n in (5, 16, 17, 29, 64, 100):
        for w in (4, 8, 16):
            for overlap in (0.0, 0.25, 0.5, 0.9):
                size, roi = (max(n, w),), (w,)
                expected = [s[0].start for s in dense_patch_slices(size, roi, _get_scan_interval(size, roi, 1, (overlap,)))]
                assert window_starts(n, w, overlap) == expected, (n, w, overlap)


@pytest.mark.parametrize("shape, window, block", [((13, 37, 29), (8, 16, 16), (5, 7, 9)),  # blocks < window
                                                   ((13, 37, 29), (8, 16, 16), (8, 16, 16)),
                                                   ((5, 12, 29), (8, 16, 16), (2, 5, 8))])  # padded axes
def test_every_window_has_one_owner_and_reaches_its_blocks_through_carries(shape, window, block):
    plan = BlockPlan(shape, window, block, 0.25)
    assert len(plan) == math.prod(-(-n // b) for n, b in zip(shape, block))
    owned = [k for i in range(len(plan)) for k in plan.owned(i)]
    assert sorted(owned) == sorted(set(owned)) and len(owned) == plan.count_windows()
    grid = [window_starts(max(n, w), w, 0.25) for n, w in zip(shape, window)]
    assert plan.count_windows() == math.prod(len(g) for g in grid)
    for i in range(len(plan)):
        core, extent = plan.core(i), plan.extent(i)
        for k in plan.owned(i):  # a window starts in its owner's core and stays in its extent
            span = plan.span(k)
            assert all(c.start <= max(s.start, 0) < c.stop for s, c in zip(span, core))
            assert all(e.start <= s.start and s.stop <= e.stop for s, e in zip(span, extent))
        touching = {j for j in range(len(plan)) for k in plan.owned(j)
                    if all(s.start < c.stop and s.stop > c.start for s, c in zip(plan.span(k), core))}
        assert plan.sources(i) == sorted(touching)
        for j in plan.sources(i):
            assert j == i or i in plan.receivers(j)
        for r in plan.receivers(i):  # later blocks only, and each one counts i among its sources
            assert r > i and i in plan.sources(r)


def test_output_chunks_divide_the_block():
    assert output_chunks((128, 512, 512), (1000, 1000, 1000)) == (64, 64, 64)
    assert output_chunks((100, 37, 48), (1000, 1000, 10)) == (50, 37, 10)  # 37 is prime: one chunk per block


# ------------------------------------------------------------------------------- predict_volume --
class _Counting(torch.nn.Module):
    """The wrapped network, counting the windows it evaluates."""

    def __init__(self, model):
        super().__init__()
        self.model, self.windows = model, 0

    def forward(self, x):
        self.windows += x.shape[0]
        return self.model(x)


@pytest.mark.parametrize("blending", ["gaussian", "constant"])
def test_blocked_prediction_runs_each_window_once_and_equals_the_whole_volume(data, blending):
    # Blocks add the same weighted window predictions as a whole-volume run, grouped by block: the
    # sums differ only in rounding.
    cfg = tiny_cfg(f"inference.blending={blending}", "inference.block_size=[64,64,64]")
    model = _Counting(tiny_model(cfg))
    whole = predict_volume(model, data["image"], cfg, progress=False)
    n_windows = model.windows
    assert n_windows == BlockPlan(SHAPE, (8, 16, 16), (64, 64, 64), 0.25).count_windows() == 2 * 3 * 3
    for block in ("[8,16,16]", "[5,7,9]", "[13,37,10]"):  # blocks smaller than the window too
        cfg.inference.block_size = json.loads(block)
        model.windows = 0
        blocked = predict_volume(model, data["image"], cfg, progress=False)
        np.testing.assert_allclose(blocked, whole, rtol=0, atol=1e-6, err_msg=block)
        assert model.windows == n_windows, block  # no window runs twice


def test_blocked_prediction_with_window_batches_is_within_1e6(data):
    # Windows batched differently (whole volume vs block) may take other kernels: not bitwise.
    cfg = tiny_cfg("inference.sw_batch_size=3", "inference.overlap=0.5", "inference.block_size=[64,64,64]")
    model = tiny_model(cfg)
    whole = predict_volume(model, data["image"], cfg, progress=False)
    cfg.inference.block_size = [5, 7, 9]
    np.testing.assert_allclose(predict_volume(model, data["image"], cfg, progress=False), whole, rtol=0, atol=1e-6)


@pytest.mark.parametrize("budget", [None, 0])  # carries in memory / every carry through a file
def test_blocks_predicted_apart_equal_one_pass_bit_for_bit(data, monkeypatch, budget):
    # Blocks whose sources ran in another call (another process, an interrupted run) recompute
    # the missing partial sums in the sources' own batches: the same bits as carried ones.
    import pytc.inference as inference

    cfg = tiny_cfg("inference.sw_batch_size=2", "inference.block_size=[5,7,9]")
    model = tiny_model(cfg)
    if budget is not None:
        monkeypatch.setattr(inference.BlockPredictor, "carry_budget", property(lambda self: budget))
    engine = inference.BlockPredictor(model, data["image"], cfg, torch.device("cpu"), stats=None)
    one_pass = np.zeros(engine.out_shape, np.float32)
    inference.run_blocks(engine, range(len(engine.plan)), one_pass, progress=False)
    assert engine.windows_run == engine.plan.count_windows()
    apart = np.zeros_like(one_pass)
    n = len(engine.plan)
    for share in (range(0, n, 3), range(1, n, 3), range(2, n, 3)):  # no block's neighbour in its share
        inference.run_blocks(engine, share, apart, progress=False)
    np.testing.assert_array_equal(apart, one_pass)


def test_matches_monai_sliding_window_with_sigmoid_per_window(data):
    from monai.inferers import sliding_window_inference

    cfg = tiny_cfg("inference.block_size=[64,64,64]", "inference.overlap=0.5")
    model = tiny_model(cfg)
    ours = predict_volume(model, data["image"], cfg, progress=False)
    x = torch.from_numpy(data["image"].astype(np.float32) / 255)[None, None]
    with torch.no_grad():
        ref = sliding_window_inference(x, (8, 16, 16), 1, lambda w: torch.sigmoid(model(w)), overlap=0.5,
                                       mode="gaussian")[0].numpy()
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-6)
    assert ours.shape == (1, *SHAPE) and ours.dtype == np.float32


def test_zscore_statistics_come_from_the_whole_volume(data):
    from pytc.data.volumes import volume_stats

    cfg = tiny_cfg("data.normalize=zscore", "inference.block_size=[5,7,9]")
    model = tiny_model(cfg)
    blocked = predict_volume(model, data["image"], cfg, progress=False)
    mean, std = volume_stats(data["image"])
    cfg_none = tiny_cfg("data.normalize=none", "inference.block_size=[64,64,64]")
    pre = ((data["image"] - mean) / std).astype(np.float32)
    np.testing.assert_allclose(blocked, predict_volume(model, pre, cfg_none, progress=False), atol=1e-6)


class _PerVoxel(torch.nn.Module):
    """Channel c = (c + 1) * x - 1: every window agrees, so blending leaves the values alone."""

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("scale", torch.arange(1, channels + 1, dtype=torch.float32).view(1, -1, 1, 1, 1))

    def forward(self, x):
        return self.scale * x - 1


def test_activation_per_channel_kind_and_uint8_scaling(data):
    targets = "data.targets=[{name: binary}, {name: distance}, {name: contour}]"
    cfg = tiny_cfg(targets, "model.out_channels=3", "data.normalize=none", "inference.blending=constant")
    image = np.random.default_rng(1).random((9, 20, 20), np.float32)
    pred = predict_volume(_PerVoxel(3), image, cfg, progress=False)
    np.testing.assert_allclose(pred[0], 1 / (1 + np.exp(-(image - 1))), atol=1e-6)  # sigmoid
    np.testing.assert_allclose(pred[1], 2 * image - 1, atol=1e-6)  # distance: no activation
    np.testing.assert_allclose(pred[2], 1 / (1 + np.exp(-(3 * image - 1))), atol=1e-6)
    quantised = predict_volume(_PerVoxel(3), image, cfg, output=np.zeros((3, 9, 20, 20), np.uint8), progress=False)
    np.testing.assert_array_equal(quantised, np.rint(np.clip(pred, 0, 1) * 255).astype(np.uint8))
    signed = tiny_cfg("data.targets=[{name: distance, distance_mode: signed}]", "data.normalize=none")
    with pytest.raises(ConfigError, match="signed distances"):
        predict_volume(_PerVoxel(1), image, signed, output=np.zeros((1, 9, 20, 20), np.uint8), progress=False)


def test_a_volume_thinner_than_the_window_is_padded(data):
    cfg = tiny_cfg("inference.block_size=[64,64,64]")
    model = tiny_model(cfg)
    thin = data["image"][:5, :12]  # z 5 < 8 and y 12 < 16: replicate-padded, then cropped
    whole = predict_volume(model, thin, cfg, progress=False)
    assert whole.shape == (1, 5, 12, 29)
    cfg.inference.block_size = [2, 5, 8]
    np.testing.assert_allclose(predict_volume(model, thin, cfg, progress=False), whole, rtol=0, atol=1e-6)


def test_2d_model_predicts_each_section(data):
    cfg = tiny_cfg("data.patch_size=[16,16]", "inference.block_size=[4,16,16]")
    model = tiny_model(cfg)
    stack = predict_volume(model, data["image"][:6], cfg, progress=False)
    assert stack.shape == (1, 6, 37, 29)
    single = predict_volume(model, data["image"][3], cfg, progress=False)  # a (Y, X) image
    assert single.shape == (1, 1, 37, 29)
    np.testing.assert_allclose(stack[:, 3:4], single, atol=1e-6)


def test_inputs_that_do_not_fit_the_model_are_one_line_errors(data):
    cfg = tiny_cfg()
    model = tiny_model(cfg)
    with pytest.raises(DataError, match=r"a 2D image, but the model is 3D"):
        predict_volume(model, data["image"][0], cfg, progress=False)
    with pytest.raises(DataError, match=r"takes 1 channel; give \(Z, Y, X\)"):
        predict_volume(model, np.stack([data["image"]] * 2), cfg, progress=False)
    with pytest.raises(DataError, match="output has shape"):
        predict_volume(model, data["image"], cfg, output=np.zeros((2, *SHAPE), np.float32), progress=False)
    with pytest.raises(ConfigError, match="inference.window_size"):
        predict_volume(model, data["image"], tiny_cfg("inference.window_size=[16,16]"), progress=False)


# ------------------------------------------------------------------------------------------- TTA --
OFFSETS = [[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 3, 0], [0, 0, 3], [2, 2, 0], [2, -2, 0], [2, 0, 2], [2, 0, -2]]
TTA_TARGETS = f"data.targets=[{{name: binary}}, {{name: affinity, offsets: {OFFSETS}}}, {{name: distance}}]"


def _shifted(x, o):
    """``x[v - o]`` with edge replication (5D)."""
    p = max(abs(v) for v in o)
    padded = F.pad(x, (p,) * 6, mode="replicate")
    z, y, xx = x.shape[2:]
    return padded[:, :, p - o[0]: p - o[0] + z, p - o[1]: p - o[1] + y, p - o[2]: p - o[2] + xx]


class _Equivariant(torch.nn.Module):
    """Flip/rot90-equivariant by construction: a conv whose kernel is symmetric under every flip
    and the y-x swap (binary), ``4 - 8|x(v) - x(v - o)|`` (symmetric in v, v - o: affinities), and
    the input itself (distance)."""

    def __init__(self, offsets):
        super().__init__()
        g = torch.arange(3.0) - 1
        dz, dy, dx = torch.meshgrid(g, g, g, indexing="ij")
        k = 1 / (1 + dz.abs() + 0.5 * (dy.abs() + dx.abs()) + 0.25 * dy.abs() * dx.abs())
        self.register_buffer("kernel", 3 * (k - k.mean())[None, None])
        self.offsets = offsets

    def forward(self, x):
        affs = [4 - 8 * (x - _shifted(x, o)).abs() for o in self.offsets]
        return torch.cat([F.conv3d(x, self.kernel, padding=1), *affs, x], 1)


def test_tta_on_an_equivariant_model_changes_nothing(data):
    cfg = tiny_cfg(TTA_TARGETS, f"model.out_channels={len(OFFSETS) + 2}", "inference.window_size=[8,12,16]",
                   "inference.block_size=[64,64,64]")
    model, image = _Equivariant(OFFSETS), data["image"][:11, :25, :20]
    plain = predict_volume(model, image, cfg, progress=False)
    cfg.inference.tta_flips = [[0], [1], [2], [0, 1, 2]]
    cfg.inference.tta_rot90 = [1, 2, 3]
    tta = predict_volume(model, image, cfg, progress=False)  # 20 augmentations
    np.testing.assert_allclose(tta, plain, rtol=0, atol=2e-6)
    cfg.inference.block_size = [5, 9, 7]  # TTA runs inside each window: blocks still match
    np.testing.assert_allclose(predict_volume(model, image, cfg, progress=False), tta, rtol=0, atol=1e-6)


def test_tta_inverts_flips_and_shifts_affinities_like_a_hand_computation(data):
    cfg = tiny_cfg(*AFFINITY, "inference.window_size=[12,32,24]", "inference.block_size=[64,64,64]",
                   "inference.tta_flips=[[0]]")
    model = tiny_model(cfg)
    image = data["image"][:12, :32, :24]  # one window: per-window TTA is whole-volume TTA
    tta = predict_volume(model, image, cfg, progress=False)
    x = torch.from_numpy(image.astype(np.float32) / 255)[None, None]
    with torch.no_grad():
        plain, flipped = torch.sigmoid(model(x))[0].numpy(), torch.sigmoid(model(x.flip(2))).flip(2)[0].numpy()
    np.testing.assert_allclose(tta[[0, 2, 3]], (plain[[0, 2, 3]] + flipped[[0, 2, 3]]) / 2, atol=1e-6)
    # The flipped z-affinity links v with v + (1,0,0): it belongs to voxel v + (1,0,0).
    np.testing.assert_allclose(tta[1, 1:], (plain[1, 1:] + flipped[1, :-1]) / 2, atol=1e-6)
    np.testing.assert_allclose(tta[1, 0], plain[1, 0], atol=1e-6)  # no flipped value for z = 0


def test_a_full_turn_in_tta_rot90_is_refused():
    cfg = tiny_cfg("inference.tta_rot90=[1,4]")
    with pytest.raises(ConfigError, match="tta_rot90 entry 4 is a full turn"):
        predict_volume(tiny_model(cfg), em_like((8, 16, 16)), cfg, progress=False)


def test_tta_routes_and_refusals():
    kinds, groups = ["binary", "affinity", "affinity", "affinity"], [0, 1, 1, 1]
    offsets = [None, (1, 0, 0), (0, 1, 0), (0, 0, 1)]
    assert channel_routes(Aug((0,), 0), kinds, offsets, groups) == (
        (0, 0, (0, 0, 0)), (1, 1, (1, 0, 0)), (2, 2, (0, 0, 0)), (3, 3, (0, 0, 0)))
    turned = channel_routes(Aug((), 1), kinds, offsets, groups)  # a quarter turn swaps y and x affinities
    assert {(src, dst) for src, dst, _ in turned} == {(0, 0), (1, 1), (2, 3), (3, 2)}
    with pytest.raises(ConfigError, match=r"turns affinity offset \[1, 1, 0\] into \[1, -1, 0\]"):
        channel_routes(Aug((1,), 0), ["affinity"], [(1, 1, 0)], [0])
    cfg = tiny_cfg("data.targets=[{name: affinity, offsets: [[1, 1, 0]]}]", "model.out_channels=1",
                   "inference.tta_flips=[[1]]")
    with pytest.raises(ConfigError, match="tta_flips"):
        predict_volume(tiny_model(cfg), em_like((8, 16, 16)), cfg, progress=False)


# ---------------------------------------------------------------------------------------- infer --
def test_infer_writes_a_prediction_store(data, tmp_path):
    out = tmp_path / "pred.zarr"
    summary = infer(data["aff_ckpt"], data["input"], out, progress=False)
    assert summary["blocks"] == 2 * 3 * 2 == summary["blocks_computed"] and summary["blocks_skipped"] == 0
    cfg, model = load_checkpoint_for_inference(data["aff_ckpt"])
    expected = predict_volume(model, data["image"], cfg, output=np.zeros((4, *SHAPE), np.uint8), progress=False)
    with open_volume(out) as vol:
        assert vol.shape == (4, *SHAPE) and vol.dtype == np.uint8 and vol.voxel_size == (30.0, 4.0, 4.0)
        assert all(b % c == 0 for b, c in zip((8, 16, 16), vol.chunks[1:]))  # chunks never straddle blocks
        np.testing.assert_array_equal(vol[...], expected)
        attrs = vol.attrs
    assert attrs["pytc_channels"] == ["binary", "affinity", "affinity", "affinity"]
    assert attrs["pytc_offsets"] == [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
    assert attrs["pytc_scale"] == 255 and attrs["voxel_size"] == [30.0, 4.0, 4.0]
    assert config_from_dict(yaml.safe_load(attrs["pytc_config"])) == cfg
    assert [p.name for p in tmp_path.iterdir()] == ["pred.zarr"]  # no partial store left behind

    with pytest.raises(OutputExistsError, match="--force"):
        infer(data["aff_ckpt"], data["input"], out, progress=False)
    again = infer(data["aff_ckpt"], data["input"], out, ["inference.overlap=0.5"], force=True, progress=False,
                  dtype="float16")
    with open_volume(out) as vol:
        assert vol.dtype == np.float16 and vol.attrs["pytc_scale"] == 1
        assert "overlap: 0.5" in vol.attrs["pytc_config"] and "output_dtype: float16" in vol.attrs["pytc_config"]
    assert again["dtype"] == "float16"


def test_infer_hdf5_and_default_zarr_suffix(data, tmp_path, caplog):
    import importlib.util

    with caplog.at_level("WARNING", logger="pytc"):  # the default zstd falls back to gzip quietly
        infer(data["ckpt"], data["input"], f"{tmp_path}/pred.h5:prob", progress=False, dtype="float32")
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    infer(data["ckpt"], data["input"], f"{tmp_path}/small.zarr", ["inference.block_size=[4,16,16]"], progress=False)
    assert "inference.block_size [4, 16, 16] is smaller than the window [8, 16, 16]" in caplog.text
    if importlib.util.find_spec("hdf5plugin") is None:  # asked for by name, the fallback is said
        infer(data["ckpt"], data["input"], f"{tmp_path}/z.h5:prob", ["inference.compression=zstd"], progress=False)
        assert "needs hdf5plugin" in caplog.text
    infer(data["ckpt"], data["input"], f"{tmp_path}/plain", progress=False, dtype="float32")
    with open_volume(f"{tmp_path}/pred.h5:prob") as a, open_volume(f"{tmp_path}/plain.zarr") as b:
        np.testing.assert_array_equal(a[...], b[...])
        assert a.attrs["pytc_channels"] == ["binary"] and a.voxel_size == (30.0, 4.0, 4.0)
    with pytest.raises(VolumeError, match="out.zarr"):
        infer(data["ckpt"], data["input"], f"{tmp_path}/pred.tif", progress=False)


class _Interrupted(Exception):
    pass


def test_interrupted_infer_resumes_and_equals_an_uninterrupted_run(data, tmp_path, monkeypatch):
    straight = infer(data["ckpt"], data["input"], tmp_path / "straight.zarr", progress=False)
    n, k = straight["blocks"], 5
    original, calls = record.mark_done, []

    def flaky(done_dir, index):
        if len(calls) == k:
            raise _Interrupted
        calls.append(index)
        original(done_dir, index)

    monkeypatch.setattr(record, "mark_done", flaky)
    with pytest.raises(_Interrupted):
        infer(data["ckpt"], data["input"], tmp_path / "out.zarr", progress=False)
    monkeypatch.setattr(record, "mark_done", original)
    assert not (tmp_path / "out.zarr").exists() and (tmp_path / ".out.zarr.pytc-partial").is_dir()
    resumed = infer(data["ckpt"], data["input"], tmp_path / "out.zarr", progress=False)
    assert (resumed["blocks_skipped"], resumed["blocks_computed"]) == (k, n - k) and not resumed["restarted"]
    with open_volume(tmp_path / "out.zarr") as a, open_volume(tmp_path / "straight.zarr") as b:
        np.testing.assert_array_equal(a[...], b[...])
        assert a.attrs == b.attrs
    assert not (tmp_path / ".out.zarr.pytc-partial").exists()

    # A partial store from other arguments is refused, naming what changed; --restart starts it over.
    monkeypatch.setattr(record, "mark_done", flaky)
    calls.clear()
    with pytest.raises(_Interrupted):
        infer(data["ckpt"], data["input"], tmp_path / "o2.zarr", progress=False)
    monkeypatch.setattr(record, "mark_done", original)
    with pytest.raises(VolumeError, match="written with another config; rerun with --restart"):
        infer(data["ckpt"], data["input"], tmp_path / "o2.zarr", ["inference.overlap=0.5"], progress=False)
    other = infer(data["ckpt"], data["input"], tmp_path / "o2.zarr", ["inference.overlap=0.5"], progress=False,
                  resume=False)
    assert other["blocks_skipped"] == 0 and other["blocks_computed"] == n


def test_infer_user_errors(data, tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        infer(tmp_path / "nope", data["input"], tmp_path / "a.zarr", progress=False)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError, match="neither a checkpoint folder"):
        infer(tmp_path / "notes.txt", data["input"], tmp_path / "a.zarr", progress=False)
    with pytest.raises(ConfigError, match="model.\\* settings come from the checkpoint"):
        infer(data["ckpt"], data["input"], tmp_path / "a.zarr", ["model.filters=[8,16,32]"], progress=False)
    with pytest.raises(ConfigError, match=r"inference.window_size \[6, 16, 16\] does not fit monai_unet"):
        infer(data["ckpt"], data["input"], tmp_path / "a.zarr", ["inference.window_size=[6,16,16]"], progress=False)
    with pytest.raises(ConfigError, match="did you mean inference.overlap"):
        infer(data["ckpt"], data["input"], tmp_path / "a.zarr", ["inference.overlapp=0.5"], progress=False)
    two = f"{tmp_path}/two.h5:raw"
    with create_volume(two, (2, *SHAPE), "uint8") as out:
        out[...] = 0
    with pytest.raises(DataError, match="takes 1 channel"):
        infer(data["ckpt"], two, tmp_path / "a.zarr", progress=False)
    with pytest.raises(VolumeError, match="does not exist"):
        infer(data["ckpt"], tmp_path / "missing.h5", tmp_path / "a.zarr", progress=False)
    assert not (tmp_path / "a.zarr").exists()


def test_model_settings_changed_by_a_variable_or_the_patch_are_refused_naming_the_source(data, tmp_path, monkeypatch):
    # The checkpoint's config is loaded once, with the PYTC_ variables: the message names what set it.
    monkeypatch.setenv("PYTC_MODEL__FILTERS", "[8,16,32]")
    with pytest.raises(ConfigError, match="drop the environment variable PYTC_MODEL__FILTERS"):
        infer(data["ckpt"], data["input"], tmp_path / "a.zarr", progress=False)
    monkeypatch.delenv("PYTC_MODEL__FILTERS")
    with pytest.raises(ConfigError, match=r"data.patch_size sizes the checkpoint's network; drop the override "
                                          r"'data.patch_size=\[8,32,32\]' and set inference.window_size"):
        infer(data["ckpt"], data["input"], tmp_path / "a.zarr", ["data.patch_size=[8,32,32]"], progress=False)
    assert not (tmp_path / "a.zarr").exists()


def test_two_processes_write_the_single_process_result(data, tmp_path):
    # A fresh interpreter forks the two ranks (forking this test process, whose torch thread pool is
    # running, could hang). Each rank reports its share of the 12 blocks.
    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent(f"""
        import json
        from accelerate import debug_launcher
        from pytc.inference import infer

        def main():
            s = infer({str(data['ckpt'])!r}, {data['input']!r}, {str(tmp_path / 'ddp.zarr')!r}, progress=False)
            with open({str(tmp_path)!r} + f"/rank{{s['rank']}}.json", "w") as fh:
                json.dump(s, fh, default=float)

        if __name__ == "__main__":
            debug_launcher(main, num_processes=2)
    """))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["processes"] for r in ranks] == [2, 2] and [r["blocks_computed"] for r in ranks] == [6, 6]
    infer(data["ckpt"], data["input"], tmp_path / "single.zarr", progress=False)
    with open_volume(tmp_path / "ddp.zarr") as a, open_volume(tmp_path / "single.zarr") as b:
        np.testing.assert_array_equal(a[...], b[...])
        assert a.attrs == b.attrs
    assert sorted(p.name for p in tmp_path.iterdir() if "zarr" in p.name) == ["ddp.zarr", "single.zarr"]


# ------------------------------------------------------------------------------------------- CLI --
def test_cli_infer(data, tmp_path):
    from pytc.cli import app

    runner = CliRunner()
    args = ["infer", "--ckpt", str(data["ckpt"]), "--input", data["input"], "--output", str(tmp_path / "p.zarr")]
    result = runner.invoke(app, [*args, "inference.overlap=0.5", "--dtype", "float16"])
    assert result.exit_code == 0, result.output
    assert f"Wrote {tmp_path / 'p.zarr'}: 1×13×37×29 float16 (binary)" in result.output
    assert "12 blocks: 12 computed; 1 process on cpu" in result.output
    with open_volume(tmp_path / "p.zarr") as vol:
        assert vol.dtype == np.float16
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "exists; pass --force" in lines[0]
    help_text = runner.invoke(app, ["infer", "--help"]).output
    assert "Predict a volume with a trained checkpoint (sliding window, out of core)." in help_text
    listing = runner.invoke(app, ["--help"]).output
    assert any(" infer " in ln and "Predict a volume" in ln for ln in listing.splitlines())


def test_cli_infer_names_channel_groups_and_says_how_to_resume_after_ctrl_c(data, tmp_path, monkeypatch):
    import pytc.inference
    from pytc.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["infer", "--ckpt", str(data["aff_ckpt"]), "-i", data["input"], "-o", str(tmp_path / "a")])
    assert result.exit_code == 0 and "uint8 (binary, affinity x3)" in result.output

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pytc.inference, "infer", interrupted)
    result = runner.invoke(app, ["infer", "--ckpt", str(data["ckpt"]), "-i", data["input"], "-o", str(tmp_path / "b")])
    assert result.exit_code == 130 and "rerun the same command to resume" in result.output


def test_the_infer_command_imports_no_torch():
    code = "import sys, pytc.commands.infer; print(any(m in sys.modules for m in ('torch', 'monai', 'zarr')))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "False", proc.stderr


def test_inference_precision_is_its_own_key_defaulting_to_trainings(data):
    from pytc.inference import BlockPredictor
    from pytc.runtime import resolve_precision

    cpu = torch.device("cpu")
    trained = tiny_cfg("training.precision=bf16-mixed")
    model = tiny_model(trained)
    follows = BlockPredictor(model, data["image"], trained, cpu, stats=None)
    assert follows.precision == resolve_precision("bf16-mixed", cpu)  # bf16 where the CPU has it natively, else 32
    own = tiny_cfg("training.precision=bf16-mixed", "inference.precision=32")
    assert BlockPredictor(model, data["image"], own, cpu, stats=None).precision == "32"
    from pytc.config import inference_precision

    assert (inference_precision(trained), inference_precision(own)) == ("bf16-mixed", "32")  # what the predictor asks for
