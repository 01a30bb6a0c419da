"""Ops and N-D layer helpers. Compiled ops come from det3d._C (see csrc/)."""

from .batch_norm import FrozenBatchNorm, get_norm
from .checkpoint import checkpoint_module
from .layer_norm import DropPath, LayerNorm, drop_path
from .losses import (
    CLS_LOSS_TYPES,
    classification_loss,
    dice_loss,
    giou_loss,
    huber_soft_clip_loss,
    sigmoid_focal_loss,
    smooth_l1_loss,
    softmax_focal_loss,
)
from .nms import batched_nms, nms
from .resize import linear_resize_matrix, resize_linear
from .roi_align import ROIAlign, roi_align
from .shape_spec import ShapeSpec
from .wrappers import (
    Conv,
    Conv3d,
    cat,
    conv_nd,
    conv_norm_relu_stack,
    conv_transpose_nd,
    max_pool_nd,
    nonzero_tuple,
)

__all__ = [k for k in globals().keys() if not k.startswith("_")]
