"""Synthetic EM generator: deterministic, consistent ground truth."""

import numpy as np

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
