"""Synthetic EM generator: deterministic, consistent ground truth."""

import numpy as np
import pytest

from pytc.errors import ConfigError
from pytc.synth import make_em_volume


def test_deterministic_and_typed():
    a = make_em_volume((16, 48, 48), seed=3)
    b = make_em_volume((16, 48, 48), seed=3)
    c = make_em_volume((16, 48, 48), seed=4)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mito_instances, b.mito_instances)
    assert not np.array_equal(a.image, c.image)
    assert a.image.dtype == np.uint8 and a.mito_instances.dtype == np.uint32
    assert a.image.shape == a.mito_mask.shape == a.cell_instances.shape == (16, 48, 48)


def test_ground_truth_is_consistent():
    v = make_em_volume((24, 96, 96), seed=0)
    assert np.array_equal(v.mito_mask, (v.mito_instances > 0).astype(np.uint8))
    assert v.mito_instances.max() >= 3 and 0.005 < v.mito_mask.mean() < 0.2
    # Mitochondria lie inside cells, never on a membrane.
    assert not np.any((v.mito_instances > 0) & (v.cell_instances == 0))
    # Each mitochondrion lies within a single cell.
    for i in range(1, int(v.mito_instances.max()) + 1):
        cells = np.unique(v.cell_instances[v.mito_instances == i])
        assert len(cells) <= 1
    # Mitochondria and membranes are darker than cytoplasm: the image carries the signal.
    cyto = (v.cell_instances > 0) & (v.mito_instances == 0)
    assert v.image[v.mito_instances > 0].mean() < v.image[cyto].mean() - 20
    assert v.image[v.cell_instances == 0].mean() < v.image[cyto].mean() - 30


def test_anisotropy_sets_voxel_size():
    v = make_em_volume((8, 64, 64), seed=1, anisotropy=4.0)
    assert v.voxel_size == (4.0, 1.0, 1.0)
    assert v.mito_instances.max() >= 1


@pytest.mark.parametrize("kwargs, message", [
    ({"shape": (0, 8, 8)}, "shape 0 8 8 has a size below 1; every size must be at least 1"),
    ({"shape": (4, 8)}, "shape must be three whole numbers Z Y X"),
    ({"shape": (4.5, 8, 8)}, "shape must be three whole numbers Z Y X"),
    ({"shape": (1024, 1024, 1024)}, "is 1,073,741,824 voxels; the generator makes at most 268,435,456"),
    ({"seed": -1}, "seed must be a whole number of at least 0; got -1"),
    ({"anisotropy": 0.0}, "anisotropy must be between 0.1 and 10"),
    ({"anisotropy": 50.0}, "anisotropy must be between 0.1 and 10 .* got 50"),
])
def test_out_of_range_options_say_the_allowed_range(kwargs, message):
    args = {"shape": (4, 16, 16), **kwargs}
    with pytest.raises(ConfigError, match=message):
        make_em_volume(**args)


def test_the_smallest_volume_is_one_voxel():
    assert make_em_volume((1, 1, 1)).image.shape == (1, 1, 1)
