"""
Random augmentations: each :class:`Augmentation` draws its parameters from one
``np.random.Generator`` (the mapper's, reseeded per sample) and returns a deterministic
:class:`~det3d.data.transforms.transform.Transform`, which :class:`AugInput` applies to the image
and the labels together.

Protocol (as in Detectron2)::

    aug_input = AugInput(image, labels)
    transforms = apply_augmentations([RandomCrop(...), RandomFlip(...)], aug_input, rng)
    image, labels = aug_input.image, aug_input.labels
"""

from typing import List, Optional, Sequence, Tuple

import numpy as np

from .transform import (
    CropTransform,
    FlipTransform,
    IntensityTransform,
    NoOpTransform,
    PadTransform,
    ResampleTransform,
    Rot90Transform,
    Transform,
    TransformList,
)

__all__ = [
    "AugInput",
    "Augmentation",
    "RandomCrop",
    "RandomFlip",
    "RandomRotate90XY",
    "RandomIntensity",
    "RandomScale",
    "check_scale_range",
    "apply_augmentations",
]


class AugInput:
    """
    An image ``(C, *spatial)`` and its label volume ``(*spatial)`` (or None), transformed together.
    """

    def __init__(self, image: np.ndarray, labels: Optional[np.ndarray] = None):
        if labels is not None and tuple(image.shape[1:]) != tuple(labels.shape):
            raise ValueError(
                f"AugInput: image {image.shape} and labels {labels.shape} differ in shape"
            )
        self.image = image
        self.labels = labels

    @property
    def spatial_shape(self) -> Tuple[int, ...]:
        return tuple(self.image.shape[1:])

    def transform(self, t: Transform) -> None:
        self.image = t.apply_image(self.image)
        if self.labels is not None:
            self.labels = t.apply_labels(self.labels)


class Augmentation:
    """Draws a Transform for an input: ``get_transform(aug_input, rng) -> Transform``."""

    def get_transform(self, aug_input: AugInput, rng: np.random.Generator) -> Transform:
        raise NotImplementedError

    def __call__(self, aug_input: AugInput, rng: np.random.Generator) -> Transform:
        t = self.get_transform(aug_input, rng)
        aug_input.transform(t)
        return t

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.__dict__.items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


def apply_augmentations(
    augmentations: Sequence[Augmentation], aug_input: AugInput, rng: np.random.Generator
) -> TransformList:
    """Applies augmentations in order; returns the transforms they drew."""
    return TransformList([aug(aug_input, rng) for aug in augmentations])


class RandomCrop(Augmentation):
    """
    Crops ``crop_size`` per spatial axis; an axis shorter than its crop is padded (image 0,
    labels 0) at a random offset. With probability ``instance_bias`` (when the input has labels
    with instances) the crop is placed so that it contains the centre of a random instance.
    """

    def __init__(self, crop_size: Sequence[int], instance_bias: float = 0.5):
        self.crop_size = tuple(int(c) for c in crop_size)
        self.instance_bias = float(instance_bias)

    def get_transform(self, aug_input, rng):
        shape = aug_input.spatial_shape
        size = self.crop_size
        if len(size) != len(shape):
            raise ValueError(
                f"RandomCrop: crop size {size} does not match the volume shape {shape}"
            )
        pad_total = [max(0, c - n) for c, n in zip(size, shape)]
        before = [int(rng.integers(0, p + 1)) for p in pad_total]
        ts: List[Transform] = []
        if any(pad_total):
            ts.append(PadTransform(before, [p - b for p, b in zip(pad_total, before)]))
        padded = [n + p for n, p in zip(shape, pad_total)]
        target = None
        if aug_input.labels is not None and rng.random() < self.instance_bias:
            target = self._instance_point(aug_input.labels, rng)
        start = []
        for ax, (n, c) in enumerate(zip(padded, size)):
            if target is None:
                start.append(int(rng.integers(0, n - c + 1)))
            else:  # any start with start <= point < start + c, within the volume
                p = target[ax] + before[ax]
                lo, hi = max(0, p - c + 1), min(n - c, p)
                start.append(int(rng.integers(lo, hi + 1)))
        if any(s != 0 for s in start) or any(c != n for c, n in zip(size, padded)):
            ts.append(CropTransform(start, size))
        return TransformList(ts) if ts else NoOpTransform()

    @staticmethod
    def _instance_point(labels: np.ndarray, rng) -> Optional[Tuple[int, ...]]:
        # a random foreground voxel: larger instances are picked more often, which is fine
        flat = np.flatnonzero(labels)
        if flat.size == 0:
            return None
        return np.unravel_index(int(flat[rng.integers(flat.size)]), labels.shape)


