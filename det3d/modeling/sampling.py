"""Random subsampling of labelled anchors / proposals to a fixed positive fraction."""

from typing import Tuple

import torch

from det3d.layers import nonzero_tuple

__all__ = ["subsample_labels"]


def subsample_labels(
    labels: torch.Tensor, num_samples: int, positive_fraction: float, bg_label: int
) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    Picks at most ``num_samples`` elements, at most ``num_samples * positive_fraction`` of them
    positive, and fills the rest with negatives (Detectron2's sampler). Which elements are picked
    is random (``torch.randperm``), hence deterministic under a fixed torch seed.

    Args:
        labels (Tensor): (N,) with -1 = ignore, ``bg_label`` = negative, anything else = positive.
        num_samples (int): total number to pick.
        positive_fraction (float): in [0, 1], the most positives can take.
        bg_label (int): the negative label.

    Returns:
        pos_idx, neg_idx (Tensor[int64]): indices into ``labels`` of the picked positives and
        negatives; fewer positives than allowed are made up for by negatives.
    """
    if not 0.0 <= positive_fraction <= 1.0:
        raise ValueError(f"subsample_labels: positive_fraction={positive_fraction} not in [0, 1]")
    positive = nonzero_tuple((labels != -1) & (labels != bg_label))[0]
    negative = nonzero_tuple(labels == bg_label)[0]

    num_pos = min(positive.numel(), int(num_samples * positive_fraction))
    num_neg = min(negative.numel(), num_samples - num_pos)

    perm_pos = torch.randperm(positive.numel(), device=positive.device)[:num_pos]
    perm_neg = torch.randperm(negative.numel(), device=negative.device)[:num_neg]
    return positive[perm_pos], negative[perm_neg]
