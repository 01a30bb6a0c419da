"""
Deterministic transforms of an image ``(C, *spatial)`` and its instance label volume
``(*spatial)``, for 2 or 3 spatial dims. A :class:`Transform` holds all its parameters (drawn
beforehand by an :class:`~det3d.data.transforms.augmentation.Augmentation`), so applying it to the
image and to the labels moves them identically.

Label volumes are moved without interpolation (order 0): their ids never mix.
"""

from typing import List, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

__all__ = [
    "Transform",
    "TransformList",
    "NoOpTransform",
    "CropTransform",
    "PadTransform",
    "FlipTransform",
    "Rot90Transform",
    "ResampleTransform",
    "IntensityTransform",
]


class Transform:
    """
    Base class. Subclasses implement :meth:`apply_image` and, when they move voxels,
    :meth:`apply_labels` (the default leaves labels as they are, right for intensity changes).
    """

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """image: ``(C, *spatial)`` float32. Returns the transformed image."""
        raise NotImplementedError

    def apply_labels(self, labels: np.ndarray) -> np.ndarray:
        """labels: int ``(*spatial)``. Returns the transformed label volume."""
        return labels

    def output_shape(self, shape: Sequence[int]) -> Tuple[int, ...]:
        """Spatial shape after the transform, given the spatial shape before."""
        return tuple(shape)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.__dict__.items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class NoOpTransform(Transform):
    def apply_image(self, image):
        return image


class TransformList(Transform):
    """Transforms applied in order."""

    def __init__(self, transforms: Sequence[Transform]):
        flat: List[Transform] = []
        for t in transforms:
            flat.extend(t.transforms if isinstance(t, TransformList) else [t])
        self.transforms = [t for t in flat if not isinstance(t, NoOpTransform)]

    def apply_image(self, image):
        for t in self.transforms:
            image = t.apply_image(image)
        return image

    def apply_labels(self, labels):
        for t in self.transforms:
            labels = t.apply_labels(labels)
        return labels

    def output_shape(self, shape):
        for t in self.transforms:
            shape = t.output_shape(shape)
        return tuple(shape)

    def __len__(self) -> int:
        return len(self.transforms)


class CropTransform(Transform):
    """Crops ``[start, start + size)`` per spatial axis (must lie inside the volume)."""

    def __init__(self, start: Sequence[int], size: Sequence[int]):
        self.start = tuple(int(s) for s in start)
        self.size = tuple(int(s) for s in size)

    def _slices(self):
        return tuple(slice(a, a + n) for a, n in zip(self.start, self.size))

    def apply_image(self, image):
        return image[(slice(None),) + self._slices()]

    def apply_labels(self, labels):
        return labels[self._slices()]

    def output_shape(self, shape):
        return self.size


class PadTransform(Transform):
    """Pads ``before`` / ``after`` voxels per spatial axis with ``image_value`` and label 0."""

    def __init__(self, before: Sequence[int], after: Sequence[int], image_value: float = 0.0):
        self.before = tuple(int(b) for b in before)
        self.after = tuple(int(a) for a in after)
        self.image_value = float(image_value)

    def _widths(self):
        return list(zip(self.before, self.after))

    def apply_image(self, image):
        return np.pad(image, [(0, 0)] + self._widths(), constant_values=self.image_value)

    def apply_labels(self, labels):
        return np.pad(labels, self._widths(), constant_values=0)

    def output_shape(self, shape):
        return tuple(n + b + a for n, b, a in zip(shape, self.before, self.after))


class FlipTransform(Transform):
    """Flips the given spatial axes (array order: 0 = D in 3D)."""

    def __init__(self, axes: Sequence[int]):
        self.axes = tuple(int(a) for a in axes)

    def apply_image(self, image):
        return np.flip(image, tuple(a + 1 for a in self.axes)) if self.axes else image

    def apply_labels(self, labels):
        return np.flip(labels, self.axes) if self.axes else labels


class Rot90Transform(Transform):
    """Rotates by ``k`` quarter turns in the plane of the last two axes (y, x)."""

    def __init__(self, k: int):
        self.k = int(k) % 4

    def apply_image(self, image):
        return np.rot90(image, self.k, axes=(-2, -1)) if self.k else image

    def apply_labels(self, labels):
        return np.rot90(labels, self.k, axes=(-2, -1)) if self.k else labels

    def output_shape(self, shape):
        shape = tuple(shape)
        return shape[:-2] + shape[-2:][::-1] if self.k % 2 else shape


class ResampleTransform(Transform):
    """
    Resamples by ``zoom`` per spatial axis (scipy.ndimage.zoom): image order 1, labels order 0,
    both to the same ``out_shape``.
    """

    def __init__(self, in_shape: Sequence[int], zoom: Sequence[float]):
        self.in_shape = tuple(int(n) for n in in_shape)
        self.zoom = tuple(float(z) for z in zoom)
        self.out_shape = tuple(max(1, int(round(n * z))) for n, z in zip(self.in_shape, self.zoom))

    def _factors(self):
        # exact factors for the output shape, so image and labels land on the same grid
        return [o / n for o, n in zip(self.out_shape, self.in_shape)]

    def apply_image(self, image):
        if self.out_shape == self.in_shape:
            return image
        out = np.empty((image.shape[0],) + self.out_shape, np.float32)
        for c in range(image.shape[0]):
            out[c] = ndimage.zoom(
                image[c], self._factors(), order=1, grid_mode=True, mode="nearest"
            )
        return out

    def apply_labels(self, labels):
        if self.out_shape == self.in_shape:
            return labels
        return ndimage.zoom(labels, self._factors(), order=0, grid_mode=True, mode="nearest")

    def output_shape(self, shape):
        return self.out_shape


class IntensityTransform(Transform):
    """
    ``x -> sign(y) |y|^gamma`` with ``y = x * scale + shift``, then Gaussian noise of std
    ``noise_std`` drawn from ``np.random.default_rng(noise_seed)``. Labels are untouched.
    """

    def __init__(
        self,
        scale: float = 1.0,
        shift: float = 0.0,
        gamma: float = 1.0,
        noise_std: float = 0.0,
        noise_seed: Optional[int] = None,
    ):
        self.scale, self.shift, self.gamma = float(scale), float(shift), float(gamma)
        self.noise_std, self.noise_seed = float(noise_std), noise_seed

    def apply_image(self, image):
        x = image.astype(np.float32, copy=True)
        x *= self.scale
        x += self.shift
        if self.gamma != 1.0:
            x = (np.sign(x) * np.abs(x) ** self.gamma).astype(np.float32)
        if self.noise_std > 0:
            rng = np.random.default_rng(self.noise_seed)
            x += rng.normal(0.0, self.noise_std, x.shape).astype(np.float32)
        return x
