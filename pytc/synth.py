"""Synthetic EM volumes with ground truth, for the demo and the tests.

The generator draws what a serial-section EM crop of neuropil looks like at a coarse level:
cells separated by dark curved membranes, mitochondria (ellipsoids with a dark outer membrane and a
textured interior), vesicles as distractors (dark, round, unlabelled), then blur, shot noise and a
per-section contrast drift. It is seeded and deterministic, and a 64×256×256 volume takes a few
seconds.

Example:
    >>> from pytc.synth import make_em_volume
    >>> vol = make_em_volume((32, 64, 64), seed=0)
    >>> vol.image.dtype, vol.image.shape, int(vol.mito_instances.max()) > 0
    (dtype('uint8'), (32, 64, 64), True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pytc.errors import ConfigError

MAX_VOXELS = 2**28  # generating takes ~55 bytes of memory per voxel: ~15 GB at this size
ANISOTROPY_RANGE = (0.1, 10.0)  # beyond 10× a section is thicker than a mitochondrion: none get drawn


@dataclass
class SynthVolume:
    """A synthetic EM volume and its ground truth (all arrays (Z, Y, X))."""

    image: np.ndarray  # uint8 EM-like intensities
    mito_mask: np.ndarray  # uint8 {0, 1}
    mito_instances: np.ndarray  # uint32, 0 = background
    cell_instances: np.ndarray  # uint32, 0 = membrane
    voxel_size: tuple[float, float, float]


def check_options(shape, seed: int = 0, anisotropy: float = 1.0) -> tuple[int, int, int]:
    """Validate the generator's options (they come from the command line) and return the shape as ints.

    Raises:
        ConfigError: a shape that is not three whole sizes of at least 1 or exceeds ``MAX_VOXELS``,
            a negative seed, or an anisotropy outside ``ANISOTROPY_RANGE``.
    """
    given = " ".join(str(s) for s in shape) if isinstance(shape, (list, tuple)) else repr(shape)
    if (not isinstance(shape, (list, tuple)) or len(shape) != 3
            or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in shape)):
        raise ConfigError(f"shape must be three whole numbers Z Y X (e.g. --shape 64 256 256); got {given}")
    if min(shape) < 1:
        raise ConfigError(f"shape {given} has a size below 1; every size must be at least 1 (e.g. --shape 64 256 256)")
    voxels = math.prod(int(s) for s in shape)  # Python ints: a size beyond int64 must not overflow
    if voxels > MAX_VOXELS:
        count = f"{voxels:,}" if voxels < 10**24 else f"{float(voxels):.3g}" if voxels < 10**300 else "over 1e300"
        given = given if len(given) <= 80 else given[:77] + "..."
        raise ConfigError(f"shape {given} is {count} voxels; the generator makes at most {MAX_VOXELS:,} "
                          "(it needs ~55 bytes of memory per voxel): give a smaller --shape")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be a whole number of at least 0; got {seed}")
    low, high = ANISOTROPY_RANGE
    if not low <= anisotropy <= high:
        raise ConfigError(f"anisotropy must be between {low:g} and {high:g} (z voxel size / y-x voxel size); "
                          f"got {anisotropy:g}")
    return tuple(int(s) for s in shape)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    field = gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return field / (field.std() + 1e-8)


def _cells(rng: np.random.Generator, shape: tuple[int, int, int], cell_size: float, aniso: float) -> np.ndarray:
    """Voronoi cells of random seeds, warped by a smooth field so membranes curve."""
    from scipy.ndimage import distance_transform_edt, map_coordinates

    n = max(2, int(np.prod(shape) / (cell_size**3) * aniso))
    seeds = np.zeros(shape, bool)
    seeds[tuple(rng.integers(0, s, n) for s in shape)] = True
    # Nearest seed in physical space (z voxels are `aniso` times thicker).
    _, idx = distance_transform_edt(~seeds, sampling=(aniso, 1.0, 1.0), return_indices=True)
    ids = np.zeros(shape, np.uint32)
    ids[seeds] = np.arange(1, seeds.sum() + 1, dtype=np.uint32)
    cells = ids[tuple(idx)]
    # Warp: displace sampling coordinates by smooth noise (order 0 keeps ids).
    amp = cell_size / 6
    grid = np.indices(shape, dtype=np.float32)
    for axis in range(3):
        scale = amp / aniso if axis == 0 else amp
        grid[axis] += scale * _smooth_noise(rng, shape, sigma=cell_size / 4)
    return map_coordinates(cells, grid, order=0, mode="nearest").astype(np.uint32)


def _membranes(cells: np.ndarray, width: int) -> np.ndarray:
    """Voxels whose in-plane or axial neighbour belongs to another cell, grown to `width`."""
    from scipy.ndimage import binary_dilation

    edge = np.zeros(cells.shape, bool)
    for axis in range(cells.ndim):
        diff = np.diff(cells, axis=axis) != 0
        lo = [slice(None)] * cells.ndim
        lo[axis] = slice(0, -1)
        edge[tuple(lo)] |= diff
    if width > 1:
        edge = binary_dilation(edge, iterations=width - 1)
    return edge


def _ellipsoids(
    rng: np.random.Generator, cells: np.ndarray, membrane: np.ndarray, count: int,
    radii: tuple[float, float], aniso: float,
) -> np.ndarray:
    """Randomly oriented ellipsoids, each clipped to the cytoplasm of the cell its centre lies in."""
    shape = cells.shape
    out = np.zeros(shape, np.uint32)
    label = 0
    for _ in range(count * 3):  # some candidates are rejected (on a membrane or overlapping)
        if label == count:
            break
        c = np.array([rng.uniform(0, s) for s in shape])
        ci = tuple(np.clip(c.astype(int), 0, np.array(shape) - 1))
        if membrane[ci] or out[ci]:
            continue
        r = rng.uniform(*radii, size=3)
        r[0] = max(r[0] / aniso, 1.0)
        rot, _ = np.linalg.qr(rng.standard_normal((3, 3)))
        ext = int(np.ceil(r.max() * (aniso if aniso > 1 else 1))) + 1
        lo = np.maximum(c.astype(int) - ext, 0)
        hi = np.minimum(c.astype(int) + ext + 1, shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        zz, yy, xx = np.meshgrid(*[np.arange(a, b) - cc for a, b, cc in zip(lo, hi, c)], indexing="ij")
        pts = np.stack([zz * aniso, yy, xx], -1) @ rot  # rotate in physical space
        r_phys = np.array([r[0] * aniso, r[1], r[2]])
        inside = ((pts / r_phys) ** 2).sum(-1) <= 1.0
        inside &= (cells[box] == cells[ci]) & ~membrane[box] & (out[box] == 0)
        if inside.sum() < 8:
            continue
        label += 1
        out[box][inside] = label
    return out


def make_em_volume(
    shape: tuple[int, int, int] = (64, 256, 256),
    seed: int = 0,
    anisotropy: float = 1.0,
    cell_size: float = 48.0,
    mito_density: float = 1.0,
    noise: float = 14.0,
) -> SynthVolume:
    """Generate a synthetic EM volume with mitochondria and cell ground truth.

    Args:
        shape: (Z, Y, X) voxels.
        seed: random seed; the same seed gives the same volume.
        anisotropy: z voxel size relative to x/y (e.g. 5 for 40×8×8 nm serial sections), 0.1 to 10.
        cell_size: typical cell diameter in (x/y) voxels.
        mito_density: scales the number of mitochondria (1.0 ≈ one per 25k voxels).
        noise: standard deviation of the additive noise in grey levels.

    Returns:
        A :class:`SynthVolume`.

    Raises:
        ConfigError: ``shape``, ``seed`` or ``anisotropy`` out of range (see :func:`check_options`).
    """
    from scipy.ndimage import binary_erosion, gaussian_filter

    shape = check_options(shape, seed, anisotropy)
    rng = np.random.default_rng(seed)
    cells = _cells(rng, shape, cell_size, anisotropy)
    membrane = _membranes(cells, width=2)
    n_mito = max(1, int(np.prod(shape) / 25_000 * mito_density))
    mito = _ellipsoids(rng, cells, membrane, n_mito, radii=(4.0, 10.0), aniso=anisotropy)
    vesicles = _ellipsoids(rng, cells, membrane | (mito > 0), n_mito * 3, radii=(1.5, 2.5), aniso=anisotropy)

    # Intensities (grey levels of a typical stained EM section).
    img = np.full(shape, 175.0, np.float32)
    img += 10 * _smooth_noise(rng, shape, sigma=6)  # cytoplasm texture
    img[membrane] = 70.0
    inner = binary_erosion(mito > 0, iterations=1)
    rim = (mito > 0) & ~inner
    cristae = 0.5 + 0.5 * np.sin(_smooth_noise(rng, shape, sigma=1.5) * 3)
    img[inner] = (95.0 + 35.0 * cristae)[inner]
    img[rim] = 55.0
    ves_rim = (vesicles > 0) & ~binary_erosion(vesicles > 0)
    img[ves_rim] = 90.0
    img = gaussian_filter(img, sigma=(0.8 / anisotropy, 0.8, 0.8))
    img += rng.normal(0.0, noise, shape).astype(np.float32)
    # Per-section contrast and brightness drift, as between serial sections.
    gain = 1.0 + 0.06 * rng.standard_normal(shape[0]).astype(np.float32)
    offset = 6.0 * rng.standard_normal(shape[0]).astype(np.float32)
    img = (img - 128) * gain[:, None, None] + 128 + offset[:, None, None]
    image = np.clip(img, 0, 255).astype(np.uint8)

    cell_instances = np.where(membrane, 0, cells).astype(np.uint32)
    return SynthVolume(
        image=image,
        mito_mask=(mito > 0).astype(np.uint8),
        mito_instances=mito,
        cell_instances=cell_instances,
        voxel_size=(float(anisotropy), 1.0, 1.0),
    )
