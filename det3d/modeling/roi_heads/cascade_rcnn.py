"""
Cascade R-CNN (Cai & Vasconcelos, 2018) box branch in N spatial dims: a sequence of box heads,
each trained on the boxes the previous one regressed, against a stricter IoU for foreground.

A single box head trained at IoU 0.5 calls a proposal that half-covers an object background and
one that covers it and half its neighbour foreground; in 3D, where few proposals reach a high IoU
(a cube at 0.8 of the side in each axis is already at IoU 0.5), this is where touching objects
are lost. Each stage sees better boxes than the one before, so it can be stricter (IoU 0.5, 0.6,
0.7 by default) without running out of foreground RoIs. At inference the class probabilities of
all stages are averaged and the last stage's boxes are kept, as in Detectron2's
``CascadeROIHeads``, whose config keys (``MODEL.ROI_BOX_CASCADE_HEAD``) this reads. The mask
branch is :class:`StandardROIHeads3D`'s, on the first stage's sampled RoIs in training and on the
final detections at inference.
"""

from typing import Dict, List

import torch
from torch import nn
from torch.autograd.function import Function

from det3d.config import configurable
from det3d.layers import ShapeSpec
from det3d.structures import Boxes, Instances, pairwise_iou

from ..box_regression import Box2BoxTransform, box_reg_weights
from ..matcher import Matcher
from ..registries import ROI_HEADS_REGISTRY
from .box_head import build_box_head
from .fast_rcnn import FastRCNNOutputLayers3D, fast_rcnn_inference
from .roi_heads import StandardROIHeads3D

__all__ = ["CascadeROIHeads3D"]


class _ScaleGradient(Function):
    """Identity forward; the gradient scaled (the stages share the backbone's features)."""

    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x

    @staticmethod
    def backward(ctx, grad_output):
        return grad_output * ctx.scale, None


