"""Zarr back-end (v2 and v3 stores, OME-NGFF images): :class:`ZarrReader`, :class:`ZarrWriter` and
the OME metadata helpers. zarr is imported inside functions: importing this module must stay cheap
(``pytc --help``)."""

from __future__ import annotations

import json
import zlib
from pathlib import Path
import numpy as np

from pytc.errors import VolumeError
from pytc.io.common import GZIP_LEVEL, Incompatible, ZSTD_LEVEL, _dir_bytes, _first_line, _listing, as_voxel_size

# --------------------------------------------------------------------------------------- Zarr --
def ome_multiscales(attrs) -> list | None:
    """OME-NGFF ``multiscales`` of a group: v0.5 keeps it under ``ome``, v0.4 at the top."""
    ome = attrs.get("ome")
    found = ome.get("multiscales") if isinstance(ome, dict) else attrs.get("multiscales")
    return found if isinstance(found, list) and found else None


def _ome_voxel_size(multiscale: dict, dataset_path: str):
    scale = None
    for ds in multiscale.get("datasets", []):
        if str(ds.get("path")).strip("/") == dataset_path:
            for t in ds.get("coordinateTransformations", []):
                if t.get("type") == "scale":
                    scale = np.asarray(t["scale"], dtype=np.float64)
    if scale is None:
        return None
    for t in multiscale.get("coordinateTransformations", []):  # optional multiscale-wide scale
        if t.get("type") == "scale":
            scale = scale * np.asarray(t["scale"], dtype=np.float64)
    axes = multiscale.get("axes")
    if isinstance(axes, list) and len(axes) == len(scale):
        spatial = [i for i, a in enumerate(axes) if not isinstance(a, dict) or a.get("type", "space") == "space"]
        scale = scale[spatial] if spatial else scale
    return as_voxel_size(scale)


def ome_metadata(ndim: int, voxel_size, name: str) -> dict:
    """OME-NGFF 0.5 group attributes (the Zarr v3 flavour) for one scale-0 array at ``0``."""
    spatial = ["z", "y", "x"][-min(ndim, 3) :]
    extra = ["t", "c"][-(ndim - len(spatial)) :] if ndim > len(spatial) else []
    if len(extra) < ndim - len(spatial):
        raise VolumeError(f"OME-Zarr holds at most 5 dimensions (t,c,z,y,x); got {ndim}: write to out.zarr/array")
    axes = [{"name": a, "type": "time" if a == "t" else "channel"} for a in extra]
    axes += [{"name": a, "type": "space"} for a in spatial]
    vs = list(voxel_size) if voxel_size is not None else [1.0, 1.0, 1.0]
    scale = [1.0] * len(extra) + [float(v) for v in vs[-len(spatial) :]]
    return {
        "ome": {
            "version": "0.5",
            "multiscales": [
                {
                    "name": name,
                    "axes": axes,
                    "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}],
                }
            ],
        }
    }


def _codec_name(codec) -> str:
    cname = getattr(codec, "cname", None)
    name = type(codec).__name__.removesuffix("Codec").lower()
    name = getattr(codec, "codec_id", None) or name
    return f"{name}-{getattr(cname, 'value', cname)}" if cname is not None else name


class ZarrReader:
    format = "zarr"

    def __init__(self, path: Path, key: str | None):
        import zarr

        self.path = path
        try:
            node = zarr.open(store=str(path), mode="r", path=key or "")
        except (FileNotFoundError, ValueError, KeyError) as err:
            self._raise_not_found(path, key, err)
        self.voxel_size = None
        if isinstance(node, zarr.Group):
            multiscales = ome_multiscales(node.attrs)
            members = [] if multiscales else sorted(
                k for k, v in node.members(max_depth=None) if isinstance(v, zarr.Array)
            )
            if multiscales:  # OME-NGFF image: scale 0 is the full-resolution array
                inner = str(multiscales[0]["datasets"][0]["path"]).strip("/")
                self.voxel_size = _ome_voxel_size(multiscales[0], inner)
            elif len(members) == 1:
                inner = members[0]
            else:
                where = f"{path}/{key}" if key else str(path)
                if not members:
                    raise VolumeError(f"{where} is a Zarr group without arrays; check the path")
                raise VolumeError(
                    f"{where} holds several arrays ({_listing(members)}): name one as {where}/{members[0]}"
                )
            node = node[inner]
            key = f"{key}/{inner}" if key else inner
        self.key, self._arr = key, node
        self.attrs = dict(node.attrs)
        self.shape, self.dtype = tuple(node.shape), np.dtype(node.dtype)
        self.chunks = tuple(getattr(node, "shards", None) or node.chunks)
        codecs = [c for c in (node.compressors or ()) if c is not None]
        self.compression = ",".join(_codec_name(c) for c in codecs) or None
        if self.voxel_size is None:
            self.voxel_size = as_voxel_size(node.attrs["voxel_size"]) if "voxel_size" in node.attrs else None
        if self.voxel_size is None and key:  # e.g. vol.zarr/0 inside an OME-NGFF image
            self.voxel_size = self._parent_ome_voxel_size(zarr, path, key)

    @staticmethod
    def _parent_ome_voxel_size(zarr, path: Path, key: str):
        parent, _, name = key.strip("/").rpartition("/")
        try:
            group = zarr.open_group(store=str(path), mode="r", path=parent)
        except (FileNotFoundError, ValueError, KeyError):
            return None
        multiscales = ome_multiscales(group.attrs)
        return _ome_voxel_size(multiscales[0], name) if multiscales else None

    @staticmethod
    def _raise_not_found(path: Path, key: str | None, err: Exception):
        import zarr

        if not key:
            if any((path / name).is_file() for name in ("zarr.json", ".zarray", ".zgroup")):
                raise VolumeError(  # e.g. an object dtype: zarr refuses its pickle codec, and so do we
                    f"{path} has Zarr metadata pytc cannot read ({_first_line(err)}); pytc reads numeric arrays"
                ) from None
            raise VolumeError(
                f"{path} is not a Zarr store (no zarr.json/.zgroup/.zarray found); check the path"
            ) from None
        try:
            root = zarr.open_group(store=str(path), mode="r")
            names = sorted(k for k, v in root.members(max_depth=None) if isinstance(v, zarr.Array))
        except (FileNotFoundError, ValueError, KeyError):
            raise VolumeError(
                f"{path} is not a Zarr store (no zarr.json/.zgroup/.zarray found); check the path"
            ) from None
        hint = f"it holds: {_listing(names)}" if names else "it holds no arrays"
        raise VolumeError(f"{path} has no array '{key}'; {hint}") from None

    def read(self, sel) -> np.ndarray:
        try:
            return np.asarray(self._arr[sel])
        except (OSError, EOFError, ValueError, RuntimeError, zlib.error) as err:  # gzip, zstd, blosc, a short chunk
            raise VolumeError(
                f"cannot read {self.path}/{self.key} ({type(err).__name__}: {_first_line(err)}); a chunk file is "
                "corrupted or truncated: copy the store again"
            ) from None

    def disk_bytes(self) -> int:
        inner = self.path / self.key if self.key else self.path  # a store that is itself an array has no key
        return _dir_bytes(inner) if inner.exists() else _dir_bytes(self.path)

    def close(self) -> None:
        pass


