"""N-D data structures: boxes, batched images, per-image instances, masks and their RLE."""

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
from .masks import BitMasks
from .rle import (
    box_mask_to_rle,
    decode_rle,
    encode_rle,
    label_volume_to_rles,
    paint_rles,
    rle_area,
    rle_areas,
    rle_counts,
    rle_iou,
    rle_to_bbox,
    rle_to_coco,
    runs_to_rle,
)

__all__ = [k for k in globals().keys() if not k.startswith("_")]
