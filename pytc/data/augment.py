"""Training augmentation: a MONAI ``Compose`` of dict transforms, plus EM-specific ones.

:func:`build_augmentation` turns :class:`~pytc.config.AugmentConfig` into a ``Compose`` over
``{"image", "label"[, "mask"]}`` dicts of channel-first numpy arrays, ``(1, Z, Y, X)`` or
``(1, Y, X)``. The output has the same keys, shapes and dtypes as the input, as contiguous numpy
arrays (image float32; label and mask keep their dtype — labels are never interpolated, only
picked with nearest neighbour, so ids survive exactly, however large).

Reproducibility: every random transform draws only from its own MONAI random state (``self.R``),
so after ``compose.set_random_state(seed=s)`` the output is a pure function of the input and ``s``.

Policies:
    * Geometric transforms (flips, rot90, affine, elastic, misalignment) move image, label and
      mask together; label and mask use nearest neighbour. Intensity transforms touch the image.
    * rot90 is in-plane (y, x) and only applied when the in-plane size is square; on non-square
      patches it is a no-op (a 180° turn, the only shape-keeping one, is already flip y + flip x).
    * Affine (rotation by up to ``rotate_deg``, scaling y and x each by up to ``scale_range``) and elastic
      deformation are in-plane and identical for every section, as EM sections are cut and imaged
      one by one; a 2D resampling of the Z sections is also ~4x cheaper than a 3D one. Regions
      brought in from outside the patch are filled by reflection (image and label alike).
    * Misalignment shifts image, label and mask from a random section on; the exposed strip is
      filled by reflection, so the patch size is kept and label and image stay consistent.
    * Blur and motion blur act within sections (EM blur is an in-plane imaging artefact).
    * z-only transforms (z-flip, missing section, misalignment) are skipped for 2D data.

Example:
    >>> import numpy as np
    >>> from pytc.config import AugmentConfig
    >>> aug = build_augmentation(AugmentConfig())
    >>> _ = aug.set_random_state(seed=0)
    >>> out = aug({"image": np.random.rand(1, 8, 32, 32).astype("float32"),
    ...            "label": np.ones((1, 8, 32, 32), np.uint64)})
    >>> out["image"].shape, out["label"].dtype
    ((1, 8, 32, 32), dtype('uint64'))
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Hashable, Mapping, Optional, Sequence

import numpy as np
from monai import transforms as T
from monai.transforms import Compose, MapTransform, RandomizableTransform

from pytc.errors import DataError, PytcError

if TYPE_CHECKING:
    from pytc.config import AugmentConfig

IMAGE, LABEL, MASK = "image", "label", "mask"
_GEOMETRIC = (IMAGE, LABEL, MASK)
_MODES = ("bilinear", "nearest", "nearest")  # per key of _GEOMETRIC: never interpolate ids
_RESTORE = "_pytc_restore"  # private key: how to give label/mask back their ids and dtypes

# Fixed strengths (the config only holds probabilities): mild, as in nnU-Net / PyTC defaults.
GAMMA_RANGE = (0.7, 1.5)
CONTRAST_FACTOR = 0.25  # (x - mean) * (1 ± 0.25) + mean
BRIGHTNESS_OFFSET = 0.1  # x ± 0.1 on a [0, 1] image
BLUR_SIGMA = (0.5, 1.5)  # in-plane Gaussian sigma in voxels; none across sections
ELASTIC_SPACING = (16, 16)  # control-point spacing in voxels: smooth, cell-scale warps
ELASTIC_MAGNITUDE = (1.0, 2.0)  # gives displacements of ~1 voxel on average, ~4 at most
MAX_MISSING_SECTIONS = 2
MAX_MOTION_BLUR_SECTIONS = 2
MOTION_BLUR_LENGTH = (5, 11)  # line-kernel length in voxels
CUT_BOX_RATIO = (0.2, 0.5)  # box side as a share of each patch side
CUT_BLUR_FACTOR = (2.0, 8.0)  # in-plane down-sampling factor inside the box
CUT_NOISE_STD = (0.1, 0.3)  # "strong" next to noise_std = 0.05


def build_augmentation(aug: "AugmentConfig", spatial_dims: int = 3, restore_ids: bool = True) -> Optional["Compose"]:
    """Build the training augmentation chain.

    Args:
        aug: The ``data.augment`` section; each transform runs with its probability.
        spatial_dims: 3 for ``(1, Z, Y, X)`` samples, 2 for ``(1, Y, X)``.
        restore_ids: give labels back with their original ids and dtype; False returns the
            renumbered int32 ids (same partition), which is all that target transforms need and
            saves a remap per sample.

    Returns:
        A MONAI ``Compose`` over ``{"image", "label"[, "mask"]}`` dicts, or ``None`` when
        augmentation is disabled or every probability is 0.
    """
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    if not aug.enabled:
        return None
    is3d = spatial_dims == 3
    y, x = spatial_dims - 2, spatial_dims - 1  # spatial axes, as MONAI counts them (no channel)
    geo = dict(keys=_GEOMETRIC, allow_missing_keys=True)
    img = dict(keys=IMAGE)

    chain: list[Any] = []
    if aug.flip_prob > 0:
        chain += [T.RandFlipd(prob=aug.flip_prob, spatial_axis=y, **geo),
                  T.RandFlipd(prob=aug.flip_prob, spatial_axis=x, **geo)]
    if aug.rot90_prob > 0:
        chain.append(RandRotate90InPlaned(prob=aug.rot90_prob, **geo))
    if is3d and aug.zflip_prob > 0:
        chain.append(T.RandFlipd(prob=aug.zflip_prob, spatial_axis=0, **geo))
    warps = []
    if aug.affine_prob > 0 and (aug.rotate_deg > 0 or aug.scale_range > 0):
        warps.append(T.RandAffined(
            prob=aug.affine_prob, rotate_range=(math.radians(aug.rotate_deg),),
            scale_range=(aug.scale_range, aug.scale_range), mode=_MODES, padding_mode="reflection", **geo))
    if aug.elastic_prob > 0:
        warps.append(T.Rand2DElasticd(
            prob=aug.elastic_prob, spacing=ELASTIC_SPACING, magnitude_range=ELASTIC_MAGNITUDE,
            mode=_MODES, padding_mode="reflection", **geo))
    if warps:  # 3D: sections become channels, so one 2D warp moves every section alike
        chain += [_ZToChannel(**geo), *warps, _ChannelToZ(**geo)] if is3d else warps
    if is3d and aug.misalignment_prob > 0 and aug.misalignment_max_shift > 0:
        chain.append(RandMisalignmentd(prob=aug.misalignment_prob, max_shift=aug.misalignment_max_shift, **geo))

    if aug.gamma_prob > 0:
        chain.append(T.RandAdjustContrastd(prob=aug.gamma_prob, gamma=GAMMA_RANGE, **img))
    if aug.contrast_prob > 0:
        chain.append(T.RandScaleIntensityFixedMeand(prob=aug.contrast_prob, factors=CONTRAST_FACTOR, **img))
    if aug.brightness_prob > 0:
        chain.append(T.RandShiftIntensityd(prob=aug.brightness_prob, offsets=BRIGHTNESS_OFFSET, **img))
    if aug.noise_prob > 0 and aug.noise_std > 0:  # MONAI draws each call's std from U(0, noise_std)
        chain.append(T.RandGaussianNoised(prob=aug.noise_prob, std=aug.noise_std, **img))
    if aug.blur_prob > 0:
        chain.append(RandInPlaneBlurd(prob=aug.blur_prob, **img))
    if is3d and aug.missing_section_prob > 0:
        chain.append(RandMissingSectiond(prob=aug.missing_section_prob, **img))
    if aug.motion_blur_prob > 0:
        chain.append(RandMotionBlurd(prob=aug.motion_blur_prob, **img))
    if aug.cut_blur_prob > 0:
        chain.append(RandCutBlurd(prob=aug.cut_blur_prob, **img))
    if aug.cut_noise_prob > 0:
        chain.append(RandCutNoised(prob=aug.cut_noise_prob, **img))

    if not chain:  # every probability is 0
        return None
    return AugmentCompose([_Prepare(spatial_dims, restore_ids), *chain, _Finish()])


class AugmentCompose(Compose):
    """MONAI's ``Compose``, except that pytc's user errors come out as themselves.

    ``Compose`` wraps every exception in ``RuntimeError("applying transform ...")``; a
    :class:`~pytc.errors.PytcError` (e.g. image/label shape mismatch) must reach the CLI unwrapped.
    """

    def __call__(self, input_, *args, **kwargs):
        try:
            return super().__call__(input_, *args, **kwargs)
        except RuntimeError as e:
            cause = e.__cause__
            while isinstance(cause, RuntimeError) and cause.__cause__ is not None:  # nested Compose
                cause = cause.__cause__
            if isinstance(cause, PytcError):
                raise cause from None
            raise


# --- helpers ---------------------------------------------------------------------------------


def _numpy(x: Any) -> np.ndarray:
    """A numpy view of a numpy array, torch tensor or MONAI MetaTensor (no copy)."""
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "as_tensor"):  # MetaTensor: drop the metadata first
        x = x.as_tensor()
    return x.detach().cpu().numpy()


def _plain(x: Any) -> Any:
    """Drop MONAI metadata: the z↔channel reshapes change the spatial rank it describes."""
    return x.as_tensor() if hasattr(x, "as_tensor") else x


def _box(R: np.random.RandomState, shape: Sequence[int]) -> tuple[slice, ...]:
    """A random box with sides CUT_BOX_RATIO of each dimension (at least one voxel)."""
    box = []
    for n in shape:
        side = max(1, int(round(R.uniform(*CUT_BOX_RATIO) * n)))
        start = R.randint(0, n - side + 1)
        box.append(slice(start, start + side))
    return tuple(box)


class _Prepare(MapTransform):
    """Check shapes, cast the image to float32 and renumber label ids to 0..K (int32).

    Interpolating transforms carry labels as float32 (exact up to 2**24) and torch lacks most
    ops on uint16/32/64, so ids are renumbered here and mapped back in :class:`_Finish`.
    The caller's arrays are never edited.
    """

    def __init__(self, spatial_dims: int, restore_ids: bool = True):
        super().__init__(_GEOMETRIC, allow_missing_keys=True)
        self.spatial_dims, self.restore_ids = spatial_dims, restore_ids

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        import fastremap

        d = dict(data)
        if IMAGE not in d:
            raise DataError(f"augmentation needs an 'image' key, got keys {sorted(map(str, d))}")
        shape = np.shape(d[IMAGE])
        if len(shape) != self.spatial_dims + 1 or shape[0] != 1:
            raise DataError(f"augmentation expects image (1, *spatial) with {self.spatial_dims} spatial dims, "
                            f"got {shape}")
        restore = {}
        for key in self.key_iterator(d):
            a = _numpy(d[key])
            if a.shape != shape:
                raise DataError(f"'{key}' has shape {a.shape} but 'image' has {shape}; they must match voxel for voxel")
            if key == IMAGE:
                d[key] = np.array(a, dtype=np.float32)  # always a copy
            elif key == LABEL:
                ids, remap = fastremap.renumber(np.ascontiguousarray(a), preserve_zero=True, in_place=False)
                if self.restore_ids:
                    inverse = np.zeros(max(remap.values(), default=0) + 1, a.dtype)
                    inverse[list(remap.values())] = list(remap.keys())
                    restore[key] = (inverse, a.dtype)
                else:
                    restore[key] = (None, np.int32)
                d[key] = ids.astype(np.int32)
            else:
                restore[key] = (None, a.dtype)
                d[key] = np.array(a)
        d[_RESTORE] = restore
        return d


class _Finish(MapTransform):
    """Back to contiguous numpy: image float32, label ids and mask dtype as they came in."""

    def __init__(self):
        super().__init__(_GEOMETRIC, allow_missing_keys=True)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        restore = d.pop(_RESTORE, {})
        for key in self.key_iterator(d):
            a = _numpy(d[key])
            if key == IMAGE:
                d[key] = np.ascontiguousarray(a, dtype=np.float32)
                continue
            inverse, dtype = restore[key]
            if inverse is not None:
                a = inverse[a.astype(np.int64)]  # nearest-neighbour values are exact integers
            d[key] = np.ascontiguousarray(a, dtype=dtype)
        return d


class _ZToChannel(MapTransform):
    """(1, Z, Y, X) → (Z, Y, X): a 2D transform then moves every section the same way."""

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = _plain(d[key])[0]
        return d


class _ChannelToZ(MapTransform):
    """(Z, Y, X) → (1, Z, Y, X), undoing :class:`_ZToChannel`."""

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = _plain(d[key])[None]
        return d


# --- random transforms (MONAI-compatible: all randomness from self.R) -----------------------


class _RandNumpyd(RandomizableTransform, MapTransform):
    """Base: draw ``_do_transform`` and the parameters from ``self.R``, then edit numpy arrays."""

    copy_input = True  # apply() edits its array in place

    def __init__(self, keys: Sequence[str], prob: float, allow_missing_keys: bool = False):
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        keys = list(self.key_iterator(d))
        self.randomize(None)
        if not self._do_transform or not keys:
            return d
        arrays = {k: _numpy(d[k]) for k in keys}
        params = self.draw(arrays[keys[0]].shape[1:])
        for k, a in arrays.items():
            # Copy: the arrays may be the caller's (MONAI transforms never edit their input either).
            d[k] = self.apply(np.array(a) if self.copy_input else a, params)
        return d

    def draw(self, spatial: tuple[int, ...]) -> Any:
        """Draw this call's parameters from ``self.R`` (shared by all keys)."""
        raise NotImplementedError

    def apply(self, a: np.ndarray, params: Any) -> np.ndarray:
        """Apply to one channel-first array (a private copy: may be edited in place)."""
        raise NotImplementedError


