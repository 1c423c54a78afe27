"""`pytc decode` of affinity predictions written by other tools: plain HDF5 arrays without pytc's
attributes, offsets given with --offsets, channels stored in x, y, z order (--channel-order xyz)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from pytc.cli import app
from pytc.config import TargetConfig
from pytc.data.targets import build_targets
from pytc.io import open_volume
from pytc.metrics import evaluate

X_Y_Z = [[0, 0, 1], [0, 1, 0], [1, 0, 0]]  # (dz, dy, dx) offsets of channels holding x, y, z affinities


def waterz(spec: str, *extra: str) -> list[str]:
    """``pytc decode`` arguments for a three-channel affinity prediction without pytc_channels."""
    return ["decode", spec, "--method", "affinity-waterz", "--channels", "affinity,affinity,affinity",
            "--min-size", "0", *extra]


def cells() -> np.ndarray:
    """Touching box-shaped instances (and some background), elongated differently along each axis,
    so affinities read along the wrong axes give another segmentation."""
    import cc3d

    values = np.random.default_rng(7).integers(0, 8, (3, 4, 5))
    label = cc3d.connected_components(values.repeat(2, 0).repeat(3, 1).repeat(4, 2), connectivity=6)
    assert (label == 0).any() and label.max() > 10
    return label.astype(np.uint32)


def write_plain_h5(path, offsets) -> tuple[str, np.ndarray]:
    """The soft affinities of :func:`cells` for ``offsets`` ((dz, dy, dx), in channel order), written
    by h5py alone: a float32 (3, Z, Y, X) dataset with no attributes."""
    label = cells()
    aff = build_targets(label, [TargetConfig(name="affinity", offsets=offsets)])
    with h5py.File(path, "w") as f:
        f["affinities"] = (0.05 + 0.9 * aff).astype(np.float32)
        assert not f["affinities"].attrs.keys()
    return f"{path}:affinities", label


def decoded(runner, args: list[str], out) -> np.ndarray:
    result = runner.invoke(app, [*args, "--output", str(out)])
    assert result.exit_code == 0, result.output
    with open_volume(out) as seg:
        return seg[...]


def arand(seg: np.ndarray, label: np.ndarray) -> float:
    return evaluate(seg, label, "instance")["adapted_rand"]


def test_plain_affinities_decode_with_offsets(tmp_path):
    runner = CliRunner()
    spec, label = write_plain_h5(tmp_path / "aff.h5", X_Y_Z)

    result = runner.invoke(app, ["decode", spec, "--output", str(tmp_path / "seg.zarr"), "--method", "affinity-waterz"])
    assert result.exit_code == 2 and "their kinds are unknown; give them, e.g. --channels" in result.output

    seg = decoded(runner, waterz(spec, "--offsets", str(X_Y_Z)), tmp_path / "seg.zarr")
    assert seg.shape == label.shape and arand(seg, label) <= 0.01

    # Without --offsets the default (z, y, x channels) reads the x affinities as z ones: a worse answer.
    wrong = decoded(runner, waterz(spec), tmp_path / "wrong.zarr")
    assert arand(wrong, label) > 0.05


def test_xyz_channel_order_decodes_to_the_same_labels(tmp_path):
    runner = CliRunner()
    spec, label = write_plain_h5(tmp_path / "aff.h5", X_Y_Z)
    reference = decoded(runner, waterz(spec, "--offsets", str(X_Y_Z)), tmp_path / "ref.zarr")

    # The same channels described in x, y, z order: the offsets are (dx, dy, dz) triples.
    xyz = waterz(spec, "--channel-order", "xyz")
    seg = decoded(runner, [*xyz, "--offsets", "[[1, 0, 0], [0, 1, 0], [0, 0, 1]]"], tmp_path / "xyz.zarr")
    assert np.array_equal(seg, reference) and arand(seg, label) <= 0.01
    # xyz with the default offsets: channels x, y, z.
    assert np.array_equal(decoded(runner, xyz, tmp_path / "xyz_default.zarr"), reference)

    # A store's own pytc_offsets are read in the given order too, and --offsets wins, with a warning.
    with h5py.File(tmp_path / "aff.h5", "a") as f:
        f["affinities"].attrs["pytc_offsets"] = [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
    assert np.array_equal(decoded(runner, xyz, tmp_path / "stored.zarr"), reference)
    with pytest.warns(UserWarning, match=r"given offsets \[\[0, 0, 1\], \[0, 1, 0\], \[1, 0, 0\]\] instead of "
                                         r"its pytc_offsets attribute \[\[1, 0, 0\], \[0, 1, 0\], \[0, 0, 1\]\]"):
        seg = decoded(runner, waterz(spec, "--offsets", str(X_Y_Z)), tmp_path / "flag.zarr")
    assert np.array_equal(seg, reference)


@pytest.mark.parametrize("bad", ["[[1,0,0],[0,1]]", "[[1,0,0", "1,0,0", "[[0,0,0],[0,1,0],[0,0,1]]",
                                 "[[1.5,0,0],[0,1,0],[0,0,1]]", "[[true,0,0],[0,1,0],[0,0,1]]", "[]", "{a: 1}",
                                 "!!python/object:os.system [ls]"])
def test_malformed_offsets_are_one_line_naming_the_flag(tmp_path, bad):
    spec, _ = write_plain_h5(tmp_path / "aff.h5", X_Y_Z)
    result = CliRunner().invoke(app, waterz(spec, "--offsets", bad, "--output", str(tmp_path / "seg.zarr")))
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: --offsets expects a list of non-zero integer triples")
    assert not (tmp_path / "seg.zarr").exists()


def test_offsets_must_match_the_affinity_channels(tmp_path):
    spec, _ = write_plain_h5(tmp_path / "aff.h5", X_Y_Z)
    two = "[[1,0,0],[0,1,0]]"
    result = CliRunner().invoke(app, waterz(spec, "--offsets", two, "--output", str(tmp_path / "seg.zarr")))
    assert result.exit_code == 2
    assert result.output.strip() == ("Error: 2 affinity offsets for 3 affinity channels (3 channels: affinity x3); "
                                     "give one offset per affinity channel")
    assert not (tmp_path / "seg.zarr").exists()
