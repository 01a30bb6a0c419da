"""
R-CNN meta-architectures, N-D: ``GeneralizedRCNN3D`` (backbone -> RPN -> ROI heads) and
``ProposalNetwork3D`` (backbone -> RPN), with the same parameter names (``backbone.*``,
``proposal_generator.*``, ``roi_heads.*``) so that checkpoints of one training stage load into the
next.

Staged training (see ``MODEL.FREEZE_MODULES``): (a) train ``ProposalNetwork3D``; (b) load it into
``GeneralizedRCNN3D`` with ``backbone`` and ``proposal_generator`` frozen, so the heads learn on the
live proposals of the frozen RPN, exactly those it gives at inference; (c) train everything.
"""

import contextlib
import itertools
import logging
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from det3d.config import configurable
from det3d.structures import ImageList, Instances
from det3d.utils.amp import resolve_amp_dtype
from det3d.utils.axes import check_spatial_axes

from ..backbone import Backbone, build_backbone
from ..brightness_split import check_split_args, split_by_brightness
from ..center_split import split_by_centers, split_instances
from ..foreground_head import build_foreground_head
from ..outline_refine import check_refine_args, refine_outlines
from ..postprocessing import (
    INTERP_MODE,
    check_voxel_owner,
    detector_postprocess,
    instances_to_label_volume,
)
from ..proposal_generator import build_proposal_generator
from ..registries import META_ARCH_REGISTRY
from ..roi_heads import build_roi_heads
from .build import freeze_modules

__all__ = ["GeneralizedRCNN3D", "ProposalNetwork3D"]

logger = logging.getLogger(__name__)


def _check_channel(key: str, channel, channels: int) -> None:
    if int(channel) != channel or not 0 <= channel < channels:
        raise ValueError(f"{key} {channel!r} is not one of the model's {channels} input channels")


def _original_size(input_dict: dict, image_size: Sequence[int]) -> tuple:
    """The size the outputs are rescaled to: the input's "depth"/"height"/"width" if given."""
    keys = ("depth", "height", "width")[-len(image_size) :]
    return tuple(int(input_dict.get(k, s)) for k, s in zip(keys, image_size))


