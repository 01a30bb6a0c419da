"""Builds the proposal generator named by ``cfg.MODEL.PROPOSAL_GENERATOR.NAME``."""

from typing import Dict, Optional

from torch import nn

from det3d.layers import ShapeSpec

from ..registries import PROPOSAL_GENERATOR_REGISTRY

__all__ = ["build_proposal_generator"]


def build_proposal_generator(cfg, input_shape: Dict[str, ShapeSpec]) -> Optional[nn.Module]:
    """
    Returns:
        ``PROPOSAL_GENERATOR_REGISTRY.get(name)(cfg, input_shape)``, or None when the name is
        ``"PrecomputedProposals"`` (proposals come with the data, as in Detectron2).
    """
    name = cfg.MODEL.PROPOSAL_GENERATOR.NAME
    if name == "PrecomputedProposals":
        return None
    return PROPOSAL_GENERATOR_REGISTRY.get(name)(cfg, input_shape)
