"""Assigns each prediction (anchor, proposal) to at most one ground-truth box."""

from typing import List, Tuple

import torch

from det3d.layers import nonzero_tuple

__all__ = ["Matcher"]


class Matcher:
    """
    Matches every column (prediction) of a ``(G, R)`` quality matrix (e.g. the IoU of G
    ground-truth boxes with R predictions) to its best row, and labels the match by the band of
    thresholds its quality falls in. Dimension-agnostic: it only sees the matrix.

    With ``thresholds=[0.3, 0.7]`` and ``labels=[0, -1, 1]``: quality in ``[0, 0.3)`` -> 0
    (negative), ``[0.3, 0.7)`` -> -1 (ignored), ``[0.7, inf)`` -> 1 (positive).

    ``allow_low_quality_matches`` (Faster R-CNN, Sec. 3.1.2) also labels 1 every prediction that
    ties for the best quality of some ground truth, so each ground truth gets a positive even when
    none reaches the top threshold. Unlike Detectron2, a ground truth whose best quality is 0
    (it overlaps nothing) adds no positives: otherwise every prediction would tie with it.
    """

    def __init__(
        self, thresholds: List[float], labels: List[int], allow_low_quality_matches: bool = False
    ):
        """
        Args:
            thresholds: increasing band edges.
            labels: ``len(thresholds) + 1`` labels in {-1, 0, 1}, one per band.
            allow_low_quality_matches: see the class docstring.
        """
        thresholds = list(thresholds)
        if thresholds[0] <= 0:
            raise ValueError(f"Matcher: thresholds {thresholds} must be positive")
        if any(lo > hi for lo, hi in zip(thresholds[:-1], thresholds[1:])):
            raise ValueError(f"Matcher: thresholds {thresholds} must be increasing")
        if any(label not in (-1, 0, 1) for label in labels):
            raise ValueError(f"Matcher: labels {list(labels)} must be -1, 0 or 1")
        if len(labels) != len(thresholds) + 1:
            raise ValueError(
                f"Matcher: {len(labels)} labels for {len(thresholds)} thresholds; expected "
                f"{len(thresholds) + 1}"
            )
        self.thresholds = [-float("inf")] + thresholds + [float("inf")]
        self.labels = list(labels)
        self.allow_low_quality_matches = allow_low_quality_matches

    def __call__(self, match_quality_matrix: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            match_quality_matrix (Tensor): (G, R) non-negative qualities.

        Returns:
            matches (Tensor[int64]): (R,) index in [0, G) of the matched ground truth.
            match_labels (Tensor[int8]): (R,) label of each match (-1, 0 or 1).
        """
        if match_quality_matrix.dim() != 2:
            raise ValueError(
                f"Matcher expects a (G, R) matrix, got shape {tuple(match_quality_matrix.shape)}"
            )
        num_pred = match_quality_matrix.shape[1]
        if match_quality_matrix.numel() == 0:
            # No ground truth (or no prediction): everything gets the lowest band's label.
            matches = match_quality_matrix.new_zeros((num_pred,), dtype=torch.int64)
            match_labels = match_quality_matrix.new_full(
                (num_pred,), self.labels[0], dtype=torch.int8
            )
            return matches, match_labels
        if not torch.all(match_quality_matrix >= 0):
            raise ValueError("Matcher: the match quality matrix has negative or NaN entries")

        matched_vals, matches = match_quality_matrix.max(dim=0)
        match_labels = self.label_matches(matched_vals)
        if self.allow_low_quality_matches:
            best_per_gt = match_quality_matrix.max(dim=1).values
            self.set_low_quality_matches_(match_labels, match_quality_matrix, best_per_gt)
        return matches, match_labels

    def label_matches(self, matched_vals: torch.Tensor) -> torch.Tensor:
        """(R,) best qualities -> (R,) int8 band labels (before low-quality matches)."""
        match_labels = matched_vals.new_ones(matched_vals.shape, dtype=torch.int8)
        for label, low, high in zip(self.labels, self.thresholds[:-1], self.thresholds[1:]):
            match_labels[(matched_vals >= low) & (matched_vals < high)] = label
        return match_labels

    @staticmethod
    def set_low_quality_matches_(
        match_labels: torch.Tensor, match_quality_matrix: torch.Tensor, best_per_gt: torch.Tensor
    ) -> None:
        """
        Labels 1, in place, the columns of ``match_quality_matrix`` that equal the best quality of
        some row (``best_per_gt``, which may be the best over more columns than the matrix has:
        callers that process the predictions in chunks pass the global best).
        """
        ties = (match_quality_matrix == best_per_gt[:, None]) & (best_per_gt[:, None] > 0)
        _, pred_inds = nonzero_tuple(ties)
        # The matched index stays the best ground truth of the prediction, as in Detectron2.
        match_labels[pred_inds] = 1
