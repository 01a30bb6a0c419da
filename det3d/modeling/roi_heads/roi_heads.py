"""
ROI heads: sample proposals against the ground truth, pool their features, and run the box and
mask branches. N-D (2 or 3 spatial dims) from one code path.
"""

import logging
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from det3d.config import configurable
from det3d.layers import ShapeSpec, cat, nonzero_tuple
from det3d.structures import BitMasks, Boxes, ImageList, Instances, pairwise_iou
from det3d.utils.axes import per_axis
from det3d.utils.events import current_event_storage

from ..foreground_head import foreground_targets
from ..matcher import Matcher
from ..postprocessing import expand_boxes
from ..poolers import ROIPooler
from ..proposal_generator.proposal_utils import add_ground_truth_to_proposals
from ..registries import ROI_HEADS_REGISTRY
from ..sampling import subsample_labels
from .box_head import build_box_head
from .fast_rcnn import FastRCNNOutputLayers3D
from .mask_head import build_mask_head

__all__ = [
    "ROIHeads3D",
    "StandardROIHeads3D",
    "build_roi_heads",
    "select_foreground_proposals",
    "roi_chunks",
    "neighbor_iou",
    "ROI_HEADS_REGISTRY",
]

logger = logging.getLogger(__name__)


def build_roi_heads(cfg, input_shape: Dict[str, ShapeSpec]) -> nn.Module:
    """Builds the ROI heads named by ``cfg.MODEL.ROI_HEADS.NAME``."""
    return ROI_HEADS_REGISTRY.get(cfg.MODEL.ROI_HEADS.NAME)(cfg, input_shape)


def select_foreground_proposals(
    proposals: List[Instances], bg_label: int
) -> Tuple[List[Instances], List[torch.Tensor]]:
    """
    Args:
        proposals: per image, sampled proposals with ``gt_classes``.
        bg_label: the background class index (K).

    Returns:
        list[Instances]: the foreground proposals of each image.
        list[Tensor]: per image, the bool mask that selected them.
    """
    fg_proposals, fg_masks = [], []
    for p in proposals:
        gt_classes = p.gt_classes
        fg = (gt_classes != -1) & (gt_classes != bg_label)
        fg_proposals.append(p[nonzero_tuple(fg)[0]])
        fg_masks.append(fg)
    return fg_proposals, fg_masks


def roi_chunks(lengths: List[int], chunk_size: int) -> List[List[Tuple[int, int]]]:
    """
    Splits the RoIs of a batch, taken in order (image 0's, then image 1's...), into chunks of at
    most ``chunk_size``.

    Args:
        lengths: number of RoIs of each image.
        chunk_size: largest chunk; <= 0 means one chunk.

    Returns:
        list (one per chunk) of per-image ``(start, end)`` slices; an image without RoIs in the
        chunk gets an empty slice, so every chunk has one entry per image.
    """
    total = sum(lengths)
    if chunk_size <= 0 or total <= chunk_size:
        return [[(0, n) for n in lengths]]
    offsets = [sum(lengths[:i]) for i in range(len(lengths))]
    chunks = []
    for start in range(0, total, chunk_size):
        end = min(start + chunk_size, total)
        chunks.append(
            [
                (min(max(start - off, 0), n), min(max(end - off, 0), n))
                for off, n in zip(offsets, lengths)
            ]
        )
    return chunks


def neighbor_iou(boxes: Boxes, gt_boxes: Boxes) -> torch.Tensor:
    """
    Per box, its IoU with the gt box it overlaps second most: for a RoI matched to the gt it
    overlaps most (as :class:`Matcher` matches), the nearest other object, i.e. how much of a
    neighbour the RoI holds. 0 with fewer than two gt boxes.
    """
    if len(gt_boxes) < 2:
        return boxes.tensor.new_zeros(len(boxes))
    return pairwise_iou(boxes, gt_boxes).topk(2, dim=1).values[:, 1]


def _pooler_scales(input_shape: Dict[str, ShapeSpec], in_features: List[str], ndim: int):
    scales = []
    for f in in_features:
        if f not in input_shape:
            raise KeyError(
                f"ROI_HEADS.IN_FEATURES names {f!r}, which the backbone does not output "
                f"(it has {sorted(input_shape)})"
            )
        stride = input_shape[f].stride
        stride = (stride,) * ndim if isinstance(stride, (int, float)) else tuple(stride)
        scales.append(tuple(1.0 / s for s in stride))
    return scales


