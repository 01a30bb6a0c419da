"""
Per-input counts that grow with the input: proposals and detections for volumes larger than the
ones a model was planned on.

Detectron2 keeps ``PRE_NMS_TOPK_TEST``, ``POST_NMS_TOPK_TEST`` and ``DETECTIONS_PER_IMAGE`` per
image, which suits photographs of similar size. A 3D model trained on 64^3 volumes may be applied
to a 128^3 volume (or a tile of one) holding eight times the objects; with the counts fixed it
keeps the same number of proposals for all of them and misses objects. With
``TEST.COUNTS_REFERENCE_SHAPE`` set, those counts are read as counts for an input of that shape,
and an input of more voxels gets them scaled by its voxel count over the reference's (never
fewer than as written). Training is unchanged.
"""

import math
from typing import Sequence

__all__ = ["counts_reference_voxels", "scaled_count"]


def counts_reference_voxels(shape: Sequence[int], ndim: int) -> float:
    """
    The voxel count of ``TEST.COUNTS_REFERENCE_SHAPE`` (0.0 when empty: counts stay fixed).

    Raises:
        ValueError: a shape that is not ``ndim`` positive sizes.
    """
    shape = list(shape)
    if not shape:
        return 0.0
    if len(shape) != ndim or not all(isinstance(s, int) and s > 0 for s in shape):
        raise ValueError(
            f"TEST.COUNTS_REFERENCE_SHAPE must be [] or {ndim} positive ints (the shape, in "
            f"array order, of the inputs the per-input counts are meant for), got {shape}"
        )
    return float(math.prod(shape))


def scaled_count(count: int, image_size: Sequence[int], reference_voxels: float) -> int:
    """
    ``count`` for an input of ``image_size``: times its voxels over ``reference_voxels`` (rounded
    up) when it has more; as is when it has fewer, when ``reference_voxels`` is 0, or when
    ``count`` is negative (no limit).
    """
    if reference_voxels <= 0 or count < 0:
        return int(count)
    ratio = math.prod(int(s) for s in image_size) / reference_voxels
    return int(math.ceil(count * ratio)) if ratio > 1 else int(count)
