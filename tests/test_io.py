"""pytc.io: addressing, lazy reads, all-or-nothing writes, conversion and stats."""

from __future__ import annotations

import os
import pickle

import h5py
import numpy as np
import pytest
import tifffile
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pytc.io as pio
from pytc.errors import OutputExistsError, VolumeError
from pytc.io import blocks as io_blocks
from pytc.io import convert, create_volume, iter_blocks, open_volume, parse_spec, volume_info

FORMATS = ["hdf5", "zarr", "tiff", "slices"]
DTYPES = ["uint8", "uint16", "uint32", "uint64", "int32", "float32"]
SPECS = {"hdf5": "v.h5:raw", "zarr": "v.zarr", "tiff": "v.tif", "slices": "v_slices/"}
VOXEL = (30.0, 4.0, 5.13)


def read_all(spec):
    with open_volume(spec) as vol:
        return vol[...], vol.voxel_size, vol.dtype


def assert_bit_exact(got: np.ndarray, want: np.ndarray):
    assert got.dtype == want.dtype and got.shape == want.shape
    assert got.tobytes() == want.tobytes()


# ------------------------------------------------------------------------------- addressing --
@pytest.mark.parametrize(
    "text, fmt, path, key",
    [
        ("a.h5", "hdf5", "a.h5", None),
        ("dir/a.hdf5:volumes/raw", "hdf5", "dir/a.hdf5", "volumes/raw"),
        ("v.zarr", "zarr", "v.zarr", None),
        ("v.zarr/", "zarr", "v.zarr", None),
        ("d/v.ZARR/s/0", "zarr", "d/v.ZARR", "s/0"),
        ("s.tiff", "tiff", "s.tiff", None),
        ("slices/", "slices", "slices", None),
        ("slices", "slices", "slices", None),
    ],
)
def test_parse_spec(text, fmt, path, key):
    spec = parse_spec(text)
    assert (spec.format, str(spec.path), spec.key) == (fmt, path, key)


# ------------------------------------------------------------------------------ round trips --
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dst_fmt", FORMATS)
@pytest.mark.parametrize("src_fmt", FORMATS)
def test_convert_round_trip_is_bit_exact(tmp_path, random_volume, write_volume, src_fmt, dst_fmt, dtype):
    data = random_volume((3, 9, 11), dtype)
    src = write_volume(f"{tmp_path}/src_{SPECS[src_fmt]}", data, voxel_size=VOXEL, chunks=(2, 4, 8))
    dst = f"{tmp_path}/dst_{SPECS[dst_fmt]}"
    summary = convert(src, dst, chunks=(2, 5, 5), progress=False)
    assert summary["shape"] == [3, 9, 11] and summary["dtype"] == dtype and summary["bytes"] == data.nbytes
    got, voxel_size, _ = read_all(dst)
    assert_bit_exact(got, data)
    assert voxel_size == pytest.approx(VOXEL)
    assert_bit_exact(read_all(src)[0], data)  # the source is untouched


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shape=st.tuples(st.integers(1, 5), st.integers(1, 13), st.integers(1, 13)),
    dtype=st.sampled_from(DTYPES),
    chunks=st.tuples(st.integers(1, 4), st.integers(1, 8), st.integers(1, 8)),
    src_fmt=st.sampled_from(FORMATS),
    dst_fmt=st.sampled_from(FORMATS),
    block_bytes=st.sampled_from([1, 64, 2**20]),  # 1 byte: one aligned unit per block
    seed=st.integers(0, 2**16),
)
def test_convert_property_round_trip(
    tmp_path_factory, random_volume, write_volume, shape, dtype, chunks, src_fmt, dst_fmt, block_bytes, seed
):
    folder = tmp_path_factory.mktemp("prop")
    data = random_volume(shape, dtype, seed)
    src = write_volume(f"{folder}/a_{SPECS[src_fmt]}", data, chunks=chunks)
    old, io_blocks.BLOCK_BYTES = io_blocks.BLOCK_BYTES, block_bytes
    try:
        convert(src, f"{folder}/b_{SPECS[dst_fmt]}", chunks=chunks[::-1], progress=False)
    finally:
        io_blocks.BLOCK_BYTES = old
    assert_bit_exact(read_all(f"{folder}/b_{SPECS[dst_fmt]}")[0], data)


