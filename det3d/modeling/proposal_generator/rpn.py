"""Region Proposal Network (Ren et al. 2015) over FPN levels, in 2D or 3D."""

from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from det3d.config import configurable
from det3d.layers import CLS_LOSS_TYPES, Conv, ShapeSpec, cat, classification_loss
from det3d.structures import Boxes, ImageList, Instances, pairwise_iou
from det3d.utils.events import current_event_storage

from ..anchor_generator import build_anchor_generator
from ..box_regression import (
    BOX_REG_LOSS_TYPES,
    Box2BoxTransform,
    _dense_box_regression_loss,
    box_reg_weights,
)
from ..counts import counts_reference_voxels, scaled_count
from ..matcher import ATSSMatcher, Matcher
from ..registries import PROPOSAL_GENERATOR_REGISTRY, RPN_HEAD_REGISTRY
from ..sampling import subsample_labels
from .proposal_utils import find_top_rpn_proposals

__all__ = [
    "StandardRPNHead3D",
    "RPN3D",
    "build_rpn_head",
    "build_anchor_matcher",
    "flatten_objectness_logits",
    "flatten_anchor_deltas",
]


def flatten_objectness_logits(x: torch.Tensor) -> torch.Tensor:
    """
    (N, A, *spatial) -> (N, prod(spatial) * A): locations in array C-order, then the cell anchors
    of each location — the order of ``DefaultAnchorGenerator3D``'s anchors.
    """
    return x.permute(0, *range(2, x.dim()), 1).flatten(1)


def flatten_anchor_deltas(x: torch.Tensor, box_dim: int) -> torch.Tensor:
    """(N, A * box_dim, *spatial) -> (N, prod(spatial) * A, box_dim), in the anchors' order."""
    n, spatial = x.shape[0], x.shape[2:]
    x = x.view(n, -1, box_dim, *spatial)  # (N, A, B, *S)
    return x.permute(0, *range(3, x.dim()), 1, 2).flatten(1, -2)  # (N, *S, A, B) -> (N, S*A, B)


ANCHOR_MATCHERS = ("iou", "atss")


def build_anchor_matcher(cfg) -> Union[Matcher, ATSSMatcher]:
    """The RPN's anchor matcher named by ``MODEL.RPN.MATCHER``."""
    rpn = cfg.MODEL.RPN
    name = str(rpn.MATCHER).lower()
    if name == "iou":
        return Matcher(rpn.IOU_THRESHOLDS, rpn.IOU_LABELS, allow_low_quality_matches=True)
    if name == "atss":
        try:
            return ATSSMatcher(rpn.ATSS_TOPK)
        except ValueError as e:
            raise ValueError(f"MODEL.RPN.ATSS_TOPK: {e}") from None
    raise ValueError(f"MODEL.RPN.MATCHER {rpn.MATCHER!r}: expected one of {ANCHOR_MATCHERS}")


def build_rpn_head(cfg, input_shape: List[ShapeSpec]) -> nn.Module:
    """``RPN_HEAD_REGISTRY.get(cfg.MODEL.RPN.HEAD_NAME)(cfg, input_shape)``."""
    return RPN_HEAD_REGISTRY.get(cfg.MODEL.RPN.HEAD_NAME)(cfg, input_shape)


