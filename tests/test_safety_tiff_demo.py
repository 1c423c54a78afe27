"""Data safety of TIFF stacks, slice folders, `pytc demo` and `pytc decode`'s scratch space.

Where a guarantee is about processes or disks, the test uses real ones: `pytc` processes killed with
SIGKILL, a real tmpfs that fills up (``small_fs``) and a real read-only mount.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
import zarr
from conftest import PYTC, fill_up, one_line, pytc
from PIL import Image

from pytc.errors import VolumeError
from pytc.io import open_volume



def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# ------------------------------------------------------------------------------- TIFF stacks --
@pytest.mark.parametrize("compression", [None, "zlib"])
def test_a_tiff_written_page_by_page_reads_as_the_whole_stack(tmp_path, compression):
    stack = np.random.default_rng(0).integers(0, 65535, (5, 12, 9), dtype=np.uint16)
    with tifffile.TiffWriter(tmp_path / "pages.tif") as w:  # one series per page
        for plane in stack:
            w.write(plane, compression=compression)
    with open_volume(tmp_path / "pages.tif") as vol:
        assert vol.shape == (5, 12, 9) and vol.dtype == np.uint16
        np.testing.assert_array_equal(vol[...], stack)
        np.testing.assert_array_equal(vol[3:5, 2:7, ::2], stack[3:5, 2:7, ::2])
    done = pytc("convert", tmp_path / "pages.tif", tmp_path / "out.h5")
    assert done.returncode == 0, done.stderr
    with h5py.File(tmp_path / "out.h5", "r") as f:
        np.testing.assert_array_equal(f["main"][...], stack)


def test_a_tiff_of_several_stacks_reads_as_one_stack(tmp_path):
    a, b = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5), np.ones((2, 4, 5), np.uint8)
    with tifffile.TiffWriter(tmp_path / "two.tif") as w:
        w.write(a, photometric="minisblack")
        w.write(b, photometric="minisblack")
    with open_volume(tmp_path / "two.tif") as vol:
        np.testing.assert_array_equal(vol[...], np.concatenate([a, b]))


@pytest.mark.parametrize("odd, what", [(np.zeros((6, 5), np.uint8), "shape (6, 5) uint8"),
                                       (np.zeros((4, 5), np.uint16), "shape (4, 5) uint16")])
def test_a_tiff_with_pages_of_mixed_shape_or_dtype_is_refused_naming_the_page(tmp_path, odd, what):
    with tifffile.TiffWriter(tmp_path / "mixed.tif") as w:
        w.write(np.zeros((4, 5), np.uint8))
        w.write(np.ones((4, 5), np.uint8))
        w.write(odd)
    expected = (f"page 2 of {tmp_path / 'mixed.tif'} has {what} but page 0 has shape (4, 5) uint8; "
                "a TIFF stack needs pages of one shape and dtype")
    with pytest.raises(VolumeError, match=r"^" + expected.replace("(", r"\(").replace(")", r"\)")):
        open_volume(tmp_path / "mixed.tif")
    before = listing(tmp_path)
    line = one_line(pytc("convert", tmp_path / "mixed.tif", tmp_path / "out.zarr"))
    assert expected in line
    assert listing(tmp_path) == before


def test_imagej_hyperstacks_and_single_series_stacks_read_as_before(tmp_path):
    stack = np.random.default_rng(1).integers(0, 255, (5, 6, 7), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "ij.tif", stack, imagej=True, metadata={"axes": "ZYX", "spacing": 3.0})
    tifffile.imwrite(tmp_path / "one.tif", stack, compression="zlib")
    tifffile.imwrite(tmp_path / "plane.tif", stack[0])
    for name, shape in (("ij.tif", (5, 6, 7)), ("one.tif", (5, 6, 7)), ("plane.tif", (1, 6, 7))):
        with open_volume(tmp_path / name) as vol:
            assert vol.shape == shape
            np.testing.assert_array_equal(vol[...], stack[: shape[0]])
    with open_volume(tmp_path / "ij.tif") as vol:
        assert vol.voxel_size == (3.0, 1.0, 1.0)


# ----------------------------------------------------------------------------- slice folders --
def test_a_slice_folder_with_mixed_dtypes_is_refused_naming_the_slice(tmp_path):
    folder = tmp_path / "slices"
    folder.mkdir()
    Image.fromarray(np.full((8, 9), 200, np.uint8)).save(folder / "z0.png")
    tifffile.imwrite(folder / "z1.tif", np.full((8, 9), 1000, np.uint16))  # would be stored as 1000 % 256
    expected = (f"slice z1.tif has dtype uint16 but z0.png has uint8; all slices in {folder} must have one "
                "dtype and shape (pytc does not convert them): save them alike")
    with pytest.raises(VolumeError, match=r"^slice z1.tif has dtype uint16 but z0.png has uint8"):
        open_volume(folder)
    before = listing(tmp_path)
    line = one_line(pytc("convert", folder, tmp_path / "out.h5"))
    assert line == f"Error: {expected}"
    assert listing(tmp_path) == before


def test_a_slice_folder_with_a_differently_sized_slice_is_refused_when_opened(tmp_path):
    folder = tmp_path / "slices"
    folder.mkdir()
    for z in range(3):
        Image.fromarray(np.zeros((8, 9) if z != 2 else (8, 10), np.uint8)).save(folder / f"z{z}.png")
    with pytest.raises(VolumeError, match=r"^slice z2.png has shape \(8, 10\) but z0.png has \(8, 9\)"):
        open_volume(folder)


def test_a_slice_folder_of_one_dtype_still_reads(tmp_path):
    folder = tmp_path / "slices"
    folder.mkdir()
    stack = np.random.default_rng(2).integers(0, 65535, (3, 5, 6), dtype=np.uint16)
    for z, plane in enumerate(stack):
        (Image.fromarray(plane).save(folder / f"z{z}.png") if z == 1
         else tifffile.imwrite(folder / f"z{z}.tif", plane))  # a 16-bit PNG between TIFFs
    with open_volume(folder) as vol:
        assert vol.dtype == np.uint16
        np.testing.assert_array_equal(vol[...], stack)


# -------------------------------------------------------------------------------- demo synth --
def _synth_reference(tmp_path: Path, seed: int) -> dict[str, np.ndarray]:
    from pytc.synth import make_em_volume

    vol = make_em_volume((8, 48, 48), seed=seed)
    return {k: getattr(vol, k) for k in ("image", "mito_mask", "mito_instances", "cell_instances")}


def _read_synth(path: Path) -> dict[str, np.ndarray]:
    if path.suffix == ".h5":
        with h5py.File(path, "r") as f:
            return {k: f[k][...] for k in f}
    group = zarr.open_group(str(path), mode="r")
    return {k: group[k][...] for k in group.array_keys()}


@pytest.mark.parametrize("name", ["o.h5", "o.zarr"])
def test_demo_synth_killed_while_replacing_keeps_the_old_volume(tmp_path, name):
    out = tmp_path / name
    assert pytc("demo", "synth", out, "--shape", "8", "48", "48", "--seed", "1").returncode == 0
    old = _read_synth(out)
    assert sorted(old) == ["cell_instances", "image", "mito_instances", "mito_mask"]
    new = _synth_reference(tmp_path, seed=2)
    for delay in (0.0, 0.02, 0.1):
        proc = subprocess.Popen([*PYTC, "demo", "synth", str(out), "--shape", "8", "48", "48", "--seed", "2",
                                 "--force"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while not any(".pytc-tmp-" in p.name for p in tmp_path.iterdir()):  # the new volume is being written
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.001)
        time.sleep(delay)
        killed = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        assert killed or delay > 0, "the write ended before it could be interrupted"
        got = _read_synth(out)  # never missing, never a half-written volume: the old one or the new one
        assert sorted(got) == sorted(old)
        reference = old if all(np.array_equal(got[k], old[k]) for k in old) else new
        for k in old:
            np.testing.assert_array_equal(got[k], reference[k])
        if delay == 0:
            assert reference is old
    done = pytc("demo", "synth", out, "--shape", "8", "48", "48", "--seed", "2", "--force")
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(tmp_path)) == [name]  # the next run removed the killed run's temporaries
    got = _read_synth(out)
    for k in new:
        np.testing.assert_array_equal(got[k], new[k])


def test_demo_synth_without_force_keeps_an_existing_volume(tmp_path):
    """Guard: the new write-then-rename path still refuses an existing output without --force."""
    out = tmp_path / "o.h5"
    out.write_bytes(b"mine")
    line = one_line(pytc("demo", "synth", out, "--shape", "4", "8", "8"))
    assert "exists; pass --force" in line and out.read_bytes() == b"mine"


@pytest.mark.parametrize("shape", [["99999999999999999999", "1", "1"], ["9223372036854775807", "2", "1"],
                                   ["100000", "100000", "100000"], ["-5", "1", "1"]])
def test_demo_synth_with_an_absurd_shape_is_one_line_and_writes_nothing(tmp_path, shape):
    line = one_line(pytc("demo", "synth", tmp_path / "o.h5", "--shape", *shape))
    assert f"shape {' '.join(shape)}" in line and "--shape" in line
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------------- read-only outputs --
@pytest.fixture
def read_only_dir(tmp_path):
    """A real read-only mount (root ignores permission bits, not a read-only file system)."""
    where = tmp_path / "ro"
    where.mkdir()
    if os.geteuid() != 0:
        pytest.skip("a read-only mount needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(where)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    yield where
    subprocess.run(["umount", "-l", str(where)], capture_output=True)


@pytest.mark.parametrize("sub", ["x", ".", "x/y"])
def test_demo_into_a_read_only_folder_is_one_line_before_any_work(read_only_dir, sub):
    out = read_only_dir / sub
    start = time.monotonic()
    done = pytc("demo", "-o", out, "--steps", "1")
    line = one_line(done)
    assert f"cannot write {out.absolute()}" in line and "choose another" in line, line
    assert done.stdout == ""  # nothing generated, nothing trained
    assert time.monotonic() - start < 30
    assert os.listdir(read_only_dir) == []


def test_demo_synth_into_a_read_only_folder_is_one_line(read_only_dir):
    """Guard, beside the `pytc demo` case that failed: `demo synth` was already one line here."""
    line = one_line(pytc("demo", "synth", read_only_dir / "o.h5", "--shape", "4", "8", "8"))
    assert f"cannot write {read_only_dir / 'o.h5'}" in line
    assert os.listdir(read_only_dir) == []


# --------------------------------------------------------------------- decode on a full disk --
@pytest.mark.parametrize("method, out", [("bc-watershed", "seg.zarr"), ("bc-watershed", "seg.h5"),
                                         ("threshold", "seg.zarr"), ("threshold", "seg.tif")])
def test_decode_on_a_real_full_disk_is_one_line_and_leaves_no_scratch(tmp_path, small_fs, method, out):
    where = small_fs("1m")
    rng = np.random.default_rng(3)
    shape = (24, 128, 128)  # the seed and region scratch stores: 1.5 MB each uncompressed, many tiny seeds
    pred = np.stack([rng.integers(0, 256, shape), rng.integers(0, 100, shape)]).astype(np.uint8)
    zarr.create_array(store=str(tmp_path / "pred.zarr"), name="pred", data=pred, chunks=(1, 8, 64, 64),
                      attributes={"pytc_channels": ["binary", "contour"], "pytc_scale": 255})
    fill_up(where, leave=200_000 if method == "bc-watershed" else 20_000)  # room for the trial output, not the labels
    before = listing(where)
    done = pytc("decode", f"{tmp_path}/pred.zarr/pred", "-o", where / out, "--method", method,
                "--block-size", "8,64,64", "--halo", "2,4,4", "--min-size", "0",
                *(["--threshold", "0.9"] if method == "threshold" else []))  # many tiny objects: labels that fill the disk
    line = one_line(done)
    assert f"cannot write {where / out} (No space left on device); free some space" in line
    assert listing(where) == before  # no scratch folder, no partial output


@pytest.mark.parametrize("thumbnail_first", [False, True])
@pytest.mark.parametrize("pages", ["one series", "page by page", "compressed"])
def test_a_thumbnail_beside_the_stack_is_not_part_of_it(tmp_path, thumbnail_first, pages):
    """Microscope TIFFs (Zeiss LSM, slide scanners) carry reduced-resolution previews beside the
    stack: they are skipped, not read as a slice nor refused as a page of another shape."""
    stack = np.arange(5 * 24 * 20, dtype=np.uint16).reshape(5, 24, 20)
    path = tmp_path / "with_thumb.tif"
    with tifffile.TiffWriter(path) as w:
        thumb = lambda: w.write(np.full((6, 5), 7, np.uint16), subfiletype=1)  # noqa: E731
        if thumbnail_first:
            thumb()
        if pages == "one series":
            w.write(stack)
        else:
            for plane in stack:
                w.write(plane, compression="zlib" if pages == "compressed" else None)
        if not thumbnail_first:
            thumb()
    with open_volume(path) as vol:
        assert vol.shape == (5, 24, 20)
        np.testing.assert_array_equal(vol[...], stack)
        np.testing.assert_array_equal(vol[2:4, 3:9, 1:2], stack[2:4, 3:9, 1:2])
