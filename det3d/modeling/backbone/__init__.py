"""Backbones: ``Backbone`` (the interface), ResNet, FPN, and ``build_backbone``."""

from .backbone import Backbone
from .build import build_backbone
from .convnext import ConvNeXt, ConvNeXtBlock, build_convnext_backbone, build_convnext_fpn_backbone
from .fpn import FPN, LastLevelMaxPool, build_fpn_on, build_resnet3d_fpn_backbone
from .hiera import Hiera, HieraBlock, build_hiera_backbone, build_hiera_fpn_backbone
from .resnet import (
    BasicBlock,
    BasicStem,
    BottleneckBlock,
    CNNBlockBase,
    ResNet,
    build_resnet3d_backbone,
    per_axis,
)
from .simple_feature_pyramid import SimpleFeaturePyramid, build_vit_backbone, build_vit_sfp_backbone
from .vit import ViT

__all__ = [k for k in globals().keys() if not k.startswith("_")]