def zarr_compressors(compression: str, zarr_format: int):
    if compression == "none":
        return None
    if zarr_format == 2:
        import numcodecs

        return {
            "gzip": lambda: numcodecs.GZip(GZIP_LEVEL),
            "zstd": lambda: numcodecs.Zstd(ZSTD_LEVEL),
            "lz4": lambda: numcodecs.Blosc("lz4", 5, numcodecs.Blosc.SHUFFLE),
        }[compression]()
    from zarr.codecs import BloscCodec, GzipCodec, ZstdCodec

    return {
        "gzip": lambda: GzipCodec(level=GZIP_LEVEL),
        "zstd": lambda: ZstdCodec(level=ZSTD_LEVEL),
        # Zarr v3 has no bare lz4 codec; Blosc-lz4 with byte shuffle is the fast standard choice.
        "lz4": lambda: BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),
    }[compression]()


class ZarrWriter:
    """Writes one array: at ``name`` inside a new store at ``tmp`` (an OME-NGFF image called
    ``ome`` when given), or, with ``store``, at ``tmp`` itself inside that existing store."""

    def __init__(self, tmp: Path, shape, dtype, chunks, compression, voxel_size, *, name="0", ome=None, store=None,
                 zarr_format=3, resume=False):  # fmt: skip
        import zarr

        root, name = (store, tmp.relative_to(store).as_posix()) if store is not None else (tmp, name)
        if resume:  # reopen the array of an existing partial store
            try:
                self._arr = zarr.open_array(store=str(root), path=name, mode="r+")
            except (FileNotFoundError, ValueError, KeyError, zarr.errors.BaseZarrError) as err:
                raise Incompatible(_first_line(err)) from None
            if (self._arr.shape, np.dtype(self._arr.dtype), self._arr.chunks) != (tuple(shape), dtype, tuple(chunks)):
                raise Incompatible(f"{root}/{name} has another layout")
            self.chunks = tuple(self._arr.chunks)
            return
        kwargs = dict(shape=shape, dtype=dtype, chunks=chunks, fill_value=0)
        kwargs["compressors"] = zarr_compressors(compression, zarr_format)
        if zarr_format == 3 and len(shape) <= 3:
            kwargs["dimension_names"] = ["z", "y", "x"][-len(shape) :]
        try:
            if ome is not None:
                attrs = ome_metadata(len(shape), voxel_size, ome)
                group = zarr.open_group(store=str(root), mode="w", zarr_format=3, attributes=attrs)
                self._arr = group.create_array(name, **kwargs)
            else:
                attrs = {"voxel_size": [float(v) for v in voxel_size]} if voxel_size is not None else None
                self._arr = zarr.create_array(str(root), name=name, attributes=attrs, zarr_format=zarr_format, **kwargs)
        except zarr.errors.BaseZarrError as err:
            raise VolumeError(f"cannot create {root}/{name} ({_first_line(err)}); choose another path") from None
        self.chunks = tuple(self._arr.chunks)

    def write(self, sel, value) -> None:
        """Assign ``value`` to ``sel``. Every chunk is a file of its own, which zarr's local store
        writes under a temporary name and renames into place: a killed writer leaves whole chunks."""
        self._arr[sel] = value

    def read(self, sel) -> np.ndarray:
        return np.asarray(self._arr[sel])

    def get_attrs(self) -> dict:
        return dict(self._arr.attrs)

    def set_attrs(self, attrs: dict) -> None:
        self._arr.attrs.update(attrs)

    def flush(self) -> None:
        pass  # every chunk is a file of its own, written when assigned

    def finish(self) -> None:
        pass

    abort = finish
