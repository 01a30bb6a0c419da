"""Proposal generators (the RPN) and proposal helpers."""

from .build import build_proposal_generator
from .proposal_utils import add_ground_truth_to_proposals, find_top_rpn_proposals
from .rpn import RPN3D, StandardRPNHead3D, build_rpn_head

__all__ = [k for k in globals().keys() if not k.startswith("_")]
