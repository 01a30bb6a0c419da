"""ROI heads (box and mask branches) and their registries."""

from .box_head import ROI_BOX_HEAD_REGISTRY, FastRCNNConvFCHead3D, build_box_head
from .cascade_rcnn import CascadeROIHeads3D
from .fast_rcnn import FastRCNNOutputLayers3D, fast_rcnn_inference
from .mask_head import (
    ROI_MASK_HEAD_REGISTRY,
    MaskRCNNConvUpsampleHead3D,
    build_mask_head,
    mask_rcnn_inference,
    mask_rcnn_loss,
    neighbor_mask_loss,
)
from .roi_heads import (
    ROI_HEADS_REGISTRY,
    ROIHeads3D,
    StandardROIHeads3D,
    build_roi_heads,
    select_foreground_proposals,
)

__all__ = [k for k in globals().keys() if not k.startswith("_")]