class RandRotate90InPlaned(_RandNumpyd):
    """Rotate by k·90° (k = 1, 2, 3) in the (y, x) plane; a no-op when y and x sizes differ."""

    copy_input = False  # np.rot90 returns a new view and edits nothing

    def draw(self, spatial):
        return int(self.R.randint(1, 4))

    def apply(self, a, k):
        if a.shape[-1] != a.shape[-2]:
            return a
        return np.rot90(a, k, axes=(-2, -1))


class RandMisalignmentd(_RandNumpyd):
    """Shift image, label and mask in-plane from a random section z0 ≥ 1 on (a section slip).

    The shift ``(dy, dx)`` is a non-zero integer vector with entries in ``[-max_shift, max_shift]``;
    the strip it exposes is filled by reflection, identically for image and label.
    """

    def __init__(self, keys, prob, max_shift: int = 8, allow_missing_keys: bool = False):
        super().__init__(keys, prob, allow_missing_keys)
        self.max_shift = max_shift

    def draw(self, spatial):
        z, h, w = spatial
        m = min(self.max_shift, h - 1, w - 1)
        if z < 2 or m < 1:
            return None
        side = 2 * m + 1  # pick one of the side**2 - 1 non-zero shifts
        k = int(self.R.randint(side * side - 1))
        k += k >= side * side // 2
        return int(self.R.randint(1, z)), k // side - m, k % side - m

    def apply(self, a, params):
        if params is None:
            return a
        z0, dy, dx = params
        h, w = a.shape[-2:]
        pad = ((0, 0), (0, 0), (max(dy, 0), max(-dy, 0)), (max(dx, 0), max(-dx, 0)))
        padded = np.pad(a[:, z0:], pad, mode="reflect")
        sy, sx = max(-dy, 0), max(-dx, 0)
        a[:, z0:] = padded[..., sy:sy + h, sx:sx + w]  # out[y, x] = in[y - dy, x - dx]
        return a


