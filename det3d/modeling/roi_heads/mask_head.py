"""Mask heads: pooled RoI features -> per-class mask logits at twice the pooled resolution."""

from typing import List, Optional

import fvcore.nn.weight_init as weight_init
import torch
from torch import nn
from torch.nn import functional as F

from det3d.config import configurable
from det3d.layers import (
    ShapeSpec,
    cat,
    conv_nd,
    conv_norm_relu_stack,
    conv_transpose_nd,
    dice_loss,
)
from det3d.structures import Instances
from det3d.utils.axes import as_tuple
from det3d.utils.events import current_event_storage

from ..registries import ROI_MASK_HEAD_REGISTRY

__all__ = [
    "MaskRCNNConvUpsampleHead3D",
    "build_mask_head",
    "mask_rcnn_loss",
    "mask_rcnn_inference",
    "neighbor_mask_loss",
    "ROI_MASK_HEAD_REGISTRY",
]

_MASK_LOSS_TYPES = ("bce", "bce_dice")


def _log_mask_stats(logits: torch.Tensor, gt_masks: torch.Tensor) -> None:
    """Voxel accuracy and mean hard Dice of the predicted masks, to the trainer's storage."""
    storage = current_event_storage()
    if storage is None:
        return
    pred = (logits.detach() > 0).flatten(1)
    gt = gt_masks.flatten(1) > 0.5
    inter = (pred & gt).sum(1).float()
    dice = (2 * inter + 1) / (pred.sum(1) + gt.sum(1) + 1).float()
    storage.put_scalar("mask_rcnn/accuracy", (pred == gt).float().mean().item())
    storage.put_scalar("mask_rcnn/dice", dice.mean().item())


def _roi_crops(inst: Instances, name: str, size) -> torch.Tensor:
    """The masks of field ``name`` cropped to the RoIs the masks were pooled from (``mask_boxes``
    where those differ from ``proposal_boxes``) and resized to ``size``."""
    boxes = inst.mask_boxes if inst.has("mask_boxes") else inst.proposal_boxes
    return inst.get(name).crop_and_resize(boxes.tensor, size)


def mask_rcnn_loss(
    pred_mask_logits: torch.Tensor,
    instances: List[Instances],
    loss_type: str = "bce",
    bce_weight: float = 1.0,
    dice_weight: float = 1.0,
    neighbor_weight: float = 1.0,
) -> torch.Tensor:
    """
    Mask loss of foreground RoIs against their gt masks cropped to the RoI box and resized to the
    mask resolution (``BitMasks.crop_and_resize``, thresholded at 0.5).

    With ``neighbor_weight`` != 1, the binary cross-entropy of each voxel that belongs to another
    gt object of the volume (in the RoI's ``gt_union_masks``, not in its own gt mask) counts that
    many times: where objects touch, a RoI's box holds part of its neighbour, and a mask that
    takes the neighbour in merges the two in the label volume.

    Args:
        pred_mask_logits: (R, C, *M) with C = K classes or 1 (class-agnostic).
        instances: per image, foreground proposals with ``proposal_boxes`` (or ``mask_boxes``,
            the boxes the masks were pooled from, when those differ), ``gt_classes``,
            ``gt_masks``; their total length is R.
        loss_type: "bce" (mean binary cross-entropy over voxels) or "bce_dice"
            (``bce_weight * BCE + dice_weight * Dice``, Dice averaged over RoIs).
        neighbor_weight: the weight of other objects' voxels in the BCE (1 = as every voxel, as
            Detectron2); needs ``gt_union_masks`` (every gt object of the volume, one row per
            RoI) in ``instances``.

    Returns:
        scalar Tensor (0, attached to the graph, when there is no foreground RoI).
    """
    if loss_type not in _MASK_LOSS_TYPES:
        raise ValueError(f"ROI_MASK_HEAD.LOSS_TYPE {loss_type!r} is not one of {_MASK_LOSS_TYPES}")
    cls_agnostic = pred_mask_logits.shape[1] == 1
    mask_size = tuple(pred_mask_logits.shape[2:])
    weigh = neighbor_weight != 1.0
    gt_classes, gt_masks, unions = [], [], []
    for inst in instances:
        if len(inst) == 0:
            continue
        if not cls_agnostic:
            gt_classes.append(inst.gt_classes.to(torch.int64))
        crops = _roi_crops(inst, "gt_masks", mask_size)
        gt_masks.append(crops.to(device=pred_mask_logits.device))
        if weigh:
            if not inst.has("gt_union_masks"):
                raise ValueError(
                    "mask_rcnn_loss: ROI_MASK_HEAD.NEIGHBOR_WEIGHT needs gt_union_masks (every gt "
                    "object of the volume) on the foreground RoIs; the ROI heads set it"
                )
            union = _roi_crops(inst, "gt_union_masks", mask_size)
            unions.append(union.to(device=pred_mask_logits.device))
    if len(gt_masks) == 0:
        return pred_mask_logits.sum() * 0.0
    gt_masks = (cat(gt_masks, dim=0) >= 0.5).to(pred_mask_logits.dtype)
    if cls_agnostic:
        logits = pred_mask_logits[:, 0]
    else:
        classes = cat(gt_classes, dim=0)
        logits = pred_mask_logits[torch.arange(pred_mask_logits.shape[0]), classes]
    _log_mask_stats(logits, gt_masks)
    weight = None
    if weigh:
        neighbors = (cat(unions, dim=0) >= 0.5) & (gt_masks < 0.5)
        weight = 1.0 + (neighbor_weight - 1.0) * neighbors.to(logits.dtype)
    loss = F.binary_cross_entropy_with_logits(logits, gt_masks, weight=weight, reduction="mean")
    if loss_type == "bce_dice":
        loss = bce_weight * loss + dice_weight * dice_loss(logits, gt_masks, reduction="mean")
    return loss


