"""Backbones: ``Backbone`` (the interface), ResNet, FPN, and ``build_backbone``."""

from .backbone import Backbone
from .build import build_backbone
from .fpn import FPN, LastLevelMaxPool, build_resnet3d_fpn_backbone
from .resnet import (
    BasicBlock,
    BasicStem,
    BottleneckBlock,
    CNNBlockBase,
    ResNet,
    build_resnet3d_backbone,
    per_axis,
)

__all__ = [k for k in globals().keys() if not k.startswith("_")]
