"""Builds the proposal generator named by ``cfg.MODEL.PROPOSAL_GENERATOR.NAME``."""

from typing import Dict, Optional

from torch import nn

from det3d.config.unsupported import check_supported
from det3d.layers import ShapeSpec

from ..registries import PROPOSAL_GENERATOR_REGISTRY

__all__ = ["build_proposal_generator"]


def build_proposal_generator(cfg, input_shape: Dict[str, ShapeSpec]) -> Optional[nn.Module]:
    """
    Returns:
        ``PROPOSAL_GENERATOR_REGISTRY.get(name)(cfg, input_shape)``.

    Raises:
        NotImplementedError: ``"PrecomputedProposals"`` (Detectron2's proposals loaded with the
            data) is not implemented in det3d; building ``None`` would only fail later.
    """
    name = cfg.MODEL.PROPOSAL_GENERATOR.NAME
    if name == "PrecomputedProposals":
        check_supported(cfg)
    return PROPOSAL_GENERATOR_REGISTRY.get(name)(cfg, input_shape)