def neighbor_mask_loss(neighbor_logits: torch.Tensor, instances: List[Instances]) -> torch.Tensor:
    """
    Loss of a mask head's neighbour branch: for each foreground RoI, which of its voxels belong to
    another gt object of the volume (in its ``gt_union_masks``, not in its own ``gt_masks``), both
    cropped to the RoI box and resized to the branch's resolution (thresholded at 0.5). Mean
    binary cross-entropy over voxels (many RoIs hold no neighbour, where a Dice is undefined).

    Args:
        neighbor_logits: (R, 1, *S) one logit per voxel of the RoI grid.
        instances: per image, foreground proposals with ``proposal_boxes`` (or ``mask_boxes``),
            ``gt_masks`` and ``gt_union_masks``; their total length is R.

    Returns:
        scalar Tensor (0, attached to the graph, when there is no foreground RoI).
    """
    size = tuple(neighbor_logits.shape[2:])
    targets = []
    for inst in instances:
        if len(inst) == 0:
            continue
        if not inst.has("gt_union_masks"):
            raise ValueError(
                "neighbor_mask_loss: ROI_MASK_HEAD.NEIGHBOR_CONVS needs gt_union_masks (every gt "
                "object of the volume) on the foreground RoIs; the ROI heads set it"
            )
        own = _roi_crops(inst, "gt_masks", size) >= 0.5
        union = _roi_crops(inst, "gt_union_masks", size) >= 0.5
        targets.append((union & ~own).to(device=neighbor_logits.device))
    if len(targets) == 0:
        return neighbor_logits.sum() * 0.0
    target = cat(targets, dim=0).to(neighbor_logits.dtype)
    return F.binary_cross_entropy_with_logits(neighbor_logits[:, 0], target, reduction="mean")


def mask_rcnn_inference(pred_mask_logits: torch.Tensor, pred_instances: List[Instances]) -> None:
    """
    Stores ``pred_masks`` (N, *M): the sigmoid probabilities of each detection's predicted class,
    at RoI resolution (not pasted into the image; see ``postprocessing.paste_mask``).

    Args:
        pred_mask_logits: (N_total, C, *M), C = K or 1 (class-agnostic).
        pred_instances: per image, detections with ``pred_classes``; modified in place.
    """
    num_masks = pred_mask_logits.shape[0]
    if pred_mask_logits.shape[1] == 1:
        probs = pred_mask_logits[:, 0].sigmoid()
    else:
        classes = cat([i.pred_classes for i in pred_instances]) if pred_instances else None
        if num_masks == 0:
            probs = pred_mask_logits[:, 0].sigmoid()
        else:
            probs = pred_mask_logits[torch.arange(num_masks), classes].sigmoid()
    for masks, inst in zip(probs.split([len(i) for i in pred_instances], dim=0), pred_instances):
        inst.pred_masks = masks