@pytest.mark.parametrize(
    "fmt, compression",
    [("zarr", c) for c in ("gzip", "zstd", "lz4", "none")]
    + [("hdf5", c) for c in ("gzip", "none")]
    + [("tiff", c) for c in ("gzip", "zstd", "none")]
    + [("slices", "zstd")],
)
def test_every_supported_codec_round_trips(tmp_path, random_volume, write_volume, fmt, compression):
    data = random_volume((4, 16, 16), "uint16")
    spec = write_volume(f"{tmp_path}/{SPECS[fmt]}", data, compression=compression)
    with open_volume(spec) as vol:
        assert_bit_exact(vol[...], data)
        assert (vol.compression is None) == (compression == "none")


def test_convert_copies_attributes_between_zarr_and_hdf5(tmp_path):
    # A converted prediction must still say what its channels are and how it is scaled.
    attrs = {"pytc_channels": ["binary", "contour"], "pytc_scale": 255, "note": "raw"}
    with create_volume(f"{tmp_path}/p.zarr", (2, 3, 8, 8), "uint8", voxel_size=(30, 4, 4)) as out:
        out[...] = 7
        out.set_attrs(attrs)
    convert(f"{tmp_path}/p.zarr", f"{tmp_path}/p.h5:pred", progress=False)
    convert(f"{tmp_path}/p.h5:pred", f"{tmp_path}/q.zarr", voxel_size=(40, 8, 8), progress=False)
    with open_volume(f"{tmp_path}/p.h5:pred") as a, open_volume(f"{tmp_path}/q.zarr") as b:
        assert {k: a.attrs[k] for k in attrs} == attrs and a.voxel_size == (30.0, 4.0, 4.0)
        assert b.attrs == attrs and b.voxel_size == (40.0, 8.0, 8.0)  # the new voxel size, not the copied one
    assert volume_info(f"{tmp_path}/p.h5:pred")["attributes"] == attrs  # shown by `pytc info`, voxel size apart
    with create_volume(f"{tmp_path}/one.zarr", (3, 8, 8), "uint8") as out:
        out[...] = 7
        out.set_attrs(attrs)
    with pytest.warns(UserWarning, match="tiff has no attributes: note, pytc_channels, pytc_scale"):
        convert(f"{tmp_path}/one.zarr", f"{tmp_path}/one.tif", progress=False)
    with open_volume(f"{tmp_path}/one.tif") as tif:
        assert (tif[...] == 7).all()


def test_outputs_beside_a_keyless_input_are_not_the_input(tmp_path):
    # A key-less address reads one dataset (the file's only one); a new dataset beside it is another.
    with h5py.File(tmp_path / "single.h5", "w") as f:
        f["main"] = np.zeros((2, 3, 4), "u1")
    pio.check_not_input(f"{tmp_path}/single.h5:pred", [f"{tmp_path}/single.h5"])
    with pytest.raises(VolumeError, match="is also the input"):
        pio.check_not_input(f"{tmp_path}/single.h5:main", [f"{tmp_path}/single.h5"])
    with pytest.raises(VolumeError, match="is also the input"):  # a key-less output replaces the whole file
        pio.check_not_input(f"{tmp_path}/single.h5", [f"{tmp_path}/single.h5:main"])


