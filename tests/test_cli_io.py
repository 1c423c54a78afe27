"""`pytc convert` and `pytc info` through the real CLI: output, exit codes, one-line errors, start-up."""

from __future__ import annotations

import json
import subprocess
import sys

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from pytc.cli import app
from pytc.io import open_volume

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(result, fragment: str):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: ") and fragment in lines[0], lines[0]
    assert "Traceback" not in result.output


def test_convert_writes_and_reports(tmp_path, volume_factory, random_volume):
    data = random_volume((4, 10, 12), "uint16")
    src = volume_factory("hdf5", data, voxel_size=(30, 4, 4))
    result = invoke(
        "convert", src, tmp_path / "out.zarr", "--chunks", "2,5,6", "--compression", "zstd", "--voxel-size", "40,8,8.5"
    )
    assert result.exit_code == 0, result.output
    assert "Wrote" in result.stdout and "4×10×12 uint16" in result.stdout
    with open_volume(tmp_path / "out.zarr") as vol:
        assert (vol.chunks, vol.compression, vol.voxel_size) == ((2, 5, 6), "zstd", (40.0, 8.0, 8.5))
        assert vol[...].tobytes() == data.tobytes()


def test_info_prints_a_table(volume_factory, random_volume):
    src = volume_factory("tiff", random_volume((3, 5, 7), "float32"), voxel_size=(30, 4, 4))
    result = invoke("info", src)
    assert result.exit_code == 0, result.output
    rows = dict(line.split(None, 1) for line in result.stdout.splitlines() if line.strip())
    assert rows["format"].strip() == "tiff" and rows["shape"].strip() == "3 × 5 × 7"
    assert rows["dtype"].strip() == "float32" and rows["voxel_size"].strip() == "30.0 × 4.0 × 4.0"


