"""Label → target: exact values on hand-made volumes, plus property tests on random ones."""

from __future__ import annotations

import cc3d
import mwatershed
import numpy as np
import pytest
import waterz
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pytc.config import TargetConfig
from pytc.data.targets import (
    SIGNED_DISTANCE_SCALE,
    build_targets,
    channel_kinds,
    check_out_channels,
    target_channels,
)
from pytc.errors import ConfigError, DataError

ALL = [
    TargetConfig(name="binary"),
    TargetConfig(name="contour"),
    TargetConfig(name="affinity"),
    TargetConfig(name="distance"),
    TargetConfig(name="distance", distance_mode="signed"),
]


def _two_cubes() -> np.ndarray:
    """Two 4-cubes side by side along x (ids 3 and 9) inside a 6x6x10 background."""
    label = np.zeros((6, 6, 10), np.uint64)
    label[1:5, 1:5, 1:5] = 3
    label[1:5, 1:5, 5:9] = 9
    return label


def test_channels_and_kinds():
    long_range = TargetConfig(name="affinity", offsets=[[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 4]])
    targets = [TargetConfig(name="binary"), long_range, TargetConfig(name="distance")]
    assert target_channels(targets) == 6
    assert channel_kinds(targets) == ["binary"] + ["affinity"] * 4 + ["distance"]
    out = build_targets(_two_cubes(), targets)
    assert out.shape == (6, 6, 6, 10) and out.dtype == np.float32


def test_check_out_channels_message():
    targets = [TargetConfig(name="binary"), TargetConfig(name="affinity")]
    check_out_channels(4, targets)
    with pytest.raises(ConfigError) as e:
        check_out_channels(2, targets)
    assert str(e.value) == (
        "model.out_channels is 2 but data.targets produce 4 channels (binary 1 + affinity 3); set model.out_channels=4"
    )
    with pytest.raises(ConfigError, match=r"offset \[1, 0, 0\] does not fit 2D"):
        check_out_channels(4, targets, spatial_dims=2)


def test_binary():
    label = _two_cubes()
    (b,) = build_targets(label, [TargetConfig(name="binary")])
    np.testing.assert_array_equal(b, label > 0)


def test_affinity_two_cubes():
    label = _two_cubes()
    az, ay, ax = build_targets(label, [TargetConfig(name="affinity")])
    # x-edges (channel 2) link (z,y,x) with (z,y,x-1): inside each cube 1, across the interface 0.
    assert ax[2, 2, 2] == 1 and ax[2, 2, 8] == 1  # 2-1 and 8-7 inside cubes 3 and 9
    assert ax[2, 2, 5] == 0  # 5-4 crosses from id 9 to id 3
    assert ax[2, 2, 1] == 0 and ax[2, 2, 9] == 0  # foreground-background edges
    assert ax[:, :, 0].sum() == 0  # x-1 is outside the array
    # Each cube has 4*4*3 inner x-edges; nothing else is 1.
    assert ax.sum() == 2 * 4 * 4 * 3
    # z and y edges: 3 inner edges per line of 4, 4*8 lines of each kind.
    assert az.sum() == ay.sum() == 3 * 4 * 8
    assert az[1].sum() == 0 and az[2, 2, 2] == 1  # z=1 links to z=0, background
    assert set(np.unique(np.stack([az, ay, ax]))) <= {0.0, 1.0}


def test_affinity_long_range_and_negative():
    label = _two_cubes()
    far, neg = build_targets(label, [TargetConfig(name="affinity", offsets=[[0, 0, 3], [0, 0, -3]])])
    # (z,y,x) ~ (z,y,x-3): same id only for x in {4} (cube 3: 1..4) and {8} (cube 9: 5..8).
    assert np.array_equal(np.nonzero(far.any(axis=(0, 1)))[0], [4, 8])
    assert far.sum() == 2 * 16
    # A negative offset is the same edge stored at the other voxel: neg[v] == far[v + 3].
    np.testing.assert_array_equal(neg[:, :, :-3], far[:, :, 3:])
    # An offset as long as the axis links nothing.
    (none,) = build_targets(label, [TargetConfig(name="affinity", offsets=[[6, 0, 0]])])
    assert none.sum() == 0


@pytest.mark.parametrize("thickness", [1, 2])
def test_contour_thickness_on_a_cube(thickness):
    label = np.zeros((10, 10, 10), np.uint16)
    label[2:8, 2:8, 2:8] = 5  # a 6-cube
    (c,) = build_targets(label, [TargetConfig(name="contour", thickness=thickness)])
    assert c.sum() == 6**3 - (6 - 2 * thickness) ** 3  # 152 for 1, 208 for 2
    assert c[label == 0].sum() == 0


def test_contour_between_touching_instances_and_patch_edge():
    label = _two_cubes()
    (c,) = build_targets(label, [TargetConfig(name="contour")])
    assert c[2, 2, 4] == 1 and c[2, 2, 5] == 1  # both sides of the 3|9 interface
    full = np.ones((4, 4, 4), np.uint8)
    (c,) = build_targets(full, [TargetConfig(name="contour")])
    assert c.sum() == 0  # the patch edge is not a contour


