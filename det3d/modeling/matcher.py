"""Assigns each prediction (anchor, proposal) to at most one ground-truth box."""

from typing import List, Sequence, Tuple

import torch

from det3d.layers import nonzero_tuple
from det3d.structures import Boxes, matched_boxlist_iou

__all__ = ["Matcher", "ATSSMatcher"]


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


class ATSSMatcher:
    """
    Adaptive Training Sample Selection (Zhang et al., "Bridging the Gap Between Anchor-based and
    Anchor-free Detection", CVPR 2020), the anchor matching nnDetection uses for 3D detection.

    Why it matters in 3D: an IoU threshold tuned on 2D boxes is far stricter on 3D ones (a box
    shifted or scaled by a given fraction per axis loses IoU once per axis), so with one anchor
    size per octave almost no anchor of a 3D object reaches the RPN's 0.7, and each object gets
    a single positive anchor, the low-quality match. ATSS sets one threshold per ground truth
    from its own candidates instead:

    1. per pyramid level, the ``topk`` anchors whose centres lie nearest the ground truth's
       centre are its candidates;
    2. its threshold is the mean plus the standard deviation of the candidates' IoUs;
    3. candidates at or above it whose centre lies inside the ground-truth box are positive
       (with ``center_in_gt``); a ground truth none of whose candidates passes, but that
       overlaps one, gets its best candidate, so no object goes without a positive;
    4. an anchor positive for several ground truths is matched to the one of highest IoU.

    Every other anchor is negative (ATSS ignores none).
    """

    def __init__(self, topk: int = 9, center_in_gt: bool = True):
        """
        Args:
            topk: candidates per ground truth and pyramid level (anchors nearest its centre).
            center_in_gt: positives must have their centre inside the ground-truth box.
        """
        if int(topk) != topk or topk < 1:
            raise ValueError(f"ATSSMatcher: topk {topk!r} must be an integer >= 1")
        self.topk = int(topk)
        self.center_in_gt = bool(center_in_gt)

    def __call__(
        self, gt_boxes: Boxes, anchors: Boxes, num_anchors_per_level: Sequence[int]
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            gt_boxes: G ground-truth boxes.
            anchors: the R anchors of all pyramid levels, level after level.
            num_anchors_per_level: R_l per level (they sum to R).

        Returns:
            matches (Tensor[int64]): (R,) index in [0, G) of the matched ground truth (0 for
                negatives).
            match_labels (Tensor[int8]): (R,) 1 = positive, 0 = negative.
        """
        num_anchors = len(anchors)
        if sum(num_anchors_per_level) != num_anchors:
            raise ValueError(
                f"ATSSMatcher: {list(num_anchors_per_level)} anchors per level do not add up to "
                f"the {num_anchors} anchors given"
            )
        matches = torch.zeros(num_anchors, dtype=torch.int64, device=anchors.device)
        labels = torch.zeros(num_anchors, dtype=torch.int8, device=anchors.device)
        if len(gt_boxes) == 0 or num_anchors == 0:
            return matches, labels
        gt_centers, centers = gt_boxes.centers(), anchors.centers()
        candidates, start = [], 0
        for n in num_anchors_per_level:
            if n:
                dist = torch.cdist(gt_centers, centers[start : start + n])  # (G, R_l)
                candidates.append(
                    dist.topk(min(self.topk, n), dim=1, largest=False).indices + start
                )
            start += n
        cand = torch.cat(candidates, dim=1)  # (G, K) indices into the anchors
        num_gt, k = cand.shape
        gt = gt_boxes.tensor
        iou = matched_boxlist_iou(
            Boxes(gt[:, None].expand(-1, k, -1).reshape(num_gt * k, -1)), anchors[cand.flatten()]
        ).view(num_gt, k)
        threshold = iou.mean(dim=1) + iou.std(dim=1, unbiased=True).nan_to_num(0.0)
        positive = (iou >= threshold[:, None]) & (iou > 0)
        if self.center_in_gt:
            d = gt_boxes.ndim
            c = centers[cand]  # (G, K, ndim)
            positive &= ((c > gt[:, None, :d]) & (c < gt[:, None, d:])).all(dim=2)
        best = iou.argmax(dim=1)
        lonely = ~positive.any(dim=1) & (iou.max(dim=1).values > 0)
        positive[lonely, best[lonely]] = True
        g_idx, k_idx = positive.nonzero(as_tuple=True)
        anchor_idx, value = cand[g_idx, k_idx], iou[g_idx, k_idx]
        # one ground truth per anchor: the highest IoU (ties: the lower index), deterministically
        order = torch.argsort(value, descending=True, stable=True)
        order = order[torch.argsort(anchor_idx[order], stable=True)]
        anchor_idx, g_idx = anchor_idx[order], g_idx[order]
        first = torch.ones_like(anchor_idx, dtype=torch.bool)
        first[1:] = anchor_idx[1:] != anchor_idx[:-1]
        matches[anchor_idx[first]] = g_idx[first]
        labels[anchor_idx[first]] = 1
        return matches, labels