def test_a_dangling_link_at_the_output_path_needs_force_and_a_file_is_no_container(tmp_path):
    (tmp_path / "out.zarr").symlink_to(tmp_path / "not-mounted.zarr")
    assert pio.output_exists(tmp_path / "out.zarr")  # replacing the link needs --force
    with h5py.File(tmp_path / "v.h5", "w") as f:
        f["raw"] = np.zeros((2, 3, 4), "u1")
    pio.check_not_input(tmp_path / "v.h5.zarr", [f"{tmp_path}/v.h5:raw"])  # a sibling, not inside the file
    with pytest.raises(VolumeError, match="v.h5 is a file, not a folder"):
        convert(f"{tmp_path}/v.h5:raw", tmp_path / "v.h5" / "x.zarr", progress=False)  # the real reason


def test_attributes_that_are_not_plain_values_are_left_out(tmp_path):
    with h5py.File(tmp_path / "dims.h5", "w") as f:
        raw = f.create_dataset("raw", data=np.zeros((2, 3, 4), "u1"))
        scale = f.create_dataset("z", data=np.arange(2))
        scale.make_scale("z")
        raw.dims[0].attach_scale(scale)  # DIMENSION_LIST: object references
        raw.attrs["empty"] = h5py.Empty("f")
        raw.attrs["kept"] = 3
        f.create_dataset("nothing", data=h5py.Empty("f"))  # no data at all: not listed
    assert volume_info(f"{tmp_path}/dims.h5:raw")["attributes"] == {"kept": 3}
    with pytest.warns(UserWarning, match="attributes DIMENSION_LIST, empty of .* are not plain JSON values"):
        convert(f"{tmp_path}/dims.h5:raw", f"{tmp_path}/o.zarr", progress=False)
    with open_volume(f"{tmp_path}/o.zarr") as out:
        assert out.attrs == {"kept": 3}
    assert pio.list_volumes(tmp_path / "dims.h5") == [f"{tmp_path}/dims.h5:raw", f"{tmp_path}/dims.h5:z"]


def test_unsupported_codecs_are_clear_errors(tmp_path):
    with pytest.raises(VolumeError, match="TIFF has no lz4"):
        create_volume(tmp_path / "a.tif", (2, 4, 4), "uint8", compression="lz4")
    with pytest.raises(VolumeError, match="unknown compression 'brotli'"):
        create_volume(tmp_path / "a.zarr", (2, 4, 4), "uint8", compression="brotli")
    try:
        import hdf5plugin  # noqa: F401
    except ImportError:
        with pytest.raises(VolumeError, match="use --compression gzip or pip install hdf5plugin"):
            create_volume(tmp_path / "a.h5", (2, 4, 4), "uint8", compression="zstd")
    assert not list(tmp_path.iterdir())  # nothing half-made


def test_2d_source_becomes_a_single_slice(tmp_path, random_volume, write_volume):
    data = random_volume((9, 7), "uint8")
    src = write_volume(f"{tmp_path}/img.h5", data)
    convert(src, f"{tmp_path}/out.tif", progress=False)
    assert_bit_exact(read_all(f"{tmp_path}/out.tif")[0], data[None])


def test_multichannel_volume_round_trips_through_zarr_and_hdf5(tmp_path, random_volume, write_volume):
    data = random_volume((2, 3, 8, 8), "float32")
    src = write_volume(f"{tmp_path}/pred.zarr", data, voxel_size=VOXEL)
    convert(src, f"{tmp_path}/pred.h5", progress=False)
    got, voxel_size, _ = read_all(f"{tmp_path}/pred.h5")
    assert_bit_exact(got, data)
    assert voxel_size == VOXEL
    axes = zarr.open_group(f"{tmp_path}/pred.zarr", mode="r").attrs["ome"]["multiscales"][0]["axes"]
    assert [a["name"] for a in axes] == ["c", "z", "y", "x"]


