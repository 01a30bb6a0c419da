"""
The Fast R-CNN box predictor: class scores and per-class box deltas for each RoI, its losses and
its inference (decode, clip, threshold, per-class NMS), in N spatial dims.
"""

import logging
from typing import Dict, List, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from det3d.config import configurable
from det3d.layers import CLS_LOSS_TYPES, ShapeSpec, batched_nms, cat, classification_loss
from det3d.structures import Boxes, Instances, matched_boxlist_iou
from det3d.utils.events import current_event_storage

from ..box_regression import (
    BOX_REG_LOSS_TYPES,
    Box2BoxTransform,
    box_reg_weights,
    box_regression_loss,
)
from ..counts import counts_reference_voxels, scaled_count

__all__ = ["FastRCNNOutputLayers3D", "fast_rcnn_inference", "fast_rcnn_inference_single_image"]

logger = logging.getLogger(__name__)


def _log_classification_stats(scores: torch.Tensor, gt_classes: torch.Tensor) -> None:
    """Accuracy of the sampled RoIs (all, foreground, background) to the trainer's storage."""
    storage = current_event_storage()
    if storage is None or gt_classes.numel() == 0:
        return
    bg_class = scores.shape[1] - 1
    pred = scores.detach().argmax(dim=1)
    fg = (gt_classes >= 0) & (gt_classes < bg_class)
    bg = gt_classes == bg_class
    correct = (pred == gt_classes).float()
    storage.put_scalar("fast_rcnn/cls_accuracy", correct.mean().item())
    if fg.any():
        storage.put_scalar("fast_rcnn/fg_cls_accuracy", correct[fg].mean().item())
        storage.put_scalar("fast_rcnn/false_negative", (pred[fg] == bg_class).float().mean().item())
    if bg.any():
        storage.put_scalar("fast_rcnn/bg_cls_accuracy", correct[bg].mean().item())


def fast_rcnn_inference(
    boxes: List[torch.Tensor],
    scores: List[torch.Tensor],
    image_shapes: List[Tuple[int, ...]],
    score_thresh: float,
    nms_thresh: float,
    topk_per_image: int,
    counts_reference_voxels: float = 0.0,
) -> Tuple[List[Instances], List[torch.Tensor]]:
    """
    Per image: drop the background column, clip boxes, keep scores above ``score_thresh``, run NMS
    per class and keep the ``topk_per_image`` best (all if < 0); with ``counts_reference_voxels``
    (> 0) an image of more voxels keeps that many times more (:mod:`det3d.modeling.counts`).

    Args:
        boxes: per image, (R, K * 2*ndim) or (R, 2*ndim) (class-agnostic) decoded boxes.
        scores: per image, (R, K + 1) class probabilities, background last.
        image_shapes: per image, the spatial shape boxes are clipped to.

    Returns:
        list[Instances]: ``pred_boxes``, ``scores``, ``pred_classes`` and ``objectness`` per
            image, decreasing score. ``objectness`` is the foreground probability of the
            detection's RoI (1 - p(background)): whether there is an object, whatever its class.
            A RoI whose probability is split between two classes scores low on each class but
            keeps a high objectness; the label volume uses it (see
            :func:`det3d.modeling.postprocessing.instances_to_label_volume`).
        list[Tensor]: per image, the RoI index of each detection.
    """
    results = [
        fast_rcnn_inference_single_image(
            b,
            s,
            shape,
            score_thresh,
            nms_thresh,
            scaled_count(topk_per_image, shape, counts_reference_voxels),
        )
        for b, s, shape in zip(boxes, scores, image_shapes)
    ]
    return [r[0] for r in results], [r[1] for r in results]


