"""Selection of RPN proposals, and ground truth appended to proposals for the ROI heads."""

import math
from typing import List, Sequence, Tuple, Union

import torch

from det3d.layers import batched_nms, cat
from det3d.structures import Boxes, Instances

__all__ = ["find_top_rpn_proposals", "add_ground_truth_to_proposals"]


def find_top_rpn_proposals(
    proposals: List[torch.Tensor],
    pred_objectness_logits: List[torch.Tensor],
    image_sizes: List[Tuple[int, ...]],
    nms_thresh: float,
    pre_nms_topk: int,
    post_nms_topk: Union[int, Sequence[int]],
    min_box_size: float,
    training: bool = False,
) -> List[Instances]:
    """
    For each image: the ``pre_nms_topk`` highest-scoring proposals of every level, clipped to the
    image, without boxes that have a side below ``min_box_size`` (or empty), then NMS within each
    level (``batched_nms`` with the level as group), then the ``post_nms_topk`` highest-scoring
    ones over all levels (Detectron2's semantics).

    Args:
        proposals: per level, (N, R_l, 2*ndim) decoded boxes.
        pred_objectness_logits: per level, (N, R_l).
        image_sizes: per image, its spatial array shape ``(D, H, W)`` / ``(H, W)`` before padding.
        nms_thresh: IoU threshold of NMS.
        pre_nms_topk, post_nms_topk: see above; ``post_nms_topk`` may be one count per image.
        min_box_size: every side of a kept box is >= this (and > 0).
        training: unused; kept for Detectron2's signature. Non-finite values always raise.

    Returns:
        list[Instances]: per image, ``proposal_boxes`` (Boxes) and ``objectness_logits`` (R,),
        in decreasing score.
    """
    num_images = len(image_sizes)
    device = proposals[0].device

    topk_scores, topk_proposals, level_ids = [], [], []
    batch_idx = torch.arange(num_images, device=device)
    for level_id, (proposals_i, logits_i) in enumerate(zip(proposals, pred_objectness_logits)):
        num_proposals_i = min(logits_i.shape[1], pre_nms_topk)
        topk_scores_i, topk_idx = logits_i.topk(num_proposals_i, dim=1)
        topk_proposals.append(proposals_i[batch_idx[:, None], topk_idx])  # (N, topk, 2*ndim)
        topk_scores.append(topk_scores_i)
        level_ids.append(torch.full((num_proposals_i,), level_id, dtype=torch.int64, device=device))
    topk_scores = cat(topk_scores, dim=1)
    topk_proposals = cat(topk_proposals, dim=1)
    level_ids = cat(level_ids, dim=0)

    results = []
    for n, image_size in enumerate(image_sizes):
        boxes = Boxes(topk_proposals[n].clone())
        scores_per_img = topk_scores[n]
        for what, t in (("boxes", boxes.tensor), ("objectness logits", scores_per_img)):
            if not torch.isfinite(t).all():
                raise FloatingPointError(
                    f"RPN predicted non-finite {what} for image {n} of the batch: training has "
                    "diverged (or the input holds NaN/Inf)"
                )
        boxes.clip(image_size)
        sizes = boxes.sizes()
        keep = (sizes > 0).all(dim=1) & (sizes >= min_box_size).all(dim=1)
        lvl = level_ids
        if not bool(keep.all()):
            boxes, scores_per_img, lvl = boxes[keep], scores_per_img[keep], lvl[keep]

        keep = batched_nms(boxes.tensor, scores_per_img, lvl, nms_thresh)
        keep = keep[: post_nms_topk[n] if isinstance(post_nms_topk, Sequence) else post_nms_topk]

        res = Instances(tuple(image_size))
        res.proposal_boxes = boxes[keep]
        res.objectness_logits = scores_per_img[keep]
        results.append(res)
    return results


def add_ground_truth_to_proposals(
    gt: Union[List[Instances], List[Boxes]], proposals: List[Instances]
) -> List[Instances]:
    """
    Appends each image's ground-truth boxes to its proposals, with a near-certain objectness
    logit, so the ROI heads see every object during training (Detectron2's
    ``PROPOSAL_APPEND_GT``).

    Args:
        gt: per image, Instances with ``gt_boxes`` or a Boxes.
        proposals: per image, Instances with ``proposal_boxes`` and ``objectness_logits`` (and
            possibly other fields, which ``gt`` must then also have).

    Returns:
        list[Instances]: per image, the proposals followed by the ground truth, with the fields of
        ``proposals``.
    """
    if len(gt) != len(proposals):
        raise ValueError(f"{len(gt)} ground-truth entries for {len(proposals)} images of proposals")
    return [_add_ground_truth_single_image(g, p) for g, p in zip(gt, proposals)]


def _add_ground_truth_single_image(gt: Union[Instances, Boxes], proposals: Instances) -> Instances:
    if isinstance(gt, Boxes):
        gt = Instances(proposals.image_size, gt_boxes=gt)
    gt_boxes = gt.gt_boxes
    device = proposals.objectness_logits.device
    # sigmoid(logit) = 1 - 1e-10: a certain proposal that stays finite.
    gt_logit_value = math.log((1.0 - 1e-10) / 1e-10)
    fields = {
        "proposal_boxes": gt_boxes.to(device),
        "objectness_logits": torch.full(
            (len(gt_boxes),), gt_logit_value, dtype=proposals.objectness_logits.dtype, device=device
        ),
    }
    for key, value in proposals.get_fields().items():
        if key in fields:
            continue
        if not gt.has(key):
            raise ValueError(
                f"Proposals have field {key!r} that the ground truth lacks; cannot append the "
                "ground truth to them"
            )
        fields[key] = gt.get(key)
    gt_proposal = Instances(proposals.image_size, **fields)
    return Instances.cat([proposals, gt_proposal])
