"""N-D data structures: boxes, batched images, per-image instances, masks."""
from .boxes import (
    Boxes,
    BoxMode,
    matched_boxlist_iou,
    pairwise_intersection,
    pairwise_ioa,
    pairwise_iou,
)
from .image_list import ImageList
from .instances import Instances

__all__ = [k for k in globals().keys() if not k.startswith("_")]