def fast_rcnn_inference_single_image(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    image_shape: Tuple[int, ...],
    score_thresh: float,
    nms_thresh: float,
    topk_per_image: int,
) -> Tuple[Instances, torch.Tensor]:
    """See :func:`fast_rcnn_inference`; one image."""
    box_dim = 2 * len(image_shape)
    valid = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores).all(dim=1)
    if not valid.all():
        boxes, scores = boxes[valid], scores[valid]
    objectness = 1.0 - scores[:, -1]
    scores = scores[:, :-1]
    num_rois = boxes.shape[0]
    boxes_per_roi = boxes.shape[1] // box_dim  # K, or 1 when class-agnostic; also for R = 0
    boxes = Boxes(boxes.reshape(-1, box_dim))
    boxes.clip(image_shape)
    boxes = boxes.tensor.view(num_rois, boxes_per_roi, box_dim)  # (R, K or 1, 2*ndim)

    filter_mask = scores > score_thresh  # (R, K)
    filter_inds = filter_mask.nonzero()  # (n, 2): roi index, class
    if boxes.shape[1] == 1:
        boxes = boxes[filter_inds[:, 0], 0]
    else:
        boxes = boxes[filter_mask]
    scores = scores[filter_mask]
    keep = batched_nms(boxes, scores, filter_inds[:, 1], nms_thresh)
    if topk_per_image >= 0:
        keep = keep[:topk_per_image]
    boxes, scores, filter_inds = boxes[keep], scores[keep], filter_inds[keep]

    result = Instances(tuple(image_shape))
    result.pred_boxes = Boxes(boxes)
    result.scores = scores
    result.pred_classes = filter_inds[:, 1]
    result.objectness = objectness[filter_inds[:, 0]]
    roi_inds = torch.nonzero(valid, as_tuple=True)[0][filter_inds[:, 0]]
    return result, roi_inds