def _input_channels(input_shape: Dict[str, ShapeSpec], in_features: List[str]) -> int:
    channels = {input_shape[f].channels for f in in_features}
    if len(channels) != 1:
        raise ValueError(f"ROI heads need the same channels on {in_features}, got {channels}")
    return channels.pop()


class ROIHeads3D(nn.Module):
    """
    Base of ROI heads: proposal sampling shared by all of them. Subclasses implement
    :meth:`forward`.

    Training contract (as Detectron2's): ``forward(images, features, proposals, targets)``
    calls :meth:`label_and_sample_proposals`, then the branches, and returns
    ``(proposals, losses)``; inference returns ``(instances, {})``.
    """

    @configurable
    def __init__(
        self,
        *,
        num_classes: int,
        batch_size_per_image: int,
        positive_fraction: float,
        proposal_matcher: Matcher,
        proposal_append_gt: bool = True,
        ndim: int = 3,
    ):
        """
        Args:
            num_classes: foreground classes K (background is K).
            batch_size_per_image: RoIs sampled per image for training.
            positive_fraction: largest fraction of foreground RoIs among them.
            proposal_matcher: matches proposals to gt boxes (label 1 = fg, 0 = bg, -1 = ignore).
            proposal_append_gt: add the gt boxes to the proposals before sampling.
            ndim: number of spatial dims.
        """
        super().__init__()
        self.num_classes = num_classes
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction
        self.proposal_matcher = proposal_matcher
        self.proposal_append_gt = proposal_append_gt
        self.ndim = ndim

    @classmethod
    def from_config(cls, cfg):
        return {
            "num_classes": cfg.MODEL.ROI_HEADS.NUM_CLASSES,
            "batch_size_per_image": cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE,
            "positive_fraction": cfg.MODEL.ROI_HEADS.POSITIVE_FRACTION,
            "proposal_append_gt": cfg.MODEL.ROI_HEADS.PROPOSAL_APPEND_GT,
            "proposal_matcher": Matcher(
                cfg.MODEL.ROI_HEADS.IOU_THRESHOLDS,
                cfg.MODEL.ROI_HEADS.IOU_LABELS,
                allow_low_quality_matches=False,
            ),
            "ndim": cfg.MODEL.SPATIAL_DIMS,
        }

    def matched_classes(
        self, matched_idxs: torch.Tensor, matched_labels: torch.Tensor, gt_classes: torch.Tensor
    ) -> torch.Tensor:
        """
        Per proposal, from the matcher's output: its gt object's class, K (background) where the
        label is 0 or the image has no gt, -1 where it is ignored.
        """
        if gt_classes.numel() == 0:
            return torch.zeros_like(matched_idxs) + self.num_classes
        classes = gt_classes[matched_idxs]
        classes[matched_labels == 0] = self.num_classes
        classes[matched_labels == -1] = -1
        return classes

    def attach_matched_gt(
        self,
        proposals: Instances,
        targets: Instances,
        matched_idxs: torch.Tensor,
        fields: Optional[Tuple[str, ...]] = None,
    ) -> None:
        """
        Gives each proposal the ``gt_*`` fields (all, or those named in ``fields``) of the gt
        object ``matched_idxs`` names, leaving fields it already has; with no gt in the image,
        an all-zero ``gt_boxes`` row each (the box loss ignores background RoIs).
        """
        if len(targets) == 0:
            proposals.gt_boxes = Boxes(
                proposals.proposal_boxes.tensor.new_zeros((len(proposals), 2 * self.ndim))
            )
            return
        for name, value in targets.get_fields().items():
            if not name.startswith("gt_") or proposals.has(name):
                continue
            if fields is None or name in fields:
                proposals.set(name, value[matched_idxs])

    def _sample_proposals(
        self, matched_idxs: torch.Tensor, matched_labels: torch.Tensor, gt_classes: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Returns:
            Tensor: indices of the sampled proposals.
            Tensor: their classes (K = background).
        """
        gt_classes = self.matched_classes(matched_idxs, matched_labels, gt_classes)
        fg_inds, bg_inds = subsample_labels(
            gt_classes, self.batch_size_per_image, self.positive_fraction, self.num_classes
        )
        sampled = torch.cat([fg_inds, bg_inds], dim=0)
        return sampled, gt_classes[sampled]

    @torch.no_grad()
    def label_and_sample_proposals(
        self, proposals: List[Instances], targets: List[Instances]
    ) -> List[Instances]:
        """
        Matches proposals to the ground truth and samples ``batch_size_per_image`` of them per
        image with at most ``positive_fraction`` foreground.

        Args:
            proposals: per image, ``proposal_boxes`` (and ``objectness_logits``).
            targets: per image, ``gt_boxes``, ``gt_classes`` (and ``gt_masks``).

        Returns:
            list[Instances]: the sampled proposals with ``gt_classes`` (K = background) and, for
            matched ones, every other ``gt_*`` field of their gt instance (background RoIs carry
            an all-zero ``gt_boxes`` row when the image has no gt).
        """
        if self.proposal_append_gt:
            proposals = add_ground_truth_to_proposals(targets, proposals)
        sampled_proposals = []
        num_fg, num_bg = [], []
        for proposals_per_image, targets_per_image in zip(proposals, targets):
            iou = pairwise_iou(targets_per_image.gt_boxes, proposals_per_image.proposal_boxes)
            matched_idxs, matched_labels = self.proposal_matcher(iou)
            sampled_idxs, gt_classes = self._sample_proposals(
                matched_idxs, matched_labels, targets_per_image.gt_classes
            )
            proposals_per_image = proposals_per_image[sampled_idxs]
            proposals_per_image.gt_classes = gt_classes
            self.attach_matched_gt(
                proposals_per_image, targets_per_image, matched_idxs[sampled_idxs]
            )
            num_bg.append(int((gt_classes == self.num_classes).sum().item()))
            num_fg.append(len(gt_classes) - num_bg[-1])
            sampled_proposals.append(proposals_per_image)
        storage = current_event_storage()
        if storage is not None:
            storage.put_scalar("roi_head/num_fg_samples", sum(num_fg) / max(len(num_fg), 1))
            storage.put_scalar("roi_head/num_bg_samples", sum(num_bg) / max(len(num_bg), 1))
        return sampled_proposals

    def forward(
        self,
        images: ImageList,
        features: Dict[str, torch.Tensor],
        proposals: List[Instances],
        targets: Optional[List[Instances]] = None,
    ):
        raise NotImplementedError


def _foreground(probs: List[torch.Tensor]) -> List[torch.Tensor]:
    """Per image, each box's foreground probability from its class probabilities (background
    last)."""
    return [1.0 - p[:, -1] for p in probs]


@ROI_HEADS_REGISTRY.register()
class StandardROIHeads3D(ROIHeads3D):
    """
    Box branch (pooler -> box head -> :class:`FastRCNNOutputLayers3D`) and optional mask branch
    (pooler -> mask head), each on its own pooled features, as Detectron2's StandardROIHeads.

    In training the mask branch sees the foreground sampled proposals only; in inference it runs
    on the final detections. Mask output size = 2x the mask pooler resolution on every axis.
    """

    @configurable
    def __init__(
        self,
        *,
        box_in_features: List[str],
        box_pooler: ROIPooler,
        box_head: nn.Module,
        box_predictor: nn.Module,
        mask_in_features: Optional[List[str]] = None,
        mask_pooler: Optional[ROIPooler] = None,
        mask_head: Optional[nn.Module] = None,
        mask_box_expand: float = 1.0,
        mask_box_expand_test: float = 0.0,
        mask_train_rois: int = 0,
        mask_train_neighbor_bias: float = 0.0,
        train_on_pred_boxes: bool = False,
        roi_chunk_size: int = 0,
        **kwargs,
    ):
        """
        Args:
            box_in_features / mask_in_features: feature names the branches pool from.
            box_pooler, box_head, box_predictor: the box branch.
            mask_pooler, mask_head: the mask branch (None = no masks).
            mask_box_expand: the mask branch pools and predicts masks in boxes scaled by this
                factor about their centres (in training the proposals', at inference the
                detections'), so a mask can reach past a box that cut its object short; the
                detections then carry ``pred_mask_boxes``.
            mask_box_expand_test: the factor at inference; 0 = ``mask_box_expand``.
            mask_train_rois: in training, the mask branch runs on at most this many foreground
                RoIs per image, drawn at random (0 = all, as Detectron2).
            mask_train_neighbor_bias: with ``mask_train_rois``, a RoI is drawn with weight
                1 + this * :func:`neighbor_iou` (0 = uniform), so RoIs that hold a touching
                neighbour train the mask branch more often.
            train_on_pred_boxes: train the mask branch on the box branch's predicted boxes.
            roi_chunk_size: at inference, pool and run each branch on at most this many RoIs at
                a time (0 = all at once); the results are the same (``TEST.ROI_CHUNK_SIZE``).
            kwargs: see :class:`ROIHeads3D`.
        """
        super().__init__(**kwargs)
        self.in_features = self.box_in_features = box_in_features
        self.box_pooler = box_pooler
        self.box_head = box_head
        self.box_predictor = box_predictor
        self.mask_on = mask_head is not None
        if self.mask_on:
            self.mask_in_features = mask_in_features
            self.mask_pooler = mask_pooler
            self.mask_head = mask_head
            # a head that refines masks with the image gets the RoI's input voxels at its size
            image_size = getattr(mask_head, "image_input_size", None)
            self.mask_image_pooler = (
                ROIPooler(
                    output_size=image_size,
                    scales=[1.0],
                    sampling_ratio=mask_pooler.sampling_ratio,
                    pooler_type="ROIAlignV2" if mask_pooler.aligned else "ROIAlign",
                    ndim=len(image_size),
                )
                if image_size
                else None
            )
        if mask_box_expand < 1.0:
            raise ValueError(
                f"MODEL.ROI_MASK_HEAD.BOX_EXPAND must be >= 1.0, got {mask_box_expand}"
            )
        if mask_box_expand_test < 1.0 and mask_box_expand_test != 0:
            raise ValueError(
                "MODEL.ROI_MASK_HEAD.BOX_EXPAND_TEST must be >= 1.0 (or 0: as BOX_EXPAND), got "
                f"{mask_box_expand_test}"
            )
        rois = mask_train_rois
        if isinstance(rois, bool) or rois != int(rois) or rois < 0:
            raise ValueError(
                "MODEL.ROI_MASK_HEAD.TRAIN_ROIS_PER_IMAGE must be an integer >= 0 (0 = every "
                f"foreground RoI), got {mask_train_rois!r}"
            )
        self.mask_box_expand = float(mask_box_expand)
        self.mask_box_expand_test = float(mask_box_expand_test or mask_box_expand)
        self.mask_train_rois = int(mask_train_rois)
        bias = mask_train_neighbor_bias
        if isinstance(bias, bool) or not bias >= 0:
            raise ValueError(
                "MODEL.ROI_MASK_HEAD.TRAIN_ROIS_NEIGHBOR_BIAS must be a number >= 0 (0 = a "
                f"uniform draw), got {bias!r}"
            )
        if bias > 0 and self.mask_train_rois == 0:
            raise ValueError(
                f"MODEL.ROI_MASK_HEAD.TRAIN_ROIS_NEIGHBOR_BIAS {bias} biases the draw of "
                "MODEL.ROI_MASK_HEAD.TRAIN_ROIS_PER_IMAGE RoIs, which is 0 (every foreground RoI, "
                "no draw): set it, or the bias to 0"
            )
        self.mask_train_neighbor_bias = float(bias)
        self.train_on_pred_boxes = train_on_pred_boxes
        self.roi_chunk_size = int(roi_chunk_size)

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        ret = super().from_config(cfg)
        ret["train_on_pred_boxes"] = cfg.MODEL.ROI_BOX_HEAD.TRAIN_ON_PRED_BOXES
        ret["roi_chunk_size"] = cfg.TEST.ROI_CHUNK_SIZE
        ret.update(cls._init_box_head(cfg, input_shape))
        if cfg.MODEL.MASK_ON:
            ret.update(cls._init_mask_head(cfg, input_shape))
        return ret

    @staticmethod
    def _pooler(cfg, node, input_shape, in_features) -> ROIPooler:
        ndim = cfg.MODEL.SPATIAL_DIMS
        return ROIPooler(
            output_size=per_axis(node.POOLER_RESOLUTION, ndim, "POOLER_RESOLUTION"),
            scales=_pooler_scales(input_shape, in_features, ndim),
            sampling_ratio=node.POOLER_SAMPLING_RATIO,
            pooler_type=node.POOLER_TYPE,
            canonical_box_size=cfg.MODEL.ROI_HEADS.CANONICAL_BOX_SIZE,
            canonical_level=cfg.MODEL.ROI_HEADS.CANONICAL_LEVEL,
            ndim=ndim,
        )

    @classmethod
    def _box_pooler(cls, cfg, input_shape) -> Tuple[List[str], ROIPooler, ShapeSpec]:
        """The box branch's input features, pooler, and the pooled shape its heads take."""
        in_features = list(cfg.MODEL.ROI_HEADS.IN_FEATURES)
        box_pooler = cls._pooler(cfg, cfg.MODEL.ROI_BOX_HEAD, input_shape, in_features)
        channels = _input_channels(input_shape, in_features)
        # the pooled size travels with the shape, so a head cannot disagree with its pooler
        return in_features, box_pooler, ShapeSpec(channels=channels, size=box_pooler.output_size)

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        in_features, box_pooler, shape = cls._box_pooler(cfg, input_shape)
        box_head = build_box_head(cfg, shape)
        box_predictor = FastRCNNOutputLayers3D(cfg, box_head.output_shape)
        return {
            "box_in_features": in_features,
            "box_pooler": box_pooler,
            "box_head": box_head,
            "box_predictor": box_predictor,
        }

    @classmethod
    def _init_mask_head(cls, cfg, input_shape):
        in_features = list(cfg.MODEL.ROI_HEADS.IN_FEATURES)
        mask_pooler = cls._pooler(cfg, cfg.MODEL.ROI_MASK_HEAD, input_shape, in_features)
        channels = _input_channels(input_shape, in_features)
        return {
            "mask_in_features": in_features,
            "mask_box_expand": cfg.MODEL.ROI_MASK_HEAD.BOX_EXPAND,
            "mask_box_expand_test": cfg.MODEL.ROI_MASK_HEAD.BOX_EXPAND_TEST,
            "mask_train_rois": cfg.MODEL.ROI_MASK_HEAD.TRAIN_ROIS_PER_IMAGE,
            "mask_train_neighbor_bias": cfg.MODEL.ROI_MASK_HEAD.TRAIN_ROIS_NEIGHBOR_BIAS,
            "mask_pooler": mask_pooler,
            "mask_head": build_mask_head(
                cfg, ShapeSpec(channels=channels, size=mask_pooler.output_size)
            ),
        }

    def forward(
        self,
        images: ImageList,
        features: Dict[str, torch.Tensor],
        proposals: List[Instances],
        targets: Optional[List[Instances]] = None,
    ) -> Tuple[List[Instances], Dict[str, torch.Tensor]]:
        """
        Args:
            images: the batch (its tensor feeds a mask head that refines with the image).
            features: backbone features by name, each (N, C, *spatial).
            proposals: per image, ``proposal_boxes`` and ``objectness_logits``.
            targets: per image gt ``Instances`` (training only).

        Returns:
            training: (sampled proposals, losses ``loss_cls``, ``loss_box_reg``[,
            ``loss_box_iou``][, ``loss_mask``]);
            inference: (detections with ``pred_boxes``, ``scores``, ``pred_classes``,
            ``objectness``[, ``pred_box_iou``][, ``pred_masks``], {}).
        """
        if self.training:
            if targets is None:
                raise ValueError(f"{type(self).__name__} needs targets (gt instances) in training")
            proposals = self.label_and_sample_proposals(proposals, targets)
            gt_union = None
            if self.mask_on and getattr(self.mask_head, "needs_gt_union", False):
                # every gt object of each volume: the mask head learns the neighbours in a RoI
                gt_union = [u.bool() for u in foreground_targets(targets)]
            losses = self._forward_box(features, proposals, targets)
            losses.update(self._forward_mask(features, proposals, images, gt_union, targets))
            return proposals, losses
        pred_instances = self._forward_box(features, proposals)
        pred_instances = self.forward_with_given_boxes(features, pred_instances, images)
        return pred_instances, {}

    def forward_with_given_boxes(
        self,
        features: Dict[str, torch.Tensor],
        instances: List[Instances],
        images: Optional[ImageList] = None,
    ) -> List[Instances]:
        """
        Runs the mask branch on given detections (``pred_boxes``, ``pred_classes``); ``images``
        (the batch the features came from) is needed by a mask head that refines with the image.
        """
        assert not self.training
        return self._forward_mask(features, instances, images)

    def box_objectness(
        self, features: Dict[str, torch.Tensor], boxes: List[Boxes]
    ) -> List[torch.Tensor]:
        """
        The box branch's foreground probability ``1 - p(background)`` of given boxes (the
        ``objectness`` :func:`fast_rcnn_inference` gives a detection's RoI), e.g. of the
        detections' boxes on a flipped input (``TEST.FLIP_OBJECTNESS``).

        Returns:
            list[Tensor]: per image, (len(boxes[i]),).
        """
        assert not self.training
        return _foreground(self.box_probs(features, boxes))

    def box_ious(self, features: Dict[str, torch.Tensor], boxes: List[Boxes]) -> List[torch.Tensor]:
        """
        The box predictor's estimated IoU of given boxes with their objects
        (``ROI_BOX_HEAD.IOU_HEAD``), e.g. of the final detections' boxes.

        Returns:
            list[Tensor]: per image, (len(boxes[i]),).
        """
        assert not self.training
        return self.box_predictor.predict_ious(self._box_predictions(features, boxes), boxes)

    def box_objectness_and_ious(
        self, features: Dict[str, torch.Tensor], boxes: List[Boxes]
    ) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """:meth:`box_objectness` and :meth:`box_ious` of the same boxes, pooled once."""
        assert not self.training
        predictions = self._box_predictions(features, boxes)
        probs = self.box_predictor.predict_probs(predictions, boxes)
        return _foreground(probs), self.box_predictor.predict_ious(predictions, boxes)

    def box_probs(
        self, features: Dict[str, torch.Tensor], boxes: List[Boxes]
    ) -> List[torch.Tensor]:
        """The box branch's class probabilities of given boxes: per image, (len(boxes[i]), K+1)."""
        return self.box_predictor.predict_probs(self._box_predictions(features, boxes), boxes)

    def _chunks(self, instances: List) -> List[List[Tuple[int, int]]]:
        """
        Inference chunks of the RoIs (see :func:`roi_chunks`) of per-image ``Instances`` or
        ``Boxes``; one chunk in training.
        """
        return roi_chunks([len(x) for x in instances], 0 if self.training else self.roi_chunk_size)

    def _box_predictions(self, features: Dict[str, torch.Tensor], boxes: List[Boxes]):
        """The box predictor's outputs for the boxes of every image, in order, pooled by chunks."""
        return self._stage_predictions(features, boxes, [(self.box_head, self.box_predictor)])[0]

    def _stage_predictions(
        self,
        features: Dict[str, torch.Tensor],
        boxes: List[Boxes],
        stages: List[Tuple[nn.Module, nn.Module]],
    ) -> list:
        """
        Per (box head, predictor) pair of ``stages`` (a cascade's, or the branch's own), its
        outputs for the boxes of every image, in order: each chunk of boxes is pooled once and
        every pair runs on the same pooled features.
        """
        feats = [features[f] for f in self.box_in_features]
        per_stage = [[] for _ in stages]
        for chunk in self._chunks(boxes):
            part = [b[a:e] for b, (a, e) in zip(boxes, chunk)]
            box_features = self.box_head_input(self.box_pooler(feats, part))
            for out, (head, predictor) in zip(per_stage, stages):
                out.append(predictor(head(box_features)))
            del box_features
        # the predictor's outputs are per-RoI tensors (scores, deltas)
        return [
            chunks[0] if len(chunks) == 1 else tuple(cat(list(p), dim=0) for p in zip(*chunks))
            for chunks in per_stage
        ]

    def box_head_input(self, pooled: torch.Tensor) -> torch.Tensor:
        """The pooled box features as the box head takes them (a cascade scales their gradient)."""
        return pooled

    def _forward_box(
        self,
        features: Dict[str, torch.Tensor],
        proposals: List[Instances],
        targets: Optional[List[Instances]] = None,
    ):
        """
        The box branch: losses in training, detections at inference. ``targets`` (training) are
        for subclasses whose box branch matches boxes again (a cascade's later stages).
        """
        predictions = self._box_predictions(features, [x.proposal_boxes for x in proposals])
        if self.training:
            losses = self.box_predictor.losses(predictions, proposals)
            if self.train_on_pred_boxes:
                with torch.no_grad():
                    pred_boxes = self.box_predictor.predict_boxes_for_gt_classes(
                        predictions, proposals
                    )
                    for p, boxes in zip(proposals, pred_boxes):
                        p.proposal_boxes = Boxes(boxes)
            return losses
        pred_instances, _ = self.box_predictor.inference(predictions, proposals)
        if getattr(self.box_predictor, "predict_iou", False):
            # the estimate for the final box, not for the proposal it was regressed from
            boxes = [x.pred_boxes for x in pred_instances]
            for x, iou in zip(pred_instances, self.box_ious(features, boxes)):
                x.pred_box_iou = iou
        return pred_instances

    def _mask_head(self, feats, boxes, instances, images: Optional[ImageList]):
        """The mask head on one set of RoIs, with their image voxels if the head wants them."""
        if self.mask_image_pooler is None:
            return self.mask_head(self.mask_pooler(feats, boxes), instances)
        if images is None:
            raise ValueError(
                "ROI_MASK_HEAD.IMAGE_REFINE_DIM: the mask head refines with the image, but the "
                "ROI heads were called without it"
            )
        image = self.mask_image_pooler([images.tensor], boxes)
        return self.mask_head(self.mask_pooler(feats, boxes), instances, image=image)

    def _mask_training_rois(self, x: Instances, targets: Optional[Instances]) -> Instances:
        """
        At most ``mask_train_rois`` of one image's foreground RoIs, drawn without replacement:
        uniformly, or with ``mask_train_neighbor_bias`` and the image's gt ``targets`` with
        weight 1 + bias * :func:`neighbor_iou`.
        """
        if len(x) <= self.mask_train_rois:
            return x
        if self.mask_train_neighbor_bias > 0 and targets is not None and len(targets) > 1:
            weights = 1.0 + self.mask_train_neighbor_bias * neighbor_iou(
                x.proposal_boxes, targets.gt_boxes
            )
            keep = torch.multinomial(weights, self.mask_train_rois, replacement=False)
        else:
            keep = torch.randperm(len(x), device=x.proposal_boxes.device)[: self.mask_train_rois]
        return x[keep]

    def _forward_mask(
        self,
        features: Dict[str, torch.Tensor],
        instances: List[Instances],
        images: Optional[ImageList] = None,
        gt_union: Optional[List[torch.Tensor]] = None,
        targets: Optional[List[Instances]] = None,
    ):
        """
        The mask branch. In training, ``gt_union`` (per image, a bool volume of every gt object)
        becomes the foreground RoIs' ``gt_union_masks``, which the mask head needs for
        ``ROI_MASK_HEAD.NEIGHBOR_WEIGHT`` and ``NEIGHBOR_CONVS``, and ``targets`` (per image, the
        gt ``Instances``) weigh the draw of ``mask_train_rois`` RoIs by
        ``mask_train_neighbor_bias``.
        """
        if not self.mask_on:
            return {} if self.training else instances
        if self.training:
            instances, _ = select_foreground_proposals(instances, self.num_classes)
            if self.mask_train_rois > 0:
                # a random subset: the mask branch is the dearest part of a 3D training step
                targets = targets if targets is not None else [None] * len(instances)
                instances = [self._mask_training_rois(x, t) for x, t in zip(instances, targets)]
            for x, union in zip(instances, gt_union or []):
                # one view of the volume's objects per RoI, not a copy
                x.gt_union_masks = BitMasks(union[None].expand(len(x), *union.shape))
            boxes = [x.proposal_boxes for x in instances]
        else:
            boxes = [x.pred_boxes for x in instances]
        expand = self.mask_box_expand if self.training else self.mask_box_expand_test
        if expand != 1.0:
            # masks on enlarged boxes can reach past a box that cut the object short
            boxes = [Boxes(expand_boxes(b.tensor, expand)) for b in boxes]
            for inst, b in zip(instances, boxes):
                inst.set("mask_boxes" if self.training else "pred_mask_boxes", b)
        feats = [features[f] for f in self.mask_in_features]
        chunks = self._chunks(instances)
        if len(chunks) == 1:
            return self._mask_head(feats, boxes, instances, images)
        # One mask-head call per chunk on slices of the detections; the fields the head adds
        # (pred_masks) are concatenated back onto the full detections.
        pieces = [[] for _ in instances]
        for chunk in chunks:
            sliced = [x[a:b] for x, (a, b) in zip(instances, chunk)]
            chunk_boxes = [b[lo:hi] for b, (lo, hi) in zip(boxes, chunk)]
            for i, x in enumerate(self._mask_head(feats, chunk_boxes, sliced, images)):
                pieces[i].append(x)
        for x, parts in zip(instances, pieces):
            merged = Instances.cat(parts)
            for name, value in merged.get_fields().items():
                if not x.has(name):
                    x.set(name, value)
        return instances
