"""Builds the backbone named by ``cfg.MODEL.BACKBONE.NAME``."""

from typing import Optional

from det3d.layers import ShapeSpec

from ..registries import BACKBONE_REGISTRY
from .backbone import Backbone

__all__ = ["build_backbone"]


def build_backbone(cfg, input_shape: Optional[ShapeSpec] = None) -> Backbone:
    """
    Args:
        cfg: a det3d CfgNode.
        input_shape: defaults to ``ShapeSpec(channels=len(cfg.MODEL.PIXEL_MEAN))``.

    Returns:
        Backbone: ``BACKBONE_REGISTRY.get(cfg.MODEL.BACKBONE.NAME)(cfg, input_shape)``, with
        activation checkpointing on when ``cfg.MODEL.BACKBONE.CHECKPOINT`` is set.
    """
    if input_shape is None:
        input_shape = ShapeSpec(channels=len(cfg.MODEL.PIXEL_MEAN))
    name = cfg.MODEL.BACKBONE.NAME
    backbone = BACKBONE_REGISTRY.get(name)(cfg, input_shape)
    if not isinstance(backbone, Backbone):
        raise TypeError(
            f"MODEL.BACKBONE.NAME={name!r} built a {type(backbone).__name__}, not a Backbone"
        )
    if cfg.MODEL.BACKBONE.CHECKPOINT:
        backbone.set_activation_checkpointing(True)  # raises where the backbone cannot
    return backbone