@RPN_HEAD_REGISTRY.register()
class StandardRPNHead3D(nn.Module):
    """
    The RPN head shared by all levels: a 3x3 conv (+ ReLU) — or a stack of them
    (``CONV_DIMS``) — then a 1x1 conv to ``A`` objectness logits and a 1x1 conv to
    ``A * 2*ndim`` box deltas per location, ``A`` the number of cell anchors. Delta channel
    ``a * 2*ndim + k`` is coordinate ``k`` of anchor ``a``.
    """

    @configurable
    def __init__(
        self,
        *,
        in_channels: int,
        num_anchors: int,
        box_dim: int = 6,
        conv_dims: Sequence[int] = (-1,),
    ):
        """
        Args:
            in_channels: channels of every input level.
            num_anchors: cell anchors per location (``A``).
            box_dim: ``2 * ndim`` (4 or 6); sets the number of spatial dims.
            conv_dims: output channels of the hidden 3x3 convs; -1 = ``in_channels``.
        """
        super().__init__()
        if box_dim not in (4, 6):
            raise ValueError(f"StandardRPNHead3D: box_dim={box_dim}; expected 4 or 6")
        ndim = box_dim // 2
        self.ndim = ndim
        cur_channels = in_channels
        convs = []
        for conv_dim in conv_dims:
            out_channels = cur_channels if conv_dim == -1 else conv_dim
            if out_channels <= 0:
                raise ValueError(
                    f"MODEL.RPN.CONV_DIMS={list(conv_dims)}: channels must be positive or -1"
                )
            convs.append(Conv(ndim, cur_channels, out_channels, 3, padding=1, activation=nn.ReLU()))
            cur_channels = out_channels
        self.conv = convs[0] if len(convs) == 1 else nn.Sequential(*convs)
        conv_cls = convs[0].conv.__class__
        self.objectness_logits = conv_cls(cur_channels, num_anchors, kernel_size=1)
        self.anchor_deltas = conv_cls(cur_channels, num_anchors * box_dim, kernel_size=1)
        for layer in self.modules():
            if isinstance(layer, conv_cls):
                nn.init.normal_(layer.weight, std=0.01)
                nn.init.constant_(layer.bias, 0)

    @classmethod
    def from_config(cls, cfg, input_shape: List[ShapeSpec]):
        in_channels = {s.channels for s in input_shape}
        if len(in_channels) != 1:
            raise ValueError(
                f"The RPN head needs the same channels on every level, got {in_channels}"
            )
        anchor_generator = build_anchor_generator(cfg, input_shape)
        num_anchors = anchor_generator.num_anchors
        if len(set(num_anchors)) != 1:
            raise ValueError(
                f"The shared RPN head needs the same number of anchors per location on every "
                f"level; got {num_anchors} (MODEL.ANCHOR_GENERATOR.SIZES / ASPECT_RATIOS / "
                "Z_ASPECT_RATIOS "
                "must give equally many cell anchors per level)"
            )
        return {
            "in_channels": in_channels.pop(),
            "num_anchors": num_anchors[0],
            "box_dim": anchor_generator.box_dim,
            "conv_dims": list(cfg.MODEL.RPN.CONV_DIMS),
        }

    def forward(
        self, features: List[torch.Tensor]
    ) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """
        Args:
            features: per level, (N, C, *spatial).

        Returns:
            pred_objectness_logits: per level, (N, A, *spatial).
            pred_anchor_deltas: per level, (N, A * 2*ndim, *spatial).
        """
        pred_objectness_logits, pred_anchor_deltas = [], []
        for x in features:
            t = self.conv(x)
            pred_objectness_logits.append(self.objectness_logits(t))
            pred_anchor_deltas.append(self.anchor_deltas(t))
        return pred_objectness_logits, pred_anchor_deltas