def test_distance_normalized_and_signed():
    label = np.zeros((9, 12, 12), np.uint32)
    label[1:8, 1:8, 1:8] = 2  # big cube, centre distance 4
    label[2:5, 9:12, 9:12] = 70000  # small box touching the patch edge
    norm, signed = build_targets(label, ALL[3:])
    assert norm[label == 0].sum() == 0 and norm.min() >= 0
    for i in (2, 70000):
        assert norm[label == i].max() == pytest.approx(1.0)
    assert norm[4, 4, 4] == 1.0 and norm[1, 1, 1] == pytest.approx(0.25)
    assert (signed[label > 0] > 0).all() and (signed[label == 0] < 0).all()
    assert signed[4, 4, 4] == pytest.approx(np.tanh(3.5 / SIGNED_DISTANCE_SCALE))
    assert signed[0, 4, 4] == pytest.approx(-np.tanh(0.5 / SIGNED_DISTANCE_SCALE))  # next to the face
    assert signed[0, 0, 0] == pytest.approx(-np.tanh((np.sqrt(3) - 0.5) / SIGNED_DISTANCE_SCALE))  # corner
    assert np.abs(signed).max() < 1


def test_distance_degenerate_patches():
    empty = np.zeros((3, 4, 4), np.uint8)
    full = np.full((3, 4, 4), 7, np.uint8)
    for label, norm_value, signed_value in [(empty, 0.0, -1.0), (full, 1.0, 1.0)]:
        norm, signed = build_targets(label, ALL[3:])
        assert np.isfinite(norm).all() and (norm == norm_value).all()
        np.testing.assert_allclose(signed, signed_value)


def test_2d_labels():
    label = np.zeros((8, 8), np.int32)
    label[1:4, 1:7] = 1
    label[4:7, 1:7] = 2
    affinity = TargetConfig(name="affinity", offsets=[[1, 0], [0, 0, 1]])  # (dy, dx) or (0, dy, dx)
    out = build_targets(label, [TargetConfig(name="binary"), TargetConfig(name="contour"), affinity,
                                TargetConfig(name="distance")])
    assert out.shape == (5, 8, 8)
    _, contour, ay, ax, dist = out
    assert contour.sum() == 2 * (3 * 6 - 1 * 4)  # 3x6 rectangles with a 1x4 interior
    assert ay[4, 3] == 0 and ay[3, 3] == 1 and ax[5, 3] == 1
    assert dist[label == 1].max() == 1.0
    with pytest.raises(ConfigError, match="does not fit 2D"):
        build_targets(label, [TargetConfig(name="affinity")])  # default offsets include dz = 1


def test_bad_labels_and_offsets():
    with pytest.raises(DataError, match="integer"):
        build_targets(np.zeros((4, 4), np.float32), [TargetConfig(name="binary")])
    with pytest.raises(DataError, match="2D"):
        build_targets(np.zeros((1, 4, 4, 4), np.uint8), [TargetConfig(name="binary")])
    with pytest.raises(DataError, match="negative"):
        build_targets(-np.ones((4, 4), np.int64), [TargetConfig(name="binary")])
    with pytest.raises(ConfigError, match="links a voxel to itself"):
        build_targets(np.zeros((4, 4, 4), np.uint8), [TargetConfig(name="affinity", offsets=[[0, 0, 0]])])
    with pytest.raises(ConfigError, match=r"\(dz, dy, dx\)"):
        build_targets(np.zeros((4, 4, 4), np.uint8), [TargetConfig(name="affinity", offsets=[[0, 1]])])


# --- properties on random small instance volumes -------------------------------------------

labels = arrays(np.uint16, st.tuples(st.integers(1, 5), st.integers(1, 7), st.integers(1, 7)),
                elements=st.integers(0, 4))


def _neighbour_differs(label: np.ndarray, t: int) -> np.ndarray:
    """Brute force: does any voxel within Chebyshev distance t (inside the array) hold another id?"""
    out = np.zeros(label.shape, bool)
    for idx in np.ndindex(label.shape):
        box = tuple(slice(max(i - t, 0), i + t + 1) for i in idx)
        out[idx] = (label[box] != label[idx]).any()
    return out


@settings(max_examples=40, deadline=None)
@given(label=labels, thickness=st.integers(1, 2))
def test_properties(label, thickness):
    targets = [TargetConfig(name="binary"), TargetConfig(name="contour", thickness=thickness),
               TargetConfig(name="affinity", offsets=[[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, -2, 1]]), *ALL[3:]]
    out = build_targets(label, targets)
    binary, contour, affs, norm, signed = out[0], out[1], out[2:6], out[6], out[7]
    np.testing.assert_array_equal(binary, label > 0)
    assert set(np.unique(affs)) <= {0.0, 1.0}
    np.testing.assert_array_equal(contour.astype(bool), (label > 0) & _neighbour_differs(label, thickness))
    assert np.isfinite(out).all()
    assert ((norm > 0) == (label > 0)).all() and norm.max() <= 1
    assert ((signed > 0) == (label > 0)).all()
    # Permuting the ids (0 stays background) changes nothing.
    perm = np.array([0, 4000, 17, 65535, 1], np.uint16)
    np.testing.assert_array_equal(build_targets(perm[label], targets), out)


def test_affinity_convention_matches_waterz_and_mwatershed():
    """Ground-truth affinities give back the instances: waterz as is, mwatershed with negated offsets."""
    blocks = np.random.default_rng(0).integers(1, 6, (3, 4, 4)).repeat(3, 0).repeat(3, 1).repeat(3, 2)
    label = cc3d.connected_components(blocks, connectivity=6)  # connected instances, no background
    aff = build_targets(label, [TargetConfig(name="affinity")])

    def same_partition(a, b):
        return len(set(zip(a.ravel().tolist(), b.ravel().tolist()))) == len(np.unique(a)) == len(np.unique(b))

    seg = next(waterz.agglomerate(np.ascontiguousarray(aff), thresholds=[0.5]))
    assert same_partition(seg, label)
    mws = mwatershed.agglom(aff.astype(np.float64) - 0.5, [[-1, 0, 0], [0, -1, 0], [0, 0, -1]])
    assert same_partition(mws, label)