class RandomFlip(Augmentation):
    """Flips each of ``axes`` (array axes, 0 = D in 3D) independently with probability ``prob``."""

    def __init__(self, axes: Sequence[int], prob: float = 0.5):
        self.axes = tuple(int(a) for a in axes)
        self.prob = float(prob)

    def get_transform(self, aug_input, rng):
        ndim = len(aug_input.spatial_shape)
        for a in self.axes:
            if not 0 <= a < ndim:
                raise ValueError(f"RandomFlip: axis {a} out of range for {ndim} spatial dims")
        draws = [rng.random() < self.prob for _ in self.axes]
        flips = [a for a, d in zip(self.axes, draws) if d]
        return FlipTransform(flips) if flips else NoOpTransform()


class RandomRotate90XY(Augmentation):
    """
    Rotates by a random multiple of 90 degrees in the (y, x) plane. Where H != W only 0 or 180
    degrees are drawn, so the shape (and the batch's common crop size) never changes.
    """

    def get_transform(self, aug_input, rng):
        h, w = aug_input.spatial_shape[-2:]
        k = int(rng.integers(4)) if h == w else 2 * int(rng.integers(2))
        return Rot90Transform(k) if k else NoOpTransform()


class RandomIntensity(Augmentation):
    """
    Random scale, shift and gamma drawn uniformly from the given ``(min, max)`` ranges (in that
    order, each always drawn so the random stream does not depend on which are enabled), and
    Gaussian noise of std ``noise_std``.
    """

    def __init__(self, scale=(1.0, 1.0), shift=(0.0, 0.0), gamma=(1.0, 1.0), noise_std=0.0):
        self.scale, self.shift, self.gamma = tuple(scale), tuple(shift), tuple(gamma)
        self.noise_std = float(noise_std)

    def get_transform(self, aug_input, rng):
        scale = rng.uniform(*self.scale)
        shift = rng.uniform(*self.shift)
        # gamma drawn log-uniformly so that g and 1/g are equally likely
        lo, hi = np.log(self.gamma[0]), np.log(self.gamma[1])
        gamma = float(np.exp(rng.uniform(lo, hi)))
        noise_seed = int(rng.integers(2**31))
        return IntensityTransform(scale, shift, gamma, self.noise_std, noise_seed)


def check_scale_range(scale_range: Sequence[float], prob: float, names=("range", "prob")) -> None:
    """
    Raises ValueError naming ``names`` unless ``scale_range`` is empty (off) or ``(min, max)``
    with ``0 < min <= max``, and ``0 <= prob <= 1``.
    """
    scale_range = list(scale_range)
    if scale_range and (
        len(scale_range) != 2 or not 0 < float(scale_range[0]) <= float(scale_range[1])
    ):
        raise ValueError(
            f"{names[0]} must be empty (off) or [min, max] with 0 < min <= max, got {scale_range}"
        )
    if not 0.0 <= float(prob) <= 1.0:
        raise ValueError(f"{names[1]} must lie in [0, 1], got {prob}")


class RandomScale(Augmentation):
    """
    With probability ``prob``, zooms every spatial axis by one factor drawn log-uniformly from
    ``scale_range = (min, max)`` (image linear, labels nearest: :class:`ResampleTransform`), so
    objects train at sizes the dataset holds few of. The output's shape is the zoomed one; the
    caller crops or pads it (:class:`RandomCrop`). Both draws are always made, so the random
    stream does not depend on ``prob``.
    """

    def __init__(self, scale_range: Sequence[float], prob: float = 1.0):
        check_scale_range(
            scale_range, prob, names=("RandomScale: scale_range", "RandomScale: prob")
        )
        if not len(scale_range):
            raise ValueError("RandomScale: scale_range is empty")
        self.scale_range = tuple(float(s) for s in scale_range)
        self.prob = float(prob)

    def get_transform(self, aug_input, rng):
        apply = rng.random() < self.prob
        lo, hi = np.log(self.scale_range[0]), np.log(self.scale_range[1])
        scale = float(np.exp(rng.uniform(lo, hi)))
        shape = aug_input.spatial_shape
        t = ResampleTransform(shape, [scale] * len(shape))
        return t if apply and t.out_shape != shape else NoOpTransform()