@PROPOSAL_GENERATOR_REGISTRY.register()
class RPN3D(nn.Module):
    """
    Region Proposal Network: objectness and box deltas for the anchors of every level, losses
    against the ground truth in training, and the top proposals after NMS.

    ``forward`` returns ``(proposals, losses)``. Losses are computed only when the module is in
    training mode *and* ``gt_instances`` is given; otherwise ``losses`` is ``{}`` (so a frozen RPN
    in eval mode just proposes). Pre/post-NMS top-k follow ``self.training``.
    """

    @configurable
    def __init__(
        self,
        *,
        in_features: List[str],
        head: nn.Module,
        anchor_generator: nn.Module,
        anchor_matcher: Union[Matcher, ATSSMatcher],
        box2box_transform: Box2BoxTransform,
        batch_size_per_image: int,
        positive_fraction: float,
        pre_nms_topk: Tuple[int, int],
        post_nms_topk: Tuple[int, int],
        nms_thresh: float = 0.7,
        min_box_size: float = 0.0,
        anchor_boundary_thresh: float = -1.0,
        loss_weight: Union[float, Dict[str, float]] = 1.0,
        box_reg_loss_type: str = "smooth_l1",
        smooth_l1_beta: float = 0.0,
        huber_clip: float = 3.0,
        huber_delta: float = 1.0,
        cls_loss_type: str = "ce",
        focal_loss_alpha: float = 0.25,
        focal_loss_gamma: float = 2.0,
        max_match_elements: int = 1 << 25,
        counts_reference_voxels: float = 0.0,
    ):
        """
        Args:
            in_features: names of the feature maps to use, finest first.
            head: maps the feature list to per-level objectness logits and deltas.
            anchor_generator: the anchors of every level (same order as the head's outputs).
            anchor_matcher: labels anchors by their IoU with the ground truth (a
                :class:`Matcher`), or by ATSS's per-object thresholds (an :class:`ATSSMatcher`,
                which needs the anchors per level).
            box2box_transform: encodes/decodes the deltas.
            batch_size_per_image, positive_fraction: anchor sampling for the losses.
            pre_nms_topk, post_nms_topk: (train, test) numbers of proposals kept per level before
                NMS, and per image after NMS.
            nms_thresh: IoU threshold of NMS.
            min_box_size: proposals with a side below this are removed.
            anchor_boundary_thresh: anchors reaching more than this many voxels out of the image are
                ignored in training; negative = keep all.
            loss_weight: a float for both losses or ``{"loss_rpn_cls": w, "loss_rpn_loc": w}``.
            box_reg_loss_type: ``"smooth_l1"``, ``"huber"`` or ``"giou"``.
            smooth_l1_beta, huber_clip, huber_delta: parameters of those losses.
            cls_loss_type: ``"ce"`` (binary cross-entropy) or ``"focal"`` (sigmoid focal loss).
            focal_loss_alpha, focal_loss_gamma: parameters of the focal loss.
            max_match_elements: IoU matrices of more elements are computed in chunks of anchors.
            counts_reference_voxels: at inference, the test counts are for inputs of this many
                voxels, and larger inputs get them scaled (:mod:`det3d.modeling.counts`; the
                pre-NMS count by the batch's largest input); 0 = fixed counts.
        """
        super().__init__()
        self.in_features = list(in_features)
        self.rpn_head = head
        self.anchor_generator = anchor_generator
        self.anchor_matcher = anchor_matcher
        self.box2box_transform = box2box_transform
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction
        self.pre_nms_topk = {True: pre_nms_topk[0], False: pre_nms_topk[1]}
        self.post_nms_topk = {True: post_nms_topk[0], False: post_nms_topk[1]}
        self.nms_thresh = nms_thresh
        self.min_box_size = float(min_box_size)
        self.anchor_boundary_thresh = anchor_boundary_thresh
        if isinstance(loss_weight, (int, float)):
            loss_weight = {"loss_rpn_cls": loss_weight, "loss_rpn_loc": loss_weight}
        self.loss_weight = dict(loss_weight)
        if box_reg_loss_type not in BOX_REG_LOSS_TYPES:
            raise ValueError(
                f"MODEL.RPN.BBOX_REG_LOSS_TYPE={box_reg_loss_type!r}; expected 'smooth_l1', "
                "'huber' or 'giou'"
            )
        if cls_loss_type not in CLS_LOSS_TYPES:
            raise ValueError(f"MODEL.RPN.CLS_LOSS_TYPE={cls_loss_type!r}; expected 'ce' or 'focal'")
        self.box_reg_loss_type = box_reg_loss_type
        self.smooth_l1_beta = smooth_l1_beta
        self.huber_clip = huber_clip
        self.huber_delta = huber_delta
        self.cls_loss_type = cls_loss_type
        self.focal_loss_alpha = focal_loss_alpha
        self.focal_loss_gamma = focal_loss_gamma
        self.max_match_elements = max_match_elements
        self.counts_reference_voxels = float(counts_reference_voxels)

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        in_features = list(cfg.MODEL.RPN.IN_FEATURES)
        missing = [f for f in in_features if f not in input_shape]
        if missing:
            raise ValueError(
                f"MODEL.RPN.IN_FEATURES names {missing}, which the backbone does not output "
                f"(it has {list(input_shape)})"
            )
        shapes = [input_shape[f] for f in in_features]
        ndim = cfg.MODEL.SPATIAL_DIMS
        rpn = cfg.MODEL.RPN
        return {
            "in_features": in_features,
            "head": build_rpn_head(cfg, shapes),
            "anchor_generator": build_anchor_generator(cfg, shapes),
            "anchor_matcher": build_anchor_matcher(cfg),
            "box2box_transform": Box2BoxTransform(box_reg_weights(rpn.BBOX_REG_WEIGHTS, ndim)),
            "batch_size_per_image": rpn.BATCH_SIZE_PER_IMAGE,
            "positive_fraction": rpn.POSITIVE_FRACTION,
            "pre_nms_topk": (rpn.PRE_NMS_TOPK_TRAIN, rpn.PRE_NMS_TOPK_TEST),
            "post_nms_topk": (rpn.POST_NMS_TOPK_TRAIN, rpn.POST_NMS_TOPK_TEST),
            "nms_thresh": rpn.NMS_THRESH,
            "min_box_size": cfg.MODEL.PROPOSAL_GENERATOR.MIN_SIZE,
            "anchor_boundary_thresh": rpn.BOUNDARY_THRESH,
            "loss_weight": {
                "loss_rpn_cls": rpn.LOSS_WEIGHT,
                "loss_rpn_loc": rpn.BBOX_REG_LOSS_WEIGHT * rpn.LOSS_WEIGHT,
            },
            "box_reg_loss_type": rpn.BBOX_REG_LOSS_TYPE,
            "smooth_l1_beta": rpn.SMOOTH_L1_BETA,
            "huber_clip": rpn.HUBER_CLIP,
            "huber_delta": rpn.HUBER_DELTA,
            "cls_loss_type": rpn.CLS_LOSS_TYPE,
            "focal_loss_alpha": rpn.FOCAL_LOSS_ALPHA,
            "focal_loss_gamma": rpn.FOCAL_LOSS_GAMMA,
            "counts_reference_voxels": counts_reference_voxels(
                cfg.TEST.COUNTS_REFERENCE_SHAPE, ndim
            ),
        }

    # ------------------------------------------------------------------ training targets
    def _match(
        self, gt_boxes: Boxes, anchors: Boxes, num_anchors_per_level: List[int]
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        ``(matches, labels)`` of the anchors of all levels. ATSS matches from the anchors and
        their levels; the IoU matcher from IoU(gt, anchors), in chunks of anchors when the
        matrix would be huge.
        """
        if isinstance(self.anchor_matcher, ATSSMatcher):
            return self.anchor_matcher(gt_boxes, anchors, num_anchors_per_level)
        num_gt, num_anchors = len(gt_boxes), len(anchors)
        if num_gt == 0 or num_gt * num_anchors <= self.max_match_elements:
            return self.anchor_matcher(pairwise_iou(gt_boxes, anchors))
        # Same result as the matcher on the full matrix, without holding it: first the best gt of
        # every anchor and the best anchor IoU of every gt, then the low-quality ties.
        chunk = max(1, self.max_match_elements // num_gt)
        starts = range(0, num_anchors, chunk)
        vals, matches = [], []
        best_per_gt = torch.zeros(num_gt, device=anchors.device)
        for s in starts:
            iou = pairwise_iou(gt_boxes, anchors[s : s + chunk])
            v, m = iou.max(dim=0)
            vals.append(v)
            matches.append(m)
            best_per_gt = torch.maximum(best_per_gt, iou.max(dim=1).values)
        matches = torch.cat(matches)
        match_labels = self.anchor_matcher.label_matches(torch.cat(vals))
        if self.anchor_matcher.allow_low_quality_matches:
            for s in starts:
                iou = pairwise_iou(gt_boxes, anchors[s : s + chunk])
                self.anchor_matcher.set_low_quality_matches_(
                    match_labels[s : s + chunk], iou, best_per_gt
                )
        return matches, match_labels

    def _subsample_labels(self, label: torch.Tensor) -> torch.Tensor:
        pos_idx, neg_idx = subsample_labels(
            label, self.batch_size_per_image, self.positive_fraction, 0
        )
        label.fill_(-1)
        label.scatter_(0, pos_idx, 1)
        label.scatter_(0, neg_idx, 0)
        return label

    @torch.no_grad()
    def label_and_sample_anchors(
        self, anchors: List[Boxes], gt_instances: List[Instances]
    ) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """
        Args:
            anchors: per level, the anchors (same for every image).
            gt_instances: per image, Instances with ``gt_boxes``.

        Returns:
            gt_labels: per image, (R,) int: 1 = positive, 0 = negative, -1 = ignored (including
                anchors not sampled), R = all anchors of all levels.
            matched_gt_boxes: per image, (R, 2*ndim) the ground-truth box matched to each anchor
                (meaningful for positives only).
        """
        num_anchors_per_level = [len(a) for a in anchors]
        anchors = Boxes.cat(anchors)
        gt_labels, matched_gt_boxes = [], []
        for inst in gt_instances:
            image_size = inst.image_size
            gt_boxes_i = inst.gt_boxes.to(anchors.device)
            matched_idxs, gt_labels_i = self._match(gt_boxes_i, anchors, num_anchors_per_level)
            gt_labels_i = gt_labels_i.to(torch.int64)
            if self.anchor_boundary_thresh >= 0:
                inside = anchors.inside_box(image_size, self.anchor_boundary_thresh)
                gt_labels_i[~inside] = -1
            gt_labels_i = self._subsample_labels(gt_labels_i)
            if len(gt_boxes_i) == 0:
                matched = torch.zeros_like(anchors.tensor)
            else:
                matched = gt_boxes_i.tensor[matched_idxs].to(anchors.tensor.dtype)
            gt_labels.append(gt_labels_i)
            matched_gt_boxes.append(matched)
        return gt_labels, matched_gt_boxes

    def losses(
        self,
        anchors: List[Boxes],
        pred_objectness_logits: List[torch.Tensor],
        gt_labels: List[torch.Tensor],
        pred_anchor_deltas: List[torch.Tensor],
        gt_boxes: List[torch.Tensor],
    ) -> Dict[str, torch.Tensor]:
        """
        Args:
            anchors: per level, (R_l, 2*ndim) Boxes.
            pred_objectness_logits: per level, (N, R_l).
            gt_labels, gt_boxes: from :meth:`label_and_sample_anchors`.
            pred_anchor_deltas: per level, (N, R_l, 2*ndim).

        Returns:
            dict: ``loss_rpn_cls`` and ``loss_rpn_loc``, each summed over the sampled anchors and
            divided by ``batch_size_per_image * num_images`` (Detectron2), times its weight.
        """
        num_images = len(gt_labels)
        gt_labels = torch.stack(gt_labels)  # (N, R)
        pos_mask = gt_labels == 1
        self._log_anchor_counts(pos_mask, gt_labels == 0, num_images)

        localization_loss = _dense_box_regression_loss(
            anchors,
            self.box2box_transform,
            pred_anchor_deltas,
            gt_boxes,
            pos_mask,
            box_reg_loss_type=self.box_reg_loss_type,
            smooth_l1_beta=self.smooth_l1_beta,
            huber_clip=self.huber_clip,
            huber_delta=self.huber_delta,
        )
        valid_mask = gt_labels >= 0
        logits = cat(pred_objectness_logits, dim=1)[valid_mask]
        objectness_loss = classification_loss(
            logits,
            gt_labels[valid_mask].to(logits.dtype),
            self.cls_loss_type,
            alpha=self.focal_loss_alpha,
            gamma=self.focal_loss_gamma,
            reduction="sum",
        )
        normalizer = self.batch_size_per_image * num_images
        losses = {
            "loss_rpn_cls": objectness_loss / normalizer,
            "loss_rpn_loc": localization_loss / normalizer,
        }
        return {k: v * self.loss_weight.get(k, 1.0) for k, v in losses.items()}

    @staticmethod
    def _log_anchor_counts(pos_mask: torch.Tensor, neg_mask: torch.Tensor, num_images: int) -> None:
        storage = current_event_storage()
        if storage is None:
            return
        storage.put_scalar("rpn/num_pos_anchors", pos_mask.sum().item() / num_images)
        storage.put_scalar("rpn/num_neg_anchors", neg_mask.sum().item() / num_images)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        images: ImageList,
        features: Dict[str, torch.Tensor],
        gt_instances: Optional[List[Instances]] = None,
    ) -> Tuple[List[Instances], Dict[str, torch.Tensor]]:
        """
        Args:
            images: the padded batch; ``images.image_sizes`` clip the proposals.
            features: name -> (N, C, *spatial); ``self.in_features`` are used.
            gt_instances: per image, Instances with ``gt_boxes``; needed for losses.

        Returns:
            proposals: per image, Instances with ``proposal_boxes`` (Boxes) and
                ``objectness_logits`` (R,), in decreasing objectness.
            losses: ``{"loss_rpn_cls", "loss_rpn_loc"}`` in training with ground truth, else ``{}``.
        """
        features = [features[f] for f in self.in_features]
        ndim = self.anchor_generator.ndim
        for f, x in zip(self.in_features, features):
            if x.dim() != ndim + 2:
                raise ValueError(
                    f"RPN3D ({ndim}D) expects feature {f!r} of shape (N, C, {ndim} spatial dims), "
                    "got "
                    f"{tuple(x.shape)}"
                )
        anchors = self.anchor_generator(features)
        pred_objectness_logits, pred_anchor_deltas = self.rpn_head(features)
        # float32 from here on (a no-op without autocast): top-k ranks logits, and bfloat16 ties
        # and coarse deltas would change which proposals survive.
        pred_objectness_logits = [
            flatten_objectness_logits(x).float() for x in pred_objectness_logits
        ]
        pred_anchor_deltas = [
            flatten_anchor_deltas(x, self.anchor_generator.box_dim).float()
            for x in pred_anchor_deltas
        ]

        if self.training and gt_instances is not None:
            gt_labels, gt_boxes = self.label_and_sample_anchors(anchors, gt_instances)
            losses = self.losses(
                anchors, pred_objectness_logits, gt_labels, pred_anchor_deltas, gt_boxes
            )
        else:
            losses = {}
        proposals = self.predict_proposals(
            anchors, pred_objectness_logits, pred_anchor_deltas, images.image_sizes
        )
        return proposals, losses

    @torch.no_grad()
    def predict_proposals(
        self,
        anchors: List[Boxes],
        pred_objectness_logits: List[torch.Tensor],
        pred_anchor_deltas: List[torch.Tensor],
        image_sizes: List[Tuple[int, ...]],
    ) -> List[Instances]:
        """Decodes the deltas and selects the top proposals (``find_top_rpn_proposals``)."""
        pred_proposals = self._decode_proposals(anchors, pred_anchor_deltas)
        pre, post = self.pre_nms_topk[self.training], self.post_nms_topk[self.training]
        if not self.training and self.counts_reference_voxels > 0:
            ref = self.counts_reference_voxels
            post = [scaled_count(post, size, ref) for size in image_sizes]
            pre = max((scaled_count(pre, size, ref) for size in image_sizes), default=pre)
        return find_top_rpn_proposals(
            pred_proposals,
            pred_objectness_logits,
            image_sizes,
            self.nms_thresh,
            pre,
            post,
            self.min_box_size,
            self.training,
        )

    def _decode_proposals(
        self, anchors: List[Boxes], pred_anchor_deltas: List[torch.Tensor]
    ) -> List[torch.Tensor]:
        """Per level: (N, R_l, 2*ndim) deltas -> (N, R_l, 2*ndim) boxes."""
        proposals = []
        for anchors_i, deltas_i in zip(anchors, pred_anchor_deltas):
            n, r, b = deltas_i.shape
            boxes = anchors_i.tensor.unsqueeze(0).expand(n, -1, -1).reshape(-1, b)
            proposals.append(
                self.box2box_transform.apply_deltas(deltas_i.reshape(-1, b), boxes).view(n, r, b)
            )
        return proposals