@pytest.mark.parametrize("dtype", ["uint32", "float32"])
def test_info_stats_json_is_correct(volume_factory, dtype):
    data = (np.random.default_rng(5).integers(0, 300, (6, 9, 8)) * (1.5 if dtype == "float32" else 1)).astype(dtype)
    result = invoke("info", volume_factory("slices", data), "--stats", "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert (info["format"], info["shape"], info["dtype"]) == ("slices", [6, 9, 8], dtype)
    assert info["min"] == data.min().item() and info["max"] == data.max().item()
    assert info["mean"] == pytest.approx(data.astype(np.float64).mean(), rel=1e-12)
    assert info.get("n_labels") == (np.unique(data[data != 0]).size if dtype == "uint32" else None)


def test_info_lists_the_arrays_of_a_container(tmp_path):
    with h5py.File(tmp_path / "cremi.h5", "w") as f:
        f.create_dataset("volumes/raw", data=np.zeros((4, 6, 8), "u1"), chunks=(2, 3, 4))
        f["volumes/labels/neuron_ids"] = np.zeros((4, 6, 8), "u8")
    result = invoke("info", tmp_path / "cremi.h5", "--json")
    assert result.exit_code == 0, result.output
    listing = json.loads(result.stdout)
    assert [v["key"] for v in listing["volumes"]] == ["volumes/labels/neuron_ids", "volumes/raw"]
    assert [v["dtype"] for v in listing["volumes"]] == ["uint64", "uint8"]
    assert listing["volumes"][1]["chunks"] == [2, 3, 4]
    table = invoke("info", tmp_path / "cremi.h5")
    assert table.exit_code == 0 and f"{tmp_path}/cremi.h5:volumes/raw" in table.stdout and "4 × 6 × 8" in table.stdout
    group = tmp_path / "g.zarr"
    import zarr

    root = zarr.open_group(str(group), mode="w")
    root.create_array("a", shape=(2, 3, 4), dtype="u2")
    root.create_array("b/c", shape=(5, 3, 4), dtype="f4")
    listing = json.loads(invoke("info", group, "--json").stdout)
    assert [(v["key"], v["shape"]) for v in listing["volumes"]] == [("a", [2, 3, 4]), ("b/c", [5, 3, 4])]


def _ambiguous(path):
    with h5py.File(path, "w") as f:
        f["image"], f["label"] = np.zeros((2, 2, 2), "u1"), np.zeros((2, 2, 2), "u1")
    return path


@pytest.mark.parametrize(
    "make_args, fragment",
    [
        (lambda p, src: ["info", p / "nope.h5"], "nope.h5 does not exist"),
        (lambda p, src: ["info", p / "vol.nii"], "cannot tell the format"),
        (lambda p, src: ["info", _ambiguous(p / "two.h5"), "--stats"], "holds 2 volumes; name one for --stats"),
        (lambda p, src: ["convert", _ambiguous(p / "two.h5"), p / "o.zarr"], "two.h5:image"),
        (lambda p, src: ["info", f"{src}:nope"], "no such dataset"),
        (lambda p, src: ["info", (p / "empty").mkdir() or f"{p}/empty/"], "holds no .tif/.tiff/.png slices"),
        (lambda p, src: ["info", (p / "bad.tif").write_bytes(b"\0" * 64) and p / "bad.tif"], "not a readable TIFF"),
        (lambda p, src: ["convert", src, p / "o.zarr", "--chunks", "64,x,64"], "--chunks expects positive numbers"),
        (lambda p, src: ["convert", src, p / "o.zarr", "--chunks", "4,4"], "chunks must be 3 positive integers"),
        (lambda p, src: ["convert", src, p / "o.zarr", "--voxel-size", "0,4,4"], "--voxel-size expects positive"),
        (lambda p, src: ["convert", src, p / "o.tif", "--compression", "lz4"], "TIFF has no lz4"),
        (lambda p, src: ["convert", src, p / "o.n5"], "cannot tell the format"),
    ],
)
def test_user_mistakes_are_one_red_line(tmp_path, volume_factory, random_volume, make_args, fragment):
    src = volume_factory("hdf5", random_volume((2, 4, 4), "uint8"))
    assert_one_line_error(invoke(*make_args(tmp_path, src)), fragment)
    assert not list(tmp_path.glob("o.*")) and not list(tmp_path.glob(".o.*"))


def test_existing_destination_needs_force(tmp_path, volume_factory, random_volume):
    first, second = random_volume((2, 4, 4), "uint8", 1), random_volume((2, 4, 4), "uint8", 2)
    a, b = volume_factory("hdf5", first, name="a.h5"), volume_factory("hdf5", second, name="b.h5")
    assert invoke("convert", a, tmp_path / "out.tif").exit_code == 0
    assert_one_line_error(invoke("convert", b, tmp_path / "out.tif"), "exists; pass --force to overwrite")
    assert open_volume(tmp_path / "out.tif")[...].tobytes() == first.tobytes()
    assert invoke("convert", b, tmp_path / "out.tif", "--force").exit_code == 0
    assert open_volume(tmp_path / "out.tif")[...].tobytes() == second.tobytes()


def test_cli_start_up_imports_no_heavy_libraries(tmp_path, volume_factory, random_volume):
    src = volume_factory("hdf5", random_volume((2, 4, 4), "uint8"))
    code = f"""
import sys
from pytc.cli import main

def run(argv):
    try:
        main(argv)
    except SystemExit as exit:
        assert exit.code in (0, None), (argv, exit.code)

run(["--help"])
print("after-help", sorted(m for m in sys.modules if m.split(".")[0] in {{"h5py", "zarr", "tifffile"}}))
run(["info", {src!r}])
run(["convert", {src!r}, {str(tmp_path / "out.zarr")!r}])
run(["info", {str(tmp_path / "out.zarr")!r}, "--stats"])
print("heavy", sorted(m for m in sys.modules if m.split(".")[0] in {{"torch", "monai", "accelerate"}}))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "after-help []" in lines  # `pytc --help` stays instant
    assert lines[-1] == "heavy []"
