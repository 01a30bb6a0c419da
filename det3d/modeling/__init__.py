"""
det3d's model parts. Importing this package registers every part (backbones, anchor generators,
RPN, ROI heads, box and mask heads, foreground heads, slice fusions, meta-architectures) in the
registries of :mod:`det3d.modeling.registries`.
"""

from det3d.layers import ShapeSpec

from .anchor_generator import DefaultAnchorGenerator3D, build_anchor_generator
from .backbone import (
    FPN,
    Backbone,
    ResNet,
    build_backbone,
    build_resnet3d_backbone,
    build_resnet3d_fpn_backbone,
)
from .box_regression import Box2BoxTransform
from .foreground_head import FPNForegroundCenterHead, FPNForegroundHead, build_foreground_head
from .matcher import Matcher
from .meta_arch import (
    GeneralizedRCNN3D,
    ProposalNetwork3D,
    SliceFusionRCNN,
    build_model,
    freeze_modules,
)
from .poolers import ROIPooler
from .postprocessing import detector_postprocess, instances_to_label_volume, paste_mask
from .proposal_generator import RPN3D, build_proposal_generator
from .registries import (
    ANCHOR_GENERATOR_REGISTRY,
    BACKBONE_REGISTRY,
    FOREGROUND_HEAD_REGISTRY,
    META_ARCH_REGISTRY,
    PROPOSAL_GENERATOR_REGISTRY,
    ROI_BOX_HEAD_REGISTRY,
    ROI_HEADS_REGISTRY,
    ROI_MASK_HEAD_REGISTRY,
    RPN_HEAD_REGISTRY,
    SLICE_FUSION_REGISTRY,
)
from .roi_heads import (
    FastRCNNConvFCHead3D,
    FastRCNNOutputLayers3D,
    MaskRCNNConvUpsampleHead3D,
    ROIHeads3D,
    StandardROIHeads3D,
    build_box_head,
    build_mask_head,
    build_roi_heads,
)
from .sampling import subsample_labels
from .slice_fusion import (
    AttentionFusion,
    CenterSlice,
    ChannelStack,
    ConvFusion,
    SliceFusion,
    SliceWeights,
    WindowedSliceWeights,
    build_slice_fusion,
)
from .slice_linking import SliceLinks, link_slice_instances

__all__ = [k for k in globals().keys() if not k.startswith("_")]