class _RCNNBase(nn.Module):
    """
    What both meta-architectures share: input normalisation and batching, and frozen modules
    (``frozen_modules``: names of children that stay in eval mode and give no losses).
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        proposal_generator: nn.Module,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        ndim: int = 3,
        freeze: Sequence[str] = (),
        inference_amp: Optional[str] = None,
    ):
        """
        Args:
            backbone, proposal_generator: the parts.
            pixel_mean, pixel_std: one value per input channel.
            ndim: number of spatial dims.
            freeze: names of children to freeze (see :func:`freeze_modules`); a subclass with
                more children passes none here and freezes once it has built them all.
            inference_amp: None, or the autocast dtype name inference runs under
                (``TEST.AMP.DTYPE`` when ``TEST.AMP.ENABLED``; "" = the device's default).
        """
        super().__init__()
        self.backbone = backbone
        self.proposal_generator = proposal_generator
        self.ndim = ndim
        if len(pixel_mean) != len(pixel_std):
            raise ValueError(
                f"MODEL.PIXEL_MEAN {list(pixel_mean)} and MODEL.PIXEL_STD {list(pixel_std)} "
                "must have one value per input channel"
            )
        shape = (-1,) + (1,) * ndim
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(shape), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(shape), False)
        self.frozen_modules = ()
        freeze_modules(self, freeze)
        self.inference_amp = inference_amp

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        inference_amp = None
        if cfg.TEST.AMP.ENABLED:
            inference_amp = cfg.TEST.AMP.DTYPE
            # A bad dtype (float16 on a CPU config) fails here, not at the first inference.
            resolve_amp_dtype(inference_amp, torch.device(cfg.MODEL.DEVICE).type, "TEST.AMP.DTYPE")
        return {
            "inference_amp": inference_amp,
            "backbone": backbone,
            "proposal_generator": build_proposal_generator(cfg, backbone.output_shape()),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "ndim": cfg.MODEL.SPATIAL_DIMS,
            "freeze": cfg.MODEL.FREEZE_MODULES,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def inference_autocast(self):
        """The autocast context of inference (``TEST.AMP``); a null context when it is off."""
        if self.inference_amp is None:
            return contextlib.nullcontext()
        device_type = self.device.type
        dtype = resolve_amp_dtype(self.inference_amp, device_type, "TEST.AMP.DTYPE")
        return torch.autocast(device_type, dtype=dtype)

    def is_frozen(self, name: str) -> bool:
        return name in self.frozen_modules

    def train(self, mode: bool = True):
        """Like ``nn.Module.train``, but frozen children stay in eval mode."""
        super().train(mode)
        for name in self.frozen_modules:
            getattr(self, name).eval()
        return self

    def preprocess_image(self, batched_inputs: List[Dict]) -> ImageList:
        """Normalises each ``"image"`` per channel and pads them into one batch."""
        images = []
        for i, x in enumerate(batched_inputs):
            image = x["image"]
            if image.dim() != self.ndim + 1 or image.shape[0] != self.pixel_mean.shape[0]:
                raise ValueError(
                    f"batched_inputs[{i}]['image'] has shape {tuple(image.shape)}; the model "
                    f"expects (C={self.pixel_mean.shape[0]}, {self.ndim} spatial dims)"
                )
            image = image.to(self.device, dtype=torch.float32)
            if not torch.isfinite(image).all():
                raise ValueError(
                    f"batched_inputs[{i}]['image'] ({x.get('file_name', 'no file_name')}) "
                    "contains NaN or Inf voxels"
                )
            images.append((image - self.pixel_mean) / self.pixel_std)
        return self._pad_batch(images)

    def _pad_batch(self, images: List[torch.Tensor]) -> ImageList:
        """Normalised ``(C, *spatial)`` images padded into one batch the backbone can take."""
        return ImageList.from_tensors(
            images,
            self.backbone.size_divisibility,
            padding_constraints=getattr(self.backbone, "padding_constraints", None),
        )

    def _gt_instances(self, batched_inputs: List[Dict]) -> List[Instances]:
        for i, x in enumerate(batched_inputs):
            if "instances" not in x:
                raise KeyError(f"batched_inputs[{i}] has no 'instances': needed for training")
        return [x["instances"].to(self.device) for x in batched_inputs]

    def _features(self, images: ImageList) -> Dict[str, torch.Tensor]:
        if self.is_frozen("backbone"):
            with torch.no_grad():
                return self.backbone(images.tensor)
        return self.backbone(images.tensor)

    def _proposals(self, images, features, gt_instances):
        """
        Training-time RPN call. A frozen RPN is in eval mode: it gives the proposals it gives at
        inference and no losses, so the heads train on exactly what they will see.
        """
        if self.is_frozen("proposal_generator"):
            with torch.no_grad():
                proposals, _ = self.proposal_generator(images, features, None)
            return proposals, {}
        return self.proposal_generator(images, features, gt_instances)

    def _training_losses(self, images, features, gt_instances) -> Dict[str, torch.Tensor]:
        """The RPN's and the ROI heads' training losses (none from a frozen module)."""
        proposals, proposal_losses = self._proposals(images, features, gt_instances)
        losses = dict(proposal_losses)
        if not self.is_frozen("roi_heads"):
            _, detector_losses = self.roi_heads(images, features, proposals, gt_instances)
            losses.update(detector_losses)
        return losses


@META_ARCH_REGISTRY.register()
class GeneralizedRCNN3D(_RCNNBase):
    """
    Backbone -> RPN -> ROI heads (box and mask branches), and optionally a foreground head.

    Input: ``list[dict]`` (docs/conventions.md, "Model input and output"). Training returns the
    losses (``loss_rpn_cls``, ``loss_rpn_loc``, ``loss_cls``, ``loss_box_reg``[, ``loss_mask``][,
    ``loss_foreground``]; none from frozen modules). Inference returns, per input,
    ``{"instances", "instance_labels"}`` at the original size (see :meth:`inference`).
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        proposal_generator: nn.Module,
        roi_heads: nn.Module,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        ndim: int = 3,
        mask_threshold: float = 0.5,
        label_score_threshold: float = 0.0,
        label_overlap_threshold: float = 0.5,
        label_voxel_owner: str = "mask_prob",
        label_iou_power: float = 1.0,
        mask_flip_axes: Sequence[int] = (),
        flip_objectness: bool = False,
        transpose_xy: bool = False,
        foreground_head: Optional[nn.Module] = None,
        foreground_threshold: float = 0.5,
        foreground_mask_threshold: float = 0.2,
        outline_refine: Optional[Dict] = None,
        brightness_split: Optional[Dict] = None,
        freeze: Sequence[str] = (),
        inference_amp: Optional[str] = None,
    ):
        """
        Args:
            backbone, proposal_generator, roi_heads: the parts.
            pixel_mean, pixel_std: one value per input channel.
            ndim: number of spatial dims.
            mask_threshold: mask probability at which a voxel joins its instance in
                ``instance_labels``.
            label_score_threshold: score a detection needs to be pasted into
                ``instance_labels`` (all detections stay in ``instances``).
            label_overlap_threshold: a detection whose mask is claimed by higher-scoring ones
                for more than this fraction stays out of ``instance_labels``.
            label_iou_power: with detections that carry ``pred_box_iou`` (an IoU head), the
                label volume pastes them in decreasing objectness times ``pred_box_iou`` to this
                power (``MODEL.ROI_HEADS.LABELS_IOU_POWER``; 0: objectness alone).
            label_voxel_owner: who gets a voxel two pasted detections claim (see
                :func:`instances_to_label_volume`).
            mask_flip_axes: at inference, the masks of the final detections are averaged over
                the input flipped along every combination of these array axes (``2**k`` backbone
                passes; ``TEST.MASK_FLIP_AXES``); () = one pass. A foreground head's output is
                averaged over the same flips.
            flip_objectness: with ``mask_flip_axes``, each detection's ``objectness`` (what
                decides whether it enters ``instance_labels``) is averaged over the same flips:
                the plain pass's and, in each flipped pass, the box branch's foreground
                probability of the flipped box (``TEST.FLIP_OBJECTNESS``); so is
                ``pred_box_iou``, where the detections carry it.
            transpose_xy: the same averages also run on the input with its last two axes
                swapped, each flip again (``TEST.TRANSPOSE_XY``; twice the passes).
            foreground_head: None, or a module of ``FOREGROUND_HEAD_REGISTRY``: it adds
                ``loss_foreground`` in training, and at inference an instance's voxels in
                ``instance_labels`` are those where its mask probability reaches
                ``foreground_mask_threshold`` (lower than ``mask_threshold``, which still sets
                the mask the overlap rule looks at) and the head's foreground probability
                reaches ``foreground_threshold``. A head with a ``center_split`` then splits
                each instance of ``instance_labels`` that holds two or more centres
                (:func:`det3d.modeling.center_split.split_by_centers`): each new part is a new
                row of ``instances`` (see :func:`~det3d.modeling.center_split.split_instances`).
            outline_refine: None, or the keyword arguments of
                :func:`det3d.modeling.outline_refine.refine_outlines` (``sigma``, ``level``,
                ``grow``, ``ring``) plus ``channel``: the outlines of ``instance_labels`` are
                then re-drawn at each object's own threshold of that input channel, smoothed
                (``TEST.OUTLINE_REFINE``). ``instances`` keep the mask head's masks.
            brightness_split: None, or the keyword arguments of
                :func:`det3d.modeling.brightness_split.split_by_brightness` (``min_effect``,
                ``min_t``, ``min_objectness``, ``erosion``) plus ``channel``: right after
                pasting, a left-out detection takes its part of an instance whose brightness on
                that input channel differs from the rest's (``TEST.BRIGHTNESS_SPLIT``).
            freeze: names of children to freeze (see :func:`freeze_modules`).
            inference_amp: see :class:`_RCNNBase`.
        """
        super().__init__(
            backbone=backbone,
            proposal_generator=proposal_generator,
            pixel_mean=pixel_mean,
            pixel_std=pixel_std,
            ndim=ndim,
            inference_amp=inference_amp,
        )
        self.roi_heads = roi_heads
        self.foreground_head = foreground_head
        self.foreground_threshold = float(foreground_threshold)
        self.foreground_mask_threshold = float(foreground_mask_threshold)
        self.mask_threshold = mask_threshold
        self.label_score_threshold = label_score_threshold
        self.label_overlap_threshold = label_overlap_threshold
        self.label_voxel_owner = check_voxel_owner(label_voxel_owner)
        if label_iou_power < 0:
            raise ValueError(
                f"MODEL.ROI_HEADS.LABELS_IOU_POWER must be >= 0, got {label_iou_power}"
            )
        self.label_iou_power = float(label_iou_power)
        self.mask_flip_axes = check_spatial_axes(mask_flip_axes, ndim, "TEST.MASK_FLIP_AXES")
        self.flip_objectness = bool(flip_objectness)
        self.transpose_xy = bool(transpose_xy)
        if self.flip_objectness and not (self.mask_flip_axes or self.transpose_xy):
            raise ValueError(
                "TEST.FLIP_OBJECTNESS averages over TEST.MASK_FLIP_AXES (and TEST.TRANSPOSE_XY), "
                "which leave one pass"
            )
        mask_grid = getattr(getattr(roi_heads, "mask_pooler", None), "output_size", None)
        if self.transpose_xy and mask_grid is not None and mask_grid[-1] != mask_grid[-2]:
            raise ValueError(
                f"TEST.TRANSPOSE_XY swaps x and y, but the mask grid {tuple(mask_grid)} is not as "
                "fine in x as in y (MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION)"
            )
        if self.flip_objectness and not hasattr(roi_heads, "box_objectness"):
            raise ValueError(
                f"TEST.FLIP_OBJECTNESS needs ROI heads with a box_objectness method; "
                f"{type(roi_heads).__name__} has none"
            )
        self.outline_refine, self.refine_channel = None, 0
        if outline_refine is not None:
            self.outline_refine = dict(outline_refine)
            self.refine_channel = self.outline_refine.pop("channel", 0)
            _check_channel("TEST.OUTLINE_REFINE.CHANNEL", self.refine_channel, len(pixel_mean))
            check_refine_args(ndim, **self.outline_refine)
        self.brightness_split, self.split_channel = None, 0
        if brightness_split is not None:
            self.brightness_split = dict(brightness_split)
            self.split_channel = self.brightness_split.pop("channel", 0)
            _check_channel("TEST.BRIGHTNESS_SPLIT.CHANNEL", self.split_channel, len(pixel_mean))
            check_split_args(**self.brightness_split)
        freeze_modules(self, freeze)

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        ret["roi_heads"] = build_roi_heads(cfg, ret["backbone"].output_shape())
        ret["mask_threshold"] = cfg.MODEL.ROI_MASK_HEAD.MASK_THRESHOLD
        ret["label_score_threshold"] = cfg.MODEL.ROI_HEADS.LABELS_SCORE_THRESH_TEST
        ret["label_overlap_threshold"] = cfg.MODEL.ROI_HEADS.LABELS_OVERLAP_THRESH_TEST
        ret["label_voxel_owner"] = cfg.MODEL.ROI_HEADS.LABELS_VOXEL_OWNER
        ret["label_iou_power"] = cfg.MODEL.ROI_HEADS.LABELS_IOU_POWER
        ret["mask_flip_axes"] = cfg.TEST.MASK_FLIP_AXES
        ret["flip_objectness"] = cfg.TEST.FLIP_OBJECTNESS
        ret["transpose_xy"] = cfg.TEST.TRANSPOSE_XY
        ret["foreground_head"] = build_foreground_head(cfg, ret["backbone"].output_shape())
        ret["foreground_threshold"] = cfg.MODEL.FOREGROUND_HEAD.THRESHOLD
        ret["foreground_mask_threshold"] = cfg.MODEL.FOREGROUND_HEAD.MASK_THRESHOLD
        refine = cfg.TEST.OUTLINE_REFINE
        if refine.ENABLED:
            ret["outline_refine"] = dict(
                sigma=list(refine.SIGMA),
                level=refine.LEVEL,
                grow=refine.GROW,
                ring=list(refine.BACKGROUND_RING),
                channel=refine.CHANNEL,
            )
        split = cfg.TEST.BRIGHTNESS_SPLIT
        if split.ENABLED:
            ret["brightness_split"] = dict(
                min_effect=split.MIN_EFFECT,
                min_t=split.MIN_T,
                min_objectness=split.MIN_OBJECTNESS,
                erosion=split.EROSION,
                channel=split.CHANNEL,
            )
        return ret

    def forward(self, batched_inputs: List[Dict]):
        """
        Args:
            batched_inputs: one dict per volume: ``"image"`` (C, *spatial), ``"instances"``
                (training), and optionally the original ``"depth"``, ``"height"``, ``"width"``.

        Returns:
            training: dict of scalar losses; inference: see :meth:`inference`.
        """
        if not self.training:
            return self.inference(batched_inputs)
        images = self.preprocess_image(batched_inputs)
        gt_instances = self._gt_instances(batched_inputs)
        features = self._features(images)
        losses = self._training_losses(images, features, gt_instances)
        if self.foreground_head is not None and not self.is_frozen("foreground_head"):
            losses.update(self.foreground_head(features, images, gt_instances))
        return losses

    def inference(self, batched_inputs: List[Dict], do_postprocess: bool = True) -> List[Dict]:
        """
        Returns:
            With ``do_postprocess`` (default): per input, ``{"instances": Instances,
            "instance_labels": int32 Tensor}`` at the original size: boxes rescaled per axis to
            the input's "depth"/"height"/"width" and clipped, ``pred_masks`` (N, *M) at RoI
            resolution, and the label volume in which row ``i`` has label ``i + 1`` (see
            :func:`instances_to_label_volume`).
            Without: ``list[Instances]`` at the network's input size (a foreground head's
            output is then not used).
        """
        assert not self.training
        images = self.preprocess_image(batched_inputs)
        with self.inference_autocast():  # the heads return float32 boxes, scores and masks
            features = self.backbone(images.tensor)
            proposals, _ = self.proposal_generator(images, features, None)
            results, _ = self.roi_heads(images, features, proposals, None)
            foreground = None  # ImageList: [i] is volume i's foreground without its padding
            if self.foreground_head is not None and do_postprocess:
                foreground = ImageList(self.foreground_head(features, images), images.image_sizes)
            del features
            masks_on = getattr(self.roi_heads, "mask_on", False)
            averaged = self.mask_flip_axes or self.transpose_xy
            if averaged and (masks_on or foreground is not None or self.flip_objectness):
                foreground = self._flip_averaged(images, results, foreground, masks_on)
        if not do_postprocess:
            return results
        return self._postprocess(results, batched_inputs, images.image_sizes, foreground)

    def _flip_averaged(
        self,
        images: ImageList,
        results: List[Instances],
        foreground: Optional[ImageList],
        masks_on: bool,
    ) -> Optional[ImageList]:
        """
        Averages the masks (``masks_on``), the foreground probabilities (if not None) and, with
        ``flip_objectness``, the detections' ``objectness`` (and ``pred_box_iou``, where they
        carry it) over the flips of ``mask_flip_axes``
        (every combination, the unflipped pass included), each also transposed in x/y with
        ``transpose_xy``: each detection's ``pred_masks`` is
        replaced by the mean of the mask branch's masks on the flipped batch's features in the
        flipped boxes, flipped back, and its objectness by the mean of its own and the box
        branch's objectness of the flipped boxes; boxes, scores and classes stay those of the
        unflipped pass. ``images`` is the normalised batch; each image is
        flipped within its own size, then padded again.

        Returns:
            the averaged foreground probabilities, or None.
        """
        axes = self.mask_flip_axes
        flips = [()] + [c for k in range(1, len(axes) + 1) for c in itertools.combinations(axes, k)]
        # (flipped axes, transposed) of each pass but the plain one, already run
        views = [(f, t) for t in ((False, True) if self.transpose_xy else (False,)) for f in flips]
        views = views[1:]
        total = [r.pred_masks.clone() for r in results] if masks_on else []
        obj_total = [r.objectness.clone() for r in results] if self.flip_objectness else []
        with_iou = self.flip_objectness and all(r.has("pred_box_iou") for r in results)
        iou_total = [r.pred_box_iou.clone() for r in results] if with_iou else []
        fg_total = None
        if foreground is not None:
            fg_total = ImageList(foreground.tensor.clone(), foreground.image_sizes)
        for flip, transpose in views:
            dims = [1 + a for a in flip]  # (C, *spatial) images, (N, *M) masks

            def there(x):  # the view of x: flipped, then x and y swapped
                x = x.flip(dims) if dims else x
                return x.transpose(-1, -2) if transpose else x

            def back(x):  # inverse of there()
                x = x.transpose(-1, -2) if transpose else x
                return x.flip(dims) if dims else x

            flipped = self._pad_batch([there(images[i]) for i in range(len(results))])
            features = self.backbone(flipped.tensor)
            if fg_total is not None:
                fg = ImageList(self.foreground_head(features, flipped), flipped.image_sizes)
                for i in range(len(results)):  # (K, *spatial) views of the unpadded volumes
                    fg_total[i].add_(back(fg[i]))
            boxes = [r.pred_boxes.flipped(flip, s) for r, s in zip(results, images.image_sizes)]
            if transpose:
                boxes = [b.transposed_xy() for b in boxes]
            if obj_total:
                if with_iou:  # both from one pass of the box branch
                    objectness, ious = self.roi_heads.box_objectness_and_ious(features, boxes)
                    for t, o in zip(iou_total, ious):
                        t += o
                else:
                    objectness = self.roi_heads.box_objectness(features, boxes)
                for t, o in zip(obj_total, objectness):
                    t += o
            if not masks_on:
                continue
            given = [
                Instances(tuple(s), pred_boxes=b, pred_classes=r.pred_classes)
                for r, b, s in zip(results, boxes, flipped.image_sizes)
            ]
            given = self.roi_heads.forward_with_given_boxes(features, given, flipped)
            del features
            for t, g in zip(total, given):
                t += back(g.pred_masks)
        for r, t in zip(results, total):
            r.pred_masks = t / (len(views) + 1)
        for r, t in zip(results, obj_total):
            r.objectness = t / (len(views) + 1)
        for r, t in zip(results, iou_total):
            r.pred_box_iou = t / (len(views) + 1)
        if fg_total is not None:
            fg_total.tensor /= len(views) + 1
        return fg_total

    def _postprocess(
        self, instances, batched_inputs, image_sizes, foreground: Optional[ImageList] = None
    ) -> List[Dict]:
        processed = []
        for i, (results, input_dict, image_size) in enumerate(
            zip(instances, batched_inputs, image_sizes)
        ):
            out_size = _original_size(input_dict, image_size)
            r = detector_postprocess(results, out_size)
            fg, claim = None, None
            if foreground is not None:
                # (K, *spatial): foreground, centre map where predicted
                fg = self._on_grid(foreground[i], out_size)
                claim = self.foreground_mask_threshold
            labels = instances_to_label_volume(
                r,
                out_size,
                self.mask_threshold,
                score_threshold=self.label_score_threshold,
                overlap_threshold=self.label_overlap_threshold,
                voxel_owner=self.label_voxel_owner,
                iou_power=self.label_iou_power,
                foreground=fg[0] if fg is not None else None,
                foreground_threshold=self.foreground_threshold,
                claim_threshold=claim,
            )
            grids = {}  # input channels on the labels' grid, each resampled once

            def channel(c: int) -> torch.Tensor:
                if c not in grids:
                    image = input_dict["image"][c : c + 1].float()
                    grids[c] = self._on_grid(image, out_size)[0]
                return grids[c]

            if self.brightness_split is not None:
                labels, _ = split_by_brightness(
                    labels,
                    channel(self.split_channel),
                    r,
                    foreground=fg[0] >= self.foreground_threshold if fg is not None else None,
                    mask_threshold=self.mask_threshold,
                    **self.brightness_split,
                )
            split = getattr(self.foreground_head, "center_split", None)
            if fg is not None and split is not None:
                labels, splits = split_by_centers(labels, fg[1], first_label=len(r) + 1, **split)
                r = split_instances(r, labels, splits)
            if self.outline_refine is not None:
                labels = refine_outlines(
                    labels, channel(self.refine_channel), **self.outline_refine
                )
            processed.append({"instances": r, "instance_labels": labels})
        return processed

    def _on_grid(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        """``x`` (K, *spatial) on the original grid ``size``: where the mapper resampled the input,
        (bi/tri)linearly back to it."""
        if tuple(x.shape[1:]) == tuple(size):
            return x
        mode = INTERP_MODE[self.ndim]
        return F.interpolate(x[None], tuple(size), mode=mode, align_corners=False)[0]


@META_ARCH_REGISTRY.register()
class ProposalNetwork3D(_RCNNBase):
    """
    Backbone -> RPN only (training stage "rpn"). Training returns the RPN losses; inference
    returns ``[{"proposals": Instances}]`` rescaled to the original size. Built from the same
    arguments (and config keys) as its base.
    """

    def forward(self, batched_inputs: List[Dict]):
        images = self.preprocess_image(batched_inputs)
        if self.training:
            gt_instances = self._gt_instances(batched_inputs)
            features = self._features(images)
            _, losses = self._proposals(images, features, gt_instances)
            return losses
        with self.inference_autocast():
            features = self.backbone(images.tensor)
            proposals, _ = self.proposal_generator(images, features, None)
        processed = []
        for results, input_dict, image_size in zip(proposals, batched_inputs, images.image_sizes):
            out_size = _original_size(input_dict, image_size)
            processed.append({"proposals": detector_postprocess(results, out_size)})
        return processed
