"""Meta-architectures (whole models) and ``build_model``."""

from .build import META_ARCH_REGISTRY, build_model, count_parameters, freeze_modules
from .rcnn import GeneralizedRCNN3D, ProposalNetwork3D
from .slice_fusion_rcnn import SliceFusionRCNN

__all__ = [k for k in globals().keys() if not k.startswith("_")]