@ROI_MASK_HEAD_REGISTRY.register()
class MaskRCNNConvUpsampleHead3D(nn.Module):
    """
    ``NUM_CONV`` 3x3(x3) convs with ReLU, a stride-2 transposed conv (doubling every axis) with
    ReLU, then a 1x1(x1) predictor to K mask logits (1 if ``CLS_AGNOSTIC_MASK``).
    Loss ``loss_mask`` = ``LOSS_WEIGHT * mask_rcnn_loss(...)``.

    With ``image_refine_dim > 0`` (``IMAGE_REFINE_DIM``) the head also sees the RoI's own image
    voxels: the upsampled features are reduced to ``image_refine_dim`` channels (1x1), the input
    image resampled into the RoI at the mask resolution is concatenated, and two 3x3(x3) convs
    with ReLU refine them before the predictor. Pooled features come from strides of 4 and up, so
    on small, low-contrast objects they place a boundary to a few voxels only; the image places it
    to one. The ROI heads pool the image for the head (``image_input_size`` says at which size).

    With ``neighbor_convs > 0`` (``NEIGHBOR_CONVS``; BCNet's occluder layer, Ke et al. 2021) a
    branch of that many 3x3(x3) convs with ReLU reads the pooled features first and learns, with a
    1x1(x1) predictor of its own, which voxels of the RoI belong to *other* gt objects
    (``loss_mask_neighbor`` = ``NEIGHBOR_LOSS_WEIGHT * neighbor_mask_loss(...)``, at the pooled
    resolution); its features are added to the pooled ones before the convs above, so the mask
    is predicted knowing where the RoI's neighbours lie. At inference the branch's prediction is
    not used, only its features.
    """

    @configurable
    def __init__(
        self,
        input_shape: ShapeSpec,
        *,
        num_classes: int,
        conv_dims: List[int],
        conv_norm: str = "",
        ndim: int = 3,
        loss_type: str = "bce",
        bce_weight: float = 1.0,
        dice_weight: float = 1.0,
        neighbor_weight: float = 1.0,
        loss_weight: float = 1.0,
        image_refine_dim: int = 0,
        image_channels: int = 1,
        neighbor_convs: int = 0,
        neighbor_loss_weight: float = 1.0,
    ):
        """
        Args:
            input_shape: channels and size of the pooled features.
            num_classes: number of mask classes (1 when class-agnostic).
            conv_dims: output channels of each conv, then of the transposed conv (last entry);
                at least one entry.
            conv_norm: normalisation after each conv (see ``get_norm``).
            loss_type, bce_weight, dice_weight, neighbor_weight: see :func:`mask_rcnn_loss`
                (with ``neighbor_weight`` != 1 the ROI heads give the foreground RoIs
                ``gt_union_masks``).
            loss_weight: multiplies the mask loss.
            image_refine_dim: channels of the image refinement (0 = none, the head sees
                features only).
            image_channels: channels of the input image (with ``image_refine_dim``).
            neighbor_convs: convs of the neighbour branch (0 = none); the last one outputs the
                pooled features' channels, the others ``conv_dims[0]``.
            neighbor_loss_weight: multiplies the neighbour branch's loss.
        """
        super().__init__()
        if len(conv_dims) < 1:
            raise ValueError("MaskRCNNConvUpsampleHead3D: conv_dims must have at least 1 entry")
        if loss_type not in _MASK_LOSS_TYPES:
            raise ValueError(
                f"ROI_MASK_HEAD.LOSS_TYPE {loss_type!r} is not one of {_MASK_LOSS_TYPES}"
            )
        self.ndim = ndim
        self.loss_type = loss_type
        self.bce_weight = bce_weight
        self.dice_weight = dice_weight
        if not neighbor_weight >= 0:
            raise ValueError(f"ROI_MASK_HEAD.NEIGHBOR_WEIGHT must be >= 0, got {neighbor_weight}")
        self.neighbor_weight = float(neighbor_weight)
        self.loss_weight = loss_weight

        channels = input_shape.channels
        self.conv_norm_relus = []
        for k, conv in enumerate(conv_norm_relu_stack(ndim, channels, conv_dims[:-1], conv_norm)):
            self.add_module(f"mask_fcn{k + 1}", conv)
            self.conv_norm_relus.append(conv)
            channels = conv.out_channels
        self.deconv = conv_transpose_nd(ndim)(
            channels, conv_dims[-1], kernel_size=2, stride=2, padding=0
        )
        channels = conv_dims[-1]
        self.image_refine_dim = int(image_refine_dim)
        self.image_channels = int(image_channels)
        refine = []
        if self.image_refine_dim < 0:
            raise ValueError(f"ROI_MASK_HEAD.IMAGE_REFINE_DIM must be >= 0, got {image_refine_dim}")
        if self.image_refine_dim:
            if input_shape.size is None:
                raise ValueError(
                    "ROI_MASK_HEAD.IMAGE_REFINE_DIM needs the pooled size in ShapeSpec"
                )
            self.image_reduce = conv_nd(ndim)(channels, self.image_refine_dim, kernel_size=1)
            refine = list(
                conv_norm_relu_stack(
                    ndim,
                    self.image_refine_dim + self.image_channels,
                    [self.image_refine_dim] * 2,
                )
            )
            for k, conv in enumerate(refine):
                self.add_module(f"image_refine{k + 1}", conv)
            self.image_refine = refine
            channels = self.image_refine_dim
        self.predictor = conv_nd(ndim)(channels, num_classes, kernel_size=1)
        # the output size of the masks (2x the pooled size), at which the image is wanted
        self.image_input_size = (
            tuple(2 * s for s in as_tuple(input_shape.size, ndim))
            if self.image_refine_dim
            else None
        )

        extra = [self.image_reduce, *refine] if self.image_refine_dim else []
        for layer in self.conv_norm_relus + [self.deconv] + extra:
            weight_init.c2_msra_fill(layer)
        nn.init.normal_(self.predictor.weight, std=0.001)
        nn.init.constant_(self.predictor.bias, 0)

        # built last, so a head without it draws the same initial weights as before
        if int(neighbor_convs) != neighbor_convs or neighbor_convs < 0:
            raise ValueError(
                f"ROI_MASK_HEAD.NEIGHBOR_CONVS must be an int >= 0, got {neighbor_convs}"
            )
        if not neighbor_loss_weight >= 0:
            raise ValueError(
                f"ROI_MASK_HEAD.NEIGHBOR_LOSS_WEIGHT must be >= 0, got {neighbor_loss_weight}"
            )
        self.neighbor_loss_weight = float(neighbor_loss_weight)
        self.neighbor_convs = []
        dims = [conv_dims[0]] * (int(neighbor_convs) - 1) + [input_shape.channels]
        for k, conv in enumerate(
            conv_norm_relu_stack(ndim, input_shape.channels, dims[: int(neighbor_convs)], conv_norm)
        ):
            weight_init.c2_msra_fill(conv)
            self.add_module(f"neighbor_fcn{k + 1}", conv)
            self.neighbor_convs.append(conv)
        if self.neighbor_convs:
            self.neighbor_predictor = conv_nd(ndim)(input_shape.channels, 1, kernel_size=1)
            nn.init.normal_(self.neighbor_predictor.weight, std=0.001)
            nn.init.constant_(self.neighbor_predictor.bias, 0)

    @property
    def needs_gt_union(self) -> bool:
        """Whether training needs the foreground RoIs' ``gt_union_masks`` (every gt object)."""
        return self.neighbor_weight != 1.0 or bool(self.neighbor_convs)

    @classmethod
    def from_config(cls, cfg, input_shape: ShapeSpec):
        head = cfg.MODEL.ROI_MASK_HEAD
        return {
            "input_shape": input_shape,
            "num_classes": 1 if head.CLS_AGNOSTIC_MASK else cfg.MODEL.ROI_HEADS.NUM_CLASSES,
            "conv_dims": [head.CONV_DIM] * (head.NUM_CONV + 1),
            "conv_norm": head.NORM,
            "ndim": cfg.MODEL.SPATIAL_DIMS,
            "loss_type": head.LOSS_TYPE,
            "bce_weight": head.BCE_WEIGHT,
            "dice_weight": head.DICE_WEIGHT,
            "neighbor_weight": head.NEIGHBOR_WEIGHT,
            "loss_weight": head.LOSS_WEIGHT,
            "image_refine_dim": head.IMAGE_REFINE_DIM,
            "image_channels": cfg.INPUT.IN_CHANNELS,
            "neighbor_convs": head.NEIGHBOR_CONVS,
            "neighbor_loss_weight": head.NEIGHBOR_LOSS_WEIGHT,
        }

    def layers(self, x: torch.Tensor, image: Optional[torch.Tensor] = None) -> torch.Tensor:
        """
        (R, C, *P) pooled features [and (R, image_channels, *2P) RoI image voxels]
        -> (R, num_classes, *2P) mask logits.
        """
        return self._layers(x, image)[0]

    def _layers(self, x: torch.Tensor, image: Optional[torch.Tensor] = None):
        """``layers``, and the neighbour branch's (R, 1, *P) logits (None without it or at
        inference)."""
        neighbor_logits = None
        if self.neighbor_convs:
            h = x
            for layer in self.neighbor_convs:
                h = layer(h)
            if self.training:  # only its loss reads the prediction; inference needs the features
                neighbor_logits = self.neighbor_predictor(h)
            x = x + h
        for layer in self.conv_norm_relus:
            x = layer(x)
        x = F.relu(self.deconv(x))
        if self.image_refine_dim:
            if image is None:
                raise ValueError(
                    "ROI_MASK_HEAD.IMAGE_REFINE_DIM is set but the mask head got no RoI image"
                )
            if image.shape[0] != x.shape[0] or tuple(image.shape[2:]) != tuple(x.shape[2:]):
                raise ValueError(
                    f"mask head: RoI image {tuple(image.shape)} does not match the mask features "
                    f"{tuple(x.shape)} (same RoIs and spatial size expected)"
                )
            if image.shape[1] != self.image_channels:
                raise ValueError(
                    f"mask head: RoI image has {image.shape[1]} channels, INPUT.IN_CHANNELS is "
                    f"{self.image_channels}"
                )
            # the first refine conv reads [features, image] without concatenating them: see
            # Conv.forward_concat (16 + 1 channels ran at half the speed of 16 on a CPU)
            first, *rest = self.image_refine
            x = first.forward_concat([self.image_reduce(x), image.to(x.dtype)])
            for layer in rest:
                x = layer(x)
        return self.predictor(x), neighbor_logits

    def forward(
        self, x: torch.Tensor, instances: List[Instances], image: Optional[torch.Tensor] = None
    ):
        """
        Args:
            x: (R, C, *P) pooled features of the RoIs in ``instances`` (in order).
            instances: training: foreground proposals with ``gt_*`` fields;
                inference: detections with ``pred_classes``.
            image: (R, image_channels, *2P) the input image resampled into each RoI; needed
                when ``image_refine_dim`` is set (see ``image_input_size``), else ignored.

        Returns:
            training: ``{"loss_mask": Tensor}`` (and ``"loss_mask_neighbor"`` with a neighbour
            branch); inference: ``instances`` with ``pred_masks``.
        """
        x, neighbor_logits = self._layers(x, image)
        # loss and probabilities in float32 (no-op without autocast)
        x = x.float()
        if self.training:
            loss = mask_rcnn_loss(
                x,
                instances,
                self.loss_type,
                self.bce_weight,
                self.dice_weight,
                self.neighbor_weight,
            )
            losses = {"loss_mask": loss * self.loss_weight}
            if neighbor_logits is not None:
                loss = neighbor_mask_loss(neighbor_logits.float(), instances)
                losses["loss_mask_neighbor"] = loss * self.neighbor_loss_weight
            return losses
        mask_rcnn_inference(x, instances)
        return instances


def build_mask_head(cfg, input_shape: ShapeSpec) -> nn.Module:
    """Builds the mask head named by ``cfg.MODEL.ROI_MASK_HEAD.NAME``."""
    return ROI_MASK_HEAD_REGISTRY.get(cfg.MODEL.ROI_MASK_HEAD.NAME)(cfg, input_shape)
