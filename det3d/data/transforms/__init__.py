"""Transforms (deterministic) and augmentations (random, drawing transforms) for volumes."""

from .augmentation import (
    AugInput,
    Augmentation,
    RandomCrop,
    RandomFlip,
    RandomIntensity,
    RandomRotate90XY,
    RandomScale,
    apply_augmentations,
    check_scale_range,
)
from .copy_paste import check_copy_paste, paste_touching_copies
from .mosaic import check_mosaic, join_volumes
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

__all__ = [k for k in globals().keys() if not k.startswith("_")]