class RandInPlaneBlurd(_RandNumpyd):
    """Gaussian blur within each section, sigma drawn from BLUR_SIGMA (out-of-focus imaging).

    Not MONAI's RandGaussianSmoothd: its torch convolution is ~10x slower than scipy here
    (~100 ms vs ~10 ms on a 64x128x128 patch).
    """

    copy_input = False  # gaussian_filter writes a new array

    def draw(self, spatial):
        return self.R.uniform(*BLUR_SIGMA)

    def apply(self, a, sigma):
        from scipy.ndimage import gaussian_filter

        return gaussian_filter(a, (0,) * (a.ndim - 2) + (sigma, sigma), mode="reflect")


class RandMissingSectiond(_RandNumpyd):
    """Blank (set to 0) one or a few whole sections of the image, as lost or unusable sections."""

    def draw(self, spatial):
        z = spatial[0]
        n = int(self.R.randint(1, min(MAX_MISSING_SECTIONS, max(1, z // 4)) + 1))
        return self.R.choice(z, n, replace=False)

    def apply(self, a, sections):
        a[:, sections] = 0
        return a


def _line_kernel(length: int, angle: float) -> np.ndarray:
    """A normalised straight-line kernel through the centre of a length × length square."""
    k = np.zeros((length, length), np.float32)
    c = (length - 1) / 2
    t = np.linspace(-c, c, 2 * length)
    k[np.rint(c + t * math.sin(angle)).astype(int), np.rint(c + t * math.cos(angle)).astype(int)] = 1
    return k / k.sum()


class RandMotionBlurd(_RandNumpyd):
    """Blur a few sections (the image, for 2D) along a random in-plane direction (stage drift)."""

    def draw(self, spatial):
        n_sections = spatial[0] if len(spatial) == 3 else 1
        n = int(self.R.randint(1, min(MAX_MOTION_BLUR_SECTIONS, n_sections) + 1))
        sections = self.R.choice(n_sections, n, replace=False)
        kernels = [_line_kernel(int(self.R.randint(MOTION_BLUR_LENGTH[0], MOTION_BLUR_LENGTH[1] + 1)),
                                self.R.uniform(0, math.pi)) for _ in range(n)]
        return sections, kernels

    def apply(self, a, params):
        from scipy.ndimage import convolve

        sections, kernels = params
        planes = a[0] if a.ndim == 4 else a  # (Z, Y, X), or (1, Y, X) for 2D
        for z, k in zip(sections, kernels):
            planes[z] = convolve(planes[z], k, mode="reflect")
        return a


class RandCutBlurd(_RandNumpyd):
    """Down-sample a random box in-plane by 2-8x and up-sample it back (local loss of resolution)."""

    def draw(self, spatial):
        return _box(self.R, spatial), self.R.uniform(*CUT_BLUR_FACTOR)

    def apply(self, a, params):
        import torch
        import torch.nn.functional as F

        box, factor = params
        region = a[(0, *box)]
        planes = torch.from_numpy(np.ascontiguousarray(region).reshape(-1, 1, *region.shape[-2:]))
        low = [max(1, round(s / factor)) for s in region.shape[-2:]]
        blurred = F.interpolate(F.interpolate(planes, size=low, mode="area"), size=region.shape[-2:], mode="bilinear")
        a[(0, *box)] = blurred.numpy().reshape(region.shape)
        return a


class RandCutNoised(_RandNumpyd):
    """Add strong Gaussian noise (std 0.1-0.3) to a random box of the image."""

    def draw(self, spatial):
        box = _box(self.R, spatial)
        std = self.R.uniform(*CUT_NOISE_STD)
        return box, self.R.normal(0.0, std, size=[s.stop - s.start for s in box]).astype(np.float32)

    def apply(self, a, params):
        box, noise = params
        a[(0, *box)] += noise
        return a