@ROI_HEADS_REGISTRY.register()
class CascadeROIHeads3D(StandardROIHeads3D):
    """
    :class:`StandardROIHeads3D` with ``len(MODEL.ROI_BOX_CASCADE_HEAD.IOUS)`` box stages (one box
    pooler, a box head and predictor per stage; class-agnostic box regression).

    Training: stage 0 samples RoIs from the proposals as the standard heads do; stage ``k > 0``
    takes the boxes stage ``k - 1`` regressed for the same RoIs, labels them against the ground
    truth at ``IOUS[k]`` (no sampling) and is trained on them. Losses are ``loss_cls_stage{k}``
    and ``loss_box_reg_stage{k}``; the pooled features' gradient is divided by the number of
    stages. Inference: the proposals pass through every stage, each re-pooling the previous
    stage's boxes; a RoI's class probabilities are the mean of the stages', its boxes the last
    stage's, then score threshold and NMS as in :func:`fast_rcnn_inference`.
    """

    @configurable
    def __init__(
        self,
        *,
        box_in_features: List[str],
        box_pooler,
        box_heads: List[nn.Module],
        box_predictors: List[nn.Module],
        proposal_matchers: List[Matcher],
        **kwargs,
    ):
        """
        Args:
            box_heads, box_predictors, proposal_matchers: one per stage, the same number.
            kwargs: see :class:`StandardROIHeads3D` (its ``proposal_matcher`` is stage 0's).
        """
        if not len(box_heads) == len(box_predictors) == len(proposal_matchers) >= 1:
            raise ValueError(
                f"CascadeROIHeads3D: {len(box_heads)} box heads, {len(box_predictors)} predictors "
                f"and {len(proposal_matchers)} matchers: need one of each per stage (>= 1)"
            )
        if kwargs.get("train_on_pred_boxes"):
            raise ValueError(
                "MODEL.ROI_BOX_HEAD.TRAIN_ON_PRED_BOXES is not supported by CascadeROIHeads3D"
            )
        kwargs.pop("proposal_matcher", None)
        super().__init__(
            box_in_features=box_in_features,
            box_pooler=box_pooler,
            box_head=nn.ModuleList(box_heads),
            box_predictor=nn.ModuleList(box_predictors),
            proposal_matcher=proposal_matchers[0],
            **kwargs,
        )
        self.num_cascade_stages = len(box_heads)
        self.proposal_matchers = proposal_matchers

    @classmethod
    def _init_box_head(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        node = cfg.MODEL.ROI_BOX_CASCADE_HEAD
        ious, weights = list(node.IOUS), list(node.BBOX_REG_WEIGHTS)
        if len(ious) != len(weights) or not ious:
            raise ValueError(
                f"MODEL.ROI_BOX_CASCADE_HEAD: IOUS {ious} and BBOX_REG_WEIGHTS (one list per "
                f"stage, {len(weights)} given) must have the same length >= 1"
            )
        if not all(0.0 < float(t) < 1.0 for t in ious):
            raise ValueError(f"MODEL.ROI_BOX_CASCADE_HEAD.IOUS {ious} must each lie in (0, 1)")
        if cfg.MODEL.ROI_BOX_HEAD.IOU_HEAD.ENABLED:
            raise ValueError(
                "MODEL.ROI_BOX_HEAD.IOU_HEAD.ENABLED: the IoU head is built by StandardROIHeads3D "
                "only, not by CascadeROIHeads3D"
            )
        if not cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG:
            raise ValueError(
                "CascadeROIHeads3D refines one box per RoI from stage to stage: set "
                "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG True"
            )
        ndim = cfg.MODEL.SPATIAL_DIMS
        in_features, box_pooler, shape = cls._box_pooler(cfg, input_shape)
        heads, predictors, matchers = [], [], []
        for iou, w in zip(ious, weights):
            head = build_box_head(cfg, shape)
            heads.append(head)
            predictors.append(
                FastRCNNOutputLayers3D(
                    cfg,
                    head.output_shape,
                    box2box_transform=Box2BoxTransform(weights=box_reg_weights(w, ndim)),
                )
            )
            matchers.append(Matcher([float(iou)], [0, 1], allow_low_quality_matches=False))
        return {
            "box_in_features": in_features,
            "box_pooler": box_pooler,
            "box_heads": heads,
            "box_predictors": predictors,
            "proposal_matchers": matchers,
        }

    def box_head_input(self, pooled: torch.Tensor) -> torch.Tensor:
        if self.training:
            return _ScaleGradient.apply(pooled, 1.0 / self.num_cascade_stages)
        return pooled

    def _stage(self, features, proposals: List[Instances], k: int):
        boxes = [x.proposal_boxes for x in proposals]
        return self._stage_predictions(features, boxes, [self._stages[k]])[0]

    @property
    def _stages(self):
        """(box head, predictor) of each stage."""
        return list(zip(self.box_head, self.box_predictor))

    def _forward_box(self, features, proposals: List[Instances], targets=None):
        stages = []  # (predictions, proposals) per stage
        for k in range(self.num_cascade_stages):
            if k > 0:
                proposals = self._next_proposals(stages[-1], k - 1)
                if self.training:
                    proposals = self._match_and_label(proposals, k, targets)
            stages.append((self._stage(features, proposals, k), proposals))
        if self.training:
            losses = {}
            for k, (predictions, props) in enumerate(stages):
                for name, value in self.box_predictor[k].losses(predictions, props).items():
                    losses[f"{name}_stage{k}"] = value
            return losses
        probs = [
            self.box_predictor[k].predict_probs(p, props) for k, (p, props) in enumerate(stages)
        ]
        scores = [sum(per_stage) / self.num_cascade_stages for per_stage in zip(*probs)]
        last = self.box_predictor[-1]
        predictions, props = stages[-1]
        instances, _ = fast_rcnn_inference(
            last.predict_boxes(predictions, props),
            scores,
            [x.image_size for x in props],
            last.test_score_thresh,
            last.test_nms_thresh,
            last.test_topk_per_image,
            last.counts_reference_voxels,
        )
        return instances

    @torch.no_grad()
    def _next_proposals(self, stage, k: int) -> List[Instances]:
        """The boxes stage ``k`` regressed, clipped, as the next stage's proposals."""
        predictions, proposals = stage
        out = []
        for p, boxes in zip(proposals, self.box_predictor[k].predict_boxes(predictions, proposals)):
            boxes = Boxes(boxes.detach())
            boxes.clip(p.image_size)
            if self.training:  # an empty box has no IoU to learn from
                boxes = boxes[boxes.nonempty()]
            out.append(Instances(p.image_size, proposal_boxes=boxes))
        return out

    @torch.no_grad()
    def _match_and_label(self, proposals: List[Instances], k: int, targets) -> List[Instances]:
        """Labels stage ``k``'s boxes against the ground truth at its IoU (no sampling)."""
        for p, t in zip(proposals, targets):
            idx, labels = self.proposal_matchers[k](pairwise_iou(t.gt_boxes, p.proposal_boxes))
            p.gt_classes = self.matched_classes(idx, labels, t.gt_classes)
            # the boxes only: a later stage has no mask branch to feed
            self.attach_matched_gt(p, t, idx, fields=("gt_boxes",))
        return proposals

    def box_probs(self, features, boxes: List[Boxes]) -> List[torch.Tensor]:
        """
        The class probabilities of given boxes, averaged over the stages (each stage on the boxes
        themselves: given boxes are final, there is nothing to refine; pooled once for all).
        """
        predictions = self._stage_predictions(features, boxes, self._stages)
        probs = [p.predict_probs(x, boxes) for p, x in zip(self.box_predictor, predictions)]
        return [sum(per_stage) / self.num_cascade_stages for per_stage in zip(*probs)]