# --------------------------------------------------------------------------- lazy handles --
def test_volume_indexing_matches_numpy(volume_factory, random_volume):
    data = random_volume((6, 10, 12), "int32")
    for fmt in FORMATS:
        with open_volume(volume_factory(fmt, data, chunks=(2, 4, 4))) as vol:
            assert (vol.shape, vol.dtype, vol.ndim, len(vol)) == (data.shape, data.dtype, 3, 6)
            for index in [
                (...,),
                (2,),
                (-1, 3),
                (slice(1, 5, 2), ..., slice(None, None, -3)),
                (..., 4),
                (slice(None, None, -1), 0, slice(2, 9)),
                (slice(4, 2),),
                (np.int64(3), slice(1, -1)),
            ]:
                assert_bit_exact(vol[index], data[index])
            assert_bit_exact(np.asarray(vol), data)
            with pytest.raises(IndexError):
                vol[6]


def test_zarr_reads_only_the_chunks_it_is_asked_for(volume_factory, random_volume, tmp_path):
    data = random_volume((4, 8, 8), "uint8")
    spec = volume_factory("zarr", data, chunks=(2, 4, 4), compression="gzip")
    chunk_files = sorted(p for p in (tmp_path / "vol.zarr" / "0" / "c").rglob("*") if p.is_file())
    keep = tmp_path / "vol.zarr" / "0" / "c" / "0" / "0" / "0"
    for path in chunk_files:
        if path != keep:
            path.write_bytes(b"garbage, not gzip")  # decoding any of these would fail
    with open_volume(spec) as vol:
        assert_bit_exact(vol[0:2, 0:4, 0:4], data[0:2, 0:4, 0:4])
        with pytest.raises(VolumeError, match="a chunk file is corrupted or truncated"):  # broken chunks are decoded
            vol[...]


def test_opening_a_huge_volume_reads_nothing(tmp_path):
    zarr.create_array(str(tmp_path / "big.zarr"), shape=(100_000,) * 3, chunks=(64,) * 3, dtype="uint64", fill_value=0)
    with open_volume(tmp_path / "big.zarr") as vol:  # 8 PB if it were loaded
        assert vol.shape == (100_000,) * 3 and vol[5, 6, 7] == 0


def test_uncompressed_tiff_is_memory_mapped(volume_factory, random_volume):
    data = random_volume((5, 8, 8), "uint16")
    with open_volume(volume_factory("tiff", data, compression="none")) as vol:
        assert isinstance(vol._reader._memmap, np.memmap)
        assert_bit_exact(vol[2:4], data[2:4])


def test_compressed_tiff_decodes_only_the_requested_pages(volume_factory, random_volume, monkeypatch):
    data = random_volume((6, 8, 8), "uint8")
    decoded = []
    with open_volume(volume_factory("tiff", data, compression="gzip")) as vol:
        original = vol._reader._page
        monkeypatch.setattr(vol._reader, "_page", lambda z: decoded.append(z) or original(z))
        assert_bit_exact(vol[1:5:2, 2:5], data[1:5:2, 2:5])
    assert decoded == [1, 3]


def test_slices_reads_only_the_requested_files(volume_factory, random_volume, tmp_path):
    data = random_volume((5, 6, 7), "uint16")
    spec = volume_factory("slices", data)
    files = sorted((tmp_path / "vol_slices").iterdir())
    for path in files[1:2] + files[3:]:  # break every slice but 0 (the header) and 2
        path.write_bytes(b"not a tiff")
    with open_volume(spec) as vol:
        assert_bit_exact(vol[2], data[2])
        with pytest.raises(VolumeError, match="cannot read slice"):
            vol[1]


def test_slices_are_in_natural_order_and_png_works(tmp_path, random_volume):
    from PIL import Image

    data = random_volume((11, 5, 6), "uint8")
    (tmp_path / "s").mkdir()
    for z in range(11):
        Image.fromarray(data[z]).save(tmp_path / "s" / f"z{z}.png")
    (tmp_path / "s" / "notes.txt").write_text("ignored")
    with open_volume(tmp_path / "s") as vol:
        assert (vol.format, vol.compression) == ("slices", "png")
        assert_bit_exact(vol[...], data)  # z2 before z10


