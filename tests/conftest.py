"""Shared test fixtures: tiny random volumes and a writer for them in any supported format."""

from __future__ import annotations

import numpy as np
import pytest

# One address per format, relative to a folder (see pytc.io for the scheme).
VOLUME_SPECS = {"hdf5": "vol.h5:raw", "zarr": "vol.zarr", "tiff": "vol.tif", "slices": "vol_slices/"}


def _random_volume(shape, dtype, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":  # the whole range, so a lossy or truncating path can't hide
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    if dtype.kind == "b":
        return rng.random(shape) < 0.5
    return (rng.standard_normal(shape) * 1e3).astype(dtype)


def _write_volume(spec: str, data: np.ndarray, **kwargs) -> str:
    from pytc.io import create_volume

    with create_volume(spec, data.shape, data.dtype, **kwargs) as out:
        out[...] = data
    return spec


@pytest.fixture(scope="session")
def random_volume():
    """``random_volume(shape, dtype, seed=0)`` → numpy array spanning the dtype's range."""
    return _random_volume


@pytest.fixture(scope="session")
def write_volume():
    """``write_volume(spec, data, **create_volume_kwargs)`` writes ``data`` and returns ``spec``."""
    return _write_volume


@pytest.fixture
def volume_factory(tmp_path):
    """``volume_factory(fmt, data, name=None, **kw)`` writes ``data`` under tmp_path as a
    'hdf5' / 'zarr' / 'tiff' / 'slices' volume and returns its address."""

    def make(fmt: str, data: np.ndarray, name: str | None = None, **kwargs) -> str:
        return _write_volume(f"{tmp_path}/{name or VOLUME_SPECS[fmt]}", data, **kwargs)

    return make