class FastRCNNOutputLayers3D(nn.Module):
    """
    Two linear layers on the box-head vector: ``cls_score`` (K + 1 logits, background last) and
    ``bbox_pred`` (K * 2*ndim deltas, or 2*ndim when class-agnostic); with ``predict_iou`` a
    third, ``iou_pred`` (one logit: the estimated IoU of the RoI's box with the gt object it
    overlaps most, IoU-Net's localisation confidence), and :meth:`forward` returns three tensors.

    Losses (each averaged over all sampled RoIs, as Detectron2 does):

    * ``loss_cls``: softmax cross-entropy ("ce") or softmax focal loss ("focal"), times
      ``ROI_HEADS.CLS_LOSS_WEIGHT``;
    * ``loss_box_reg`` on foreground RoIs: "smooth_l1" or "huber" (soft-clipped
      ``c * tanh(x / c)`` then Huber) on the encoded deltas, or "giou" on the decoded boxes,
      times ``ROI_BOX_HEAD.BBOX_REG_LOSS_WEIGHT``;
    * ``loss_box_iou`` (with ``predict_iou``): binary cross-entropy of ``iou_pred`` against the
      IoU of each sampled RoI's box with its matched gt box (0 for a RoI of an image without
      objects), mean over all sampled RoIs, times ``ROI_BOX_HEAD.IOU_HEAD.LOSS_WEIGHT``.
    """

    @configurable
    def __init__(
        self,
        input_shape: ShapeSpec,
        *,
        box2box_transform: Box2BoxTransform,
        num_classes: int,
        ndim: int = 3,
        test_score_thresh: float = 0.0,
        test_nms_thresh: float = 0.5,
        test_topk_per_image: int = 500,
        counts_reference_voxels: float = 0.0,
        cls_agnostic_bbox_reg: bool = False,
        smooth_l1_beta: float = 0.0,
        cls_loss_type: str = "ce",
        focal_loss_alpha: float = 0.25,
        focal_loss_gamma: float = 2.0,
        box_reg_loss_type: str = "smooth_l1",
        huber_clip: float = 3.0,
        huber_delta: float = 1.0,
        predict_iou: bool = False,
        loss_weight: Dict[str, float] = None,
    ):
        """
        Args:
            input_shape: ``channels`` = length of the box-head vector.
            box2box_transform: encodes / decodes box deltas (2*ndim weights).
            num_classes: foreground classes K.
            test_score_thresh, test_nms_thresh, test_topk_per_image: inference filtering.
            counts_reference_voxels: ``test_topk_per_image`` is for inputs of this many voxels;
                larger ones keep proportionally more (0 = fixed; :mod:`det3d.modeling.counts`).
            cls_loss_type: "ce" or "focal"; box_reg_loss_type: "smooth_l1", "huber" or "giou".
            predict_iou: add ``iou_pred``, the estimated IoU of each RoI's box.
            loss_weight: ``{"loss_cls": w, "loss_box_reg": w, "loss_box_iou": w}``; missing keys
                weigh 1.
        """
        super().__init__()
        if cls_loss_type not in CLS_LOSS_TYPES:
            raise ValueError(
                f"ROI_BOX_HEAD.CLS_LOSS_TYPE {cls_loss_type!r} is not one of {CLS_LOSS_TYPES}"
            )
        if box_reg_loss_type not in BOX_REG_LOSS_TYPES:
            raise ValueError(
                f"ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE {box_reg_loss_type!r} is not one of "
                f"{BOX_REG_LOSS_TYPES}"
            )
        input_size = input_shape.channels
        self.ndim = ndim
        self.num_classes = num_classes
        self.cls_score = nn.Linear(input_size, num_classes + 1)
        num_bbox_reg_classes = 1 if cls_agnostic_bbox_reg else num_classes
        self.bbox_pred = nn.Linear(input_size, num_bbox_reg_classes * 2 * ndim)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        for layer in (self.cls_score, self.bbox_pred):
            nn.init.constant_(layer.bias, 0)
        self.predict_iou = bool(predict_iou)
        if self.predict_iou:
            self.iou_pred = nn.Linear(input_size, 1)
            nn.init.normal_(self.iou_pred.weight, std=0.01)
            nn.init.constant_(self.iou_pred.bias, 0)

        self.box2box_transform = box2box_transform
        self.smooth_l1_beta = smooth_l1_beta
        self.test_score_thresh = test_score_thresh
        self.test_nms_thresh = test_nms_thresh
        self.test_topk_per_image = test_topk_per_image
        self.counts_reference_voxels = float(counts_reference_voxels)
        self.cls_loss_type = cls_loss_type
        self.focal_loss_alpha = focal_loss_alpha
        self.focal_loss_gamma = focal_loss_gamma
        self.box_reg_loss_type = box_reg_loss_type
        self.huber_clip = huber_clip
        self.huber_delta = huber_delta
        self.loss_weight = {"loss_cls": 1.0, "loss_box_reg": 1.0, "loss_box_iou": 1.0}
        self.loss_weight.update(loss_weight or {})

    @classmethod
    def from_config(cls, cfg, input_shape: ShapeSpec):
        ndim = cfg.MODEL.SPATIAL_DIMS
        box_head = cfg.MODEL.ROI_BOX_HEAD
        if box_head.USE_FED_LOSS or box_head.USE_SIGMOID_CE:
            raise NotImplementedError(
                "ROI_BOX_HEAD.USE_FED_LOSS / USE_SIGMOID_CE are not supported by det3d; "
                "use ROI_BOX_HEAD.CLS_LOSS_TYPE ('ce' or 'focal')"
            )
        return {
            "input_shape": input_shape,
            "box2box_transform": Box2BoxTransform(
                weights=box_reg_weights(box_head.BBOX_REG_WEIGHTS, ndim)
            ),
            "num_classes": cfg.MODEL.ROI_HEADS.NUM_CLASSES,
            "ndim": ndim,
            "test_score_thresh": cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST,
            "test_nms_thresh": cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST,
            "test_topk_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "counts_reference_voxels": counts_reference_voxels(
                cfg.TEST.COUNTS_REFERENCE_SHAPE, ndim
            ),
            "cls_agnostic_bbox_reg": box_head.CLS_AGNOSTIC_BBOX_REG,
            "smooth_l1_beta": box_head.SMOOTH_L1_BETA,
            "cls_loss_type": box_head.CLS_LOSS_TYPE,
            "focal_loss_alpha": box_head.FOCAL_LOSS_ALPHA,
            "focal_loss_gamma": box_head.FOCAL_LOSS_GAMMA,
            "box_reg_loss_type": box_head.BBOX_REG_LOSS_TYPE,
            "huber_clip": box_head.HUBER_CLIP,
            "huber_delta": box_head.HUBER_DELTA,
            "predict_iou": box_head.IOU_HEAD.ENABLED,
            "loss_weight": {
                "loss_cls": cfg.MODEL.ROI_HEADS.CLS_LOSS_WEIGHT,
                "loss_box_reg": box_head.BBOX_REG_LOSS_WEIGHT,
                "loss_box_iou": box_head.IOU_HEAD.LOSS_WEIGHT,
            },
        }

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """
        Args:
            x: (M, C) box-head vectors (higher-rank input is flattened).

        Returns:
            (scores (M, K + 1), proposal_deltas (M, K * 2*ndim or 2*ndim)), and with
            ``predict_iou`` a third, the IoU logits (M,).
        """
        if x.dim() > 2:
            x = torch.flatten(x, start_dim=1)
        # Losses, softmax and box decoding in float32 (a no-op without autocast).
        out = (self.cls_score(x).float(), self.bbox_pred(x).float())
        if self.predict_iou:
            out += (self.iou_pred(x).float()[:, 0],)
        return out

    # ------------------------------------------------------------------ losses
    def losses(self, predictions, proposals: List[Instances]) -> Dict[str, torch.Tensor]:
        """
        Args:
            predictions: output of :meth:`forward`.
            proposals: sampled proposals with ``proposal_boxes``, ``gt_boxes``, ``gt_classes``
                (``gt_classes == K`` marks background).

        Returns:
            dict with ``loss_cls``, ``loss_box_reg`` and, with ``predict_iou``, ``loss_box_iou``.
        """
        scores, proposal_deltas = predictions[:2]
        box_dim = 2 * self.ndim
        gt_classes = (
            cat([p.gt_classes for p in proposals], dim=0)
            if len(proposals)
            else torch.empty(0, dtype=torch.int64, device=scores.device)
        )
        if len(proposals):
            proposal_boxes = cat([p.proposal_boxes.tensor for p in proposals], dim=0)
            gt_boxes = cat(
                [(p.gt_boxes if p.has("gt_boxes") else p.proposal_boxes).tensor for p in proposals],
                dim=0,
            )
        else:
            proposal_boxes = gt_boxes = scores.new_zeros((0, box_dim))

        _log_classification_stats(scores, gt_classes)
        loss_cls = classification_loss(
            scores,
            gt_classes,
            self.cls_loss_type,
            alpha=self.focal_loss_alpha,
            gamma=self.focal_loss_gamma,
            reduction="mean",
        )
        loss_box_reg = self.box_reg_loss(proposal_boxes, gt_boxes, proposal_deltas, gt_classes)
        losses = {
            "loss_cls": loss_cls * self.loss_weight["loss_cls"],
            "loss_box_reg": loss_box_reg * self.loss_weight["loss_box_reg"],
        }
        if self.predict_iou:
            losses["loss_box_iou"] = self.loss_weight["loss_box_iou"] * self.box_iou_loss(
                predictions[2], proposal_boxes, gt_boxes
            )
        return losses

    @staticmethod
    def box_iou_loss(
        iou_logits: torch.Tensor, proposal_boxes: torch.Tensor, gt_boxes: torch.Tensor
    ) -> torch.Tensor:
        """
        Binary cross-entropy of the IoU logits against each RoI's IoU with its matched gt box
        (an all-zero gt row, a RoI of an image without objects, gives 0), mean over the RoIs.
        """
        if iou_logits.numel() == 0:
            return iou_logits.sum() * 0.0
        with torch.no_grad():
            target = matched_boxlist_iou(Boxes(proposal_boxes), Boxes(gt_boxes)).clamp(0.0, 1.0)
        return F.binary_cross_entropy_with_logits(iou_logits, target.to(iou_logits.dtype))

    def box_reg_loss(
        self,
        proposal_boxes: torch.Tensor,
        gt_boxes: torch.Tensor,
        pred_deltas: torch.Tensor,
        gt_classes: torch.Tensor,
    ) -> torch.Tensor:
        """
        Box regression loss on foreground RoIs, summed and divided by the number of sampled RoIs
        (so that foreground and background RoIs weigh the same per RoI, as in Detectron2).

        Args:
            proposal_boxes, gt_boxes: (R, 2*ndim); pred_deltas: (R, K * 2*ndim) or (R, 2*ndim);
            gt_classes: (R,).
        """
        box_dim = 2 * self.ndim
        fg = (gt_classes >= 0) & (gt_classes < self.num_classes)
        fg_inds = torch.nonzero(fg, as_tuple=True)[0]
        if pred_deltas.shape[1] == box_dim:  # class-agnostic
            fg_pred_deltas = pred_deltas[fg_inds]
        else:
            fg_pred_deltas = pred_deltas.view(-1, self.num_classes, box_dim)[
                fg_inds, gt_classes[fg_inds]
            ]
        normalizer = max(gt_classes.numel(), 1.0)
        if fg_inds.numel() == 0:
            return pred_deltas.sum() * 0.0
        loss = box_regression_loss(
            self.box2box_transform,
            fg_pred_deltas,
            proposal_boxes[fg_inds],
            gt_boxes[fg_inds],
            self.box_reg_loss_type,
            smooth_l1_beta=self.smooth_l1_beta,
            huber_clip=self.huber_clip,
            huber_delta=self.huber_delta,
        )
        return loss / normalizer

    # --------------------------------------------------------------- inference
    def inference(
        self, predictions, proposals: List[Instances]
    ) -> Tuple[List[Instances], List[torch.Tensor]]:
        """
        Returns:
            list[Instances]: detections per image (see :func:`fast_rcnn_inference`).
            list[Tensor]: per image, the index of the proposal each detection comes from.
        """
        boxes = self.predict_boxes(predictions, proposals)
        scores = self.predict_probs(predictions, proposals)
        image_shapes = [x.image_size for x in proposals]
        return fast_rcnn_inference(
            boxes,
            scores,
            image_shapes,
            self.test_score_thresh,
            self.test_nms_thresh,
            self.test_topk_per_image,
            self.counts_reference_voxels,
        )

    def predict_boxes(self, predictions, proposals: List[Instances]) -> List[torch.Tensor]:
        """
        Returns:
            list[Tensor]: per image, (R, K * 2*ndim) (or (R, 2*ndim) class-agnostic) boxes.
        """
        if not len(proposals):
            return []
        proposal_deltas = predictions[1]
        num_prop_per_image = [len(p) for p in proposals]
        proposal_boxes = cat([p.proposal_boxes.tensor for p in proposals], dim=0)
        predict_boxes = self.box2box_transform.apply_deltas(proposal_deltas, proposal_boxes)
        return list(predict_boxes.split(num_prop_per_image))

    def predict_boxes_for_gt_classes(self, predictions, proposals: List[Instances]):
        """
        Returns:
            list[Tensor]: per image, (R, 2*ndim): the box decoded for each RoI's gt class.
        """
        if not len(proposals):
            return []
        box_dim = 2 * self.ndim
        boxes = cat(self.predict_boxes(predictions, proposals), dim=0)
        gt_classes = cat([p.gt_classes for p in proposals], dim=0)
        k = boxes.shape[1] // box_dim
        if k > 1:
            gt_classes = gt_classes.clamp(0, k - 1)
            boxes = boxes.view(-1, k, box_dim)[torch.arange(boxes.shape[0]), gt_classes]
        return list(boxes.split([len(p) for p in proposals]))

    def predict_probs(self, predictions, proposals: List[Instances]) -> List[torch.Tensor]:
        """
        Returns:
            list[Tensor]: per image, (R, K + 1) softmax probabilities.
        """
        probs = F.softmax(predictions[0], dim=-1)
        return list(probs.split([len(p) for p in proposals], dim=0))

    def predict_ious(self, predictions, proposals: List[Instances]) -> List[torch.Tensor]:
        """
        Returns:
            list[Tensor]: per image, (R,) the estimated IoU of each RoI's box (``predict_iou``).
        """
        if not self.predict_iou:
            raise RuntimeError("predict_ious: this box predictor has no IoU head")
        ious = torch.sigmoid(predictions[2])
        return list(ious.split([len(p) for p in proposals], dim=0))