def test_volume_pickles_by_address(volume_factory, random_volume):
    data = random_volume((2, 4, 4), "uint8")
    with open_volume(volume_factory("hdf5", data)) as vol:
        clone = pickle.loads(pickle.dumps(vol))
    with clone:
        assert_bit_exact(clone[...], data)


# --------------------------------------------------------------------------- voxel sizes --
def test_zarr_v2_input_is_readable(tmp_path, random_volume):
    import numcodecs

    data = random_volume((3, 7, 9), "uint16")
    arr = zarr.create_array(
        str(tmp_path / "old.zarr"),
        shape=data.shape,
        chunks=(1, 4, 4),
        dtype=data.dtype,
        zarr_format=2,
        compressors=numcodecs.Blosc("lz4"),
        attributes={"voxel_size": [40, 4, 4]},
    )
    arr[...] = data
    with open_volume(tmp_path / "old.zarr") as vol:
        assert_bit_exact(vol[...], data)
        assert vol.voxel_size == (40.0, 4.0, 4.0) and vol.chunks == (1, 4, 4)


def test_ome_zarr_written_with_scale_and_read_back(tmp_path, volume_factory, random_volume):
    data = random_volume((3, 8, 8), "uint8")
    volume_factory("zarr", data, voxel_size=VOXEL)
    group = zarr.open_group(str(tmp_path / "vol.zarr"), mode="r")
    assert group.metadata.zarr_format == 3
    ome = group.attrs["ome"]
    assert ome["version"] == "0.5"
    (ms,) = ome["multiscales"]
    assert [(a["name"], a["type"]) for a in ms["axes"]] == [("z", "space"), ("y", "space"), ("x", "space")]
    assert ms["datasets"] == [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": list(VOXEL)}]}]
    assert open_volume(f"{tmp_path}/vol.zarr/0").voxel_size == VOXEL  # scale found from the array too


def test_ome_ngff_04_group_opens_scale_zero(tmp_path, random_volume):
    data = random_volume((4, 8, 8), "uint8")
    group = zarr.open_group(str(tmp_path / "img.zarr"), mode="w", zarr_format=2)
    group.create_array("s0", shape=data.shape, dtype=data.dtype, chunks=(2, 4, 4))[...] = data
    group.create_array("s1", shape=(4, 4, 4), dtype=data.dtype, chunks=(2, 4, 4))
    scale = lambda s: [{"type": "scale", "scale": s}]  # noqa: E731
    group.attrs["multiscales"] = [
        {
            "version": "0.4",
            "axes": [{"name": "c", "type": "channel"}] * 0 + [{"name": n, "type": "space"} for n in "zyx"],
            "datasets": [
                {"path": "s0", "coordinateTransformations": scale([50, 8, 8])},
                {"path": "s1", "coordinateTransformations": scale([50, 16, 16])},
            ],
        }
    ]
    with open_volume(tmp_path / "img.zarr") as vol:
        assert (vol.key, vol.voxel_size) == ("s0", (50.0, 8.0, 8.0))
        assert_bit_exact(vol[...], data)


@pytest.mark.parametrize("attr", ["voxel_size", "resolution", "element_size_um"])
def test_hdf5_voxel_size_attributes(tmp_path, attr):
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f.create_dataset("raw", data=np.zeros((2, 3, 3), np.uint8)).attrs[attr] = [40, 4, 4]
    assert open_volume(tmp_path / "a.h5").voxel_size == (40.0, 4.0, 4.0)


def test_imagej_tiff_calibration_is_read(tmp_path):
    tifffile.imwrite(
        tmp_path / "fiji.tif",
        np.zeros((3, 4, 4), np.uint8),
        imagej=True,
        resolution=(1 / 5, 1 / 4),
        metadata={"spacing": 30.0, "unit": "nm", "axes": "ZYX"},
    )
    assert open_volume(tmp_path / "fiji.tif").voxel_size == (30.0, 4.0, 5.0)


def test_voxel_size_override(volume_factory, random_volume, tmp_path):
    src = volume_factory("hdf5", random_volume((2, 4, 4), "uint8"), voxel_size=VOXEL)
    convert(src, tmp_path / "o.zarr", voxel_size=(1, 2, 3), progress=False)
    assert open_volume(tmp_path / "o.zarr").voxel_size == (1.0, 2.0, 3.0)


# ----------------------------------------------------------------------------- bad inputs --
def _h5_with(path, *names):
    with h5py.File(path, "w") as f:
        for name in names:
            f.create_dataset(name, data=np.zeros((2, 2, 2), np.uint8))
    return path


def _folder(path):
    path.mkdir()
    return path


def _truncated_h5(path):
    data = _h5_with(path, "raw").read_bytes()
    path.write_bytes(data[:900])
    return path


def _write(path, content: bytes):
    path.write_bytes(content)
    return path


def _zarr_with_array_a(path):
    zarr.create_array(str(path), name="a", shape=(2,), dtype="u1")
    return path


BAD_INPUTS = {  # case: (make the bad address under tmp_path, expected message)
    "unknown extension": (lambda p: p / "vol.nii", "cannot tell the format of .*vol.nii"),
    "missing file": (lambda p: p / "nope.h5", "nope.h5 does not exist"),
    "folder as hdf5": (lambda p: _folder(p / "d.h5"), "is a folder, not an HDF5 file"),
    "folder as tiff": (lambda p: _folder(p / "d.tif"), "is a folder, not a TIFF file"),
    "missing key": (
        lambda p: f"{_h5_with(p / 'a.h5', 'image', 'label')}:raw",
        "no such dataset; it holds: image, label",
    ),
    "ambiguous hdf5": (
        lambda p: _h5_with(p / "a.h5", "image", "label"),
        r"a.h5 holds several datasets \(image, label\): name one as .*a.h5:image",
    ),
    "empty slice folder": (lambda p: f"{_folder(p / 'empty')}/", "holds no .tif/.tiff/.png slices"),
    "truncated hdf5": (lambda p: _truncated_h5(p / "a.h5"), "not a readable HDF5 file"),
    "garbage tiff": (lambda p: _write(p / "a.tif", b"II*\x00garbage"), "not a readable TIFF"),
    "not a zarr store": (lambda p: _folder(p / "x.zarr"), "is not a Zarr store"),
    "missing zarr array": (lambda p: f"{_zarr_with_array_a(p / 'z.zarr')}/b", "has no array 'b'; it holds: a"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_inputs_raise_volume_error(tmp_path, case):
    make, message = BAD_INPUTS[case]
    with pytest.raises(VolumeError, match=message) as err:
        with open_volume(make(tmp_path)) as vol:
            vol[...]
    assert "\n" not in str(err.value)


def test_truncated_tiff_raises_volume_error(volume_factory, random_volume, tmp_path):
    for compression in ("gzip", "none"):
        spec = volume_factory(
            "tiff", random_volume((4, 64, 64), "uint16"), name=f"t_{compression}.tif", compression=compression
        )
        path = tmp_path / spec.rsplit("/", 1)[-1]
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        with pytest.raises(VolumeError, match="truncated"):
            with open_volume(spec) as vol:
                vol[...]


@pytest.mark.parametrize(
    "bad", [dict(chunks=(0, 4, 4)), dict(chunks=(4, 4)), dict(voxel_size=(1, 2)), dict(shape=(2, -1, 3))]
)
def test_bad_writer_arguments(tmp_path, bad):
    kwargs = dict(shape=(2, 4, 4), dtype="uint8") | bad
    with pytest.raises(VolumeError):
        create_volume(tmp_path / "a.zarr", **kwargs)


def test_tiff_output_must_be_3d(tmp_path):
    with pytest.raises(VolumeError, match="3D volumes"):
        create_volume(tmp_path / "a.tif", (2, 3, 4, 4), "uint8")


# ------------------------------------------------------------------- commit semantics --
@pytest.mark.parametrize("fmt", FORMATS)
def test_existing_output_needs_force_and_is_replaced_at_commit(tmp_path, volume_factory, random_volume, fmt):
    old, new = random_volume((2, 4, 4), "uint8", 1), random_volume((3, 4, 4), "uint8", 2)
    spec = volume_factory(fmt, old)
    with pytest.raises(OutputExistsError, match="exists; pass --force to overwrite"):
        create_volume(spec, new.shape, new.dtype)
    with create_volume(spec, new.shape, new.dtype, force=True) as out:
        out[...] = new
        assert_bit_exact(read_all(spec)[0], old)  # still the old one until commit
    assert_bit_exact(read_all(spec)[0], new)
    assert len(list(tmp_path.iterdir())) == 1  # no temporaries or set-aside copies left


@pytest.mark.parametrize("fmt", FORMATS)
def test_interrupted_write_leaves_nothing(tmp_path, fmt):
    spec = f"{tmp_path}/{SPECS[fmt]}"
    with pytest.raises(RuntimeError, match="boom"):
        with create_volume(spec, (4, 8, 8), "uint16", chunks=(1, 4, 4)) as out:
            out[0:2] = 7
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_interrupted_replace_keeps_the_old_output(tmp_path, volume_factory, random_volume):
    old = random_volume((2, 4, 4), "uint8")
    spec = volume_factory("zarr", old)
    with pytest.raises(RuntimeError):
        with create_volume(spec, (2, 4, 4), "uint8", force=True) as out:
            out[...] = 1
            raise RuntimeError
    assert_bit_exact(read_all(spec)[0], old)
    assert [p.name for p in tmp_path.iterdir()] == ["vol.zarr"]


def test_stale_temp_from_a_killed_run_is_cleaned(tmp_path, volume_factory, random_volume):
    dead_pid = 2**22 + 12345  # above the default pid_max, so no live process has it
    stale = tmp_path / f".out.zarr.pytc-tmp-{dead_pid}"
    (stale / "junk").mkdir(parents=True)
    live = tmp_path / f".out.zarr.pytc-tmp-{os.getppid()}"  # a run still in progress: leave it
    live.mkdir()
    convert(volume_factory("hdf5", random_volume((2, 4, 4), "uint8")), tmp_path / "out.zarr", progress=False)
    assert not stale.exists() and live.exists()


def test_killed_replace_is_rolled_back(tmp_path, volume_factory, random_volume):
    old = random_volume((2, 4, 4), "uint8")
    volume_factory("zarr", old, name="out.zarr")
    os.rename(tmp_path / "out.zarr", tmp_path / f".out.zarr.pytc-old-{2**22 + 1}")  # killed mid-swap
    with pytest.raises(OutputExistsError):
        create_volume(tmp_path / "out.zarr", (1, 1, 1), "uint8")
    assert_bit_exact(read_all(tmp_path / "out.zarr")[0], old)


def test_new_hdf5_dataset_keeps_the_others(tmp_path, random_volume, write_volume):
    image, label = random_volume((2, 4, 4), "uint8"), random_volume((2, 4, 4), "uint32")
    write_volume(f"{tmp_path}/d.h5:image", image)
    write_volume(f"{tmp_path}/d.h5:label", label)
    with pytest.raises(OutputExistsError):
        create_volume(f"{tmp_path}/d.h5:image", (1, 1, 1), "uint8")
    write_volume(f"{tmp_path}/d.h5:image", image[:1], force=True)
    assert_bit_exact(read_all(f"{tmp_path}/d.h5:label")[0], label)
    assert_bit_exact(read_all(f"{tmp_path}/d.h5:image")[0], image[:1])


def test_new_zarr_array_in_existing_store(tmp_path, random_volume, write_volume):
    a, b = random_volume((2, 4, 4), "uint8"), random_volume((2, 4, 4), "float32")
    write_volume(f"{tmp_path}/s.zarr", a)
    write_volume(f"{tmp_path}/s.zarr/pred/fg", b, voxel_size=VOXEL)
    got, voxel_size, _ = read_all(f"{tmp_path}/s.zarr/pred/fg")
    assert_bit_exact(got, b)
    assert voxel_size == VOXEL
    assert_bit_exact(read_all(f"{tmp_path}/s.zarr/0")[0], a)
    assert not [p for p in (tmp_path / "s.zarr").rglob("*pytc-tmp*")]


def test_tiff_writer_accepts_tiles_in_any_order(tmp_path, random_volume):
    data = random_volume((3, 8, 8), "uint16")
    with create_volume(tmp_path / "t.tif", data.shape, data.dtype) as out:
        for z in (2, 0):
            for y in (4, 0):
                out[z, y : y + 4] = data[z, y : y + 4]
        out[1] = data[1]
    assert_bit_exact(read_all(tmp_path / "t.tif")[0], data)


def test_writer_reads_back_hdf5_and_zarr(tmp_path):
    for spec in ("w.h5", "w.zarr"):
        with create_volume(tmp_path / spec, (2, 3, 4), "int32") as out:
            out[1, :, ::-1] = np.arange(4)
            assert_bit_exact(out[1, 2], np.arange(4, dtype=np.int32)[::-1])


# ---------------------------------------------------------------------- blocks and stats --
@pytest.mark.parametrize("max_bytes", [1, 100, 10_000])
def test_iter_blocks_tiles_exactly_along_chunk_borders(max_bytes):
    shape, chunks = (7, 10, 13), (2, 4, 5)
    seen = np.zeros(shape, int)
    for sel in iter_blocks(shape, chunks, 2, max_bytes):
        seen[sel] += 1
        assert all(s.start % c == 0 for s, c in zip(sel, chunks))
        assert all((s.stop % c == 0) or s.stop == n for s, c, n in zip(sel, chunks, shape))
        if max_bytes >= 2 * np.prod(chunks):
            assert np.prod([s.stop - s.start for s in sel]) * 2 <= max_bytes
    assert (seen == 1).all()


def test_copy_plan_decodes_each_source_chunk_once_when_affordable():
    unit, budget = io_blocks._copy_plan((1, 512, 512), (64, 64, 64), (256, 512, 512), 1)  # TIFF pages → 64³
    assert unit == (64, 512, 512) and budget >= 64 * 512 * 512
    unit, budget = io_blocks._copy_plan((1, 8192, 8192), (64, 64, 64), (256, 8192, 8192), 1)  # 4 GB unit: too big
    assert unit == (64, 64, 64) and budget == io_blocks.MAX_BLOCK_BYTES
    assert io_blocks._copy_plan(None, (8, 8, 8), (64, 64, 64), 4) == ((8, 8, 8), io_blocks.BLOCK_BYTES)


@pytest.mark.parametrize("dtype", ["uint8", "uint64", "int32", "float32"])
def test_volume_stats_match_numpy(volume_factory, monkeypatch, dtype):
    rng = np.random.default_rng(3)
    data = (rng.integers(-50, 500, (5, 9, 10)) if dtype != "uint8" else rng.integers(0, 40, (5, 9, 10))).astype(dtype)
    if dtype.startswith("uint"):
        data = np.abs(data)
    monkeypatch.setattr(io_blocks, "BLOCK_BYTES", 64)  # many blocks
    info = volume_info(volume_factory("zarr", data, chunks=(2, 3, 4)), stats=True)
    assert (info["min"], info["max"]) == (data.min().item(), data.max().item())
    assert info["mean"] == pytest.approx(data.astype(np.float64).mean(), rel=1e-12)
    if dtype != "float32":
        assert info["n_labels"] == np.unique(data[data != 0]).size  # objects: background 0 not counted
    else:
        assert "n_labels" not in info
    assert info["shape"] == [5, 9, 10] and info["nbytes"] == data.nbytes and info["disk_bytes"] > 0
