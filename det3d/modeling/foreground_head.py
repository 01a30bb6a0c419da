"""
Foreground heads: backbone features and the input image -> a full-resolution foreground probability.

A Mask R-CNN mask lives on a grid of ``2P`` cells per axis laid over its box, so its outline is
placed to within a cell, a voxel or more for all but the smallest objects. A foreground head
predicts, for every voxel of the input, whether it belongs to some object. The label volume then
takes each instance's voxels where its mask is at least moderately likely *and* the foreground
head says foreground (:func:`det3d.modeling.postprocessing.instances_to_label_volume`): the
instance masks decide which object a voxel belongs to, the foreground head where objects end.

A head may also predict a centre map (:class:`FPNForegroundCenterHead`): each object voxel's
distance to the object's edge, relative to the object's largest. It has one peak per object and a
valley where two objects touch, so an instance of the label volume that covers two touching
objects is split along that valley (det3d/modeling/center_split.py).

Call contract (``FOREGROUND_HEAD_REGISTRY``): ``obj(cfg, input_shape: dict[str, ShapeSpec])``;
the module's ``forward(features, images, targets=None)`` returns its losses
(``{"loss_foreground": scalar, ...}``) with ``targets`` (training) and, without, the
``(N, K, *spatial)`` probabilities of the padded batch: channel 0 the foreground, channel 1 (heads
with ``predicts_centers``) the centre map. Heads with centre maps also carry ``center_split``
(None, or the keyword arguments of :func:`det3d.modeling.center_split.split_by_centers`).
"""

from typing import Dict, List, Optional

import fvcore.nn.weight_init as weight_init
import torch
from torch import nn
from torch.nn import functional as F

from det3d.config import configurable, get_cfg
from det3d.layers import ShapeSpec, conv_nd, conv_norm_relu_stack, dice_loss, resize_linear
from det3d.structures import ImageList, Instances
from det3d.utils.axes import as_tuple

from .center_split import center_targets
from .registries import FOREGROUND_HEAD_REGISTRY

__all__ = [
    "FPNForegroundHead",
    "FPNForegroundCenterHead",
    "build_foreground_head",
    "foreground_targets",
]

# keys of MODEL.FOREGROUND_HEAD only a head with a centre map reads (defaults: det3d's config)
CENTER_KEYS = (
    "CENTER_LOSS_WEIGHT",
    "CENTER_SPLIT",
    "CENTER_SEED_THRESHOLD",
    "CENTER_MIN_SEED_VOXELS",
)


def foreground_targets(targets: List[Instances]) -> List[torch.Tensor]:
    """
    The union of each volume's gt masks.

    Args:
        targets: per volume, ``gt_masks`` (BitMasks of the volume before padding).

    Returns:
        list[Tensor]: per volume, float ``(*spatial)``, 1 inside any object.
    """
    for i, t in enumerate(targets):
        if not t.has("gt_masks"):
            raise KeyError(f"targets[{i}] has no gt_masks: the foreground head trains on masks")
    return [t.gt_masks.tensor.any(0).float() for t in targets]


@FOREGROUND_HEAD_REGISTRY.register()
class FPNForegroundHead(nn.Module):
    """
    One feature level (by default the finest, ``p2``) reduced to ``conv_dim`` channels by a 1x1
    conv and resampled (bi/trilinear) to the input's voxels, plus a kernel-3 conv of the
    normalised input to ``conv_dim`` channels; ReLU, then ``num_conv`` kernel-3 convs with ReLU and
    a 1x1 conv to one logit. The features bring context (how bright this object is, where its
    neighbours are), the image conv the voxel detail. Every full-resolution layer is dear on a
    CPU (one more kernel-3 conv of 8 channels over two 64^3 volumes added 0.16 s to a training
    step on one core, about what the whole 32-channel mask head of 32 RoIs costs), hence one image
    conv and none after it by default. ``mid_res_convs`` kernel-3 convs can run first on a grid of
    half the feature stride (with a kernel-3 conv of the input averaged onto it), an eighth of
    the voxels of the input in 3D.
    Loss: binary cross-entropy plus soft Dice over each volume's unpadded voxels, against the
    union of its gt masks.
    """

    predicts_centers = False
    center_split = None

    @configurable
    def __init__(
        self,
        *,
        input_shape: ShapeSpec,
        in_feature: str,
        image_channels: int,
        conv_dim: int = 8,
        num_conv: int = 0,
        mid_res_convs: int = 0,
        norm: str = "",
        loss_weight: float = 1.0,
        ndim: int = 3,
    ):
        """
        Args:
            input_shape: shape of the feature level ``in_feature``.
            in_feature: name of the backbone output the head reads.
            image_channels: channels of the model's input.
            conv_dim: channels of the full-resolution layers.
            num_conv: number of kernel-3 convs after the image conv, at full resolution.
            mid_res_convs: number of kernel-3 convs on a grid halfway between the feature level
                and the input (half the feature stride per axis, at least 1), after adding a
                kernel-3 conv of the input averaged onto that grid; 0: none, the features go
                straight to the input's grid.
            norm: norm of those convs (see :func:`det3d.layers.get_norm`).
            loss_weight: weight of ``loss_foreground``.
            ndim: number of spatial dims.
        """
        super().__init__()
        if conv_dim < 1 or num_conv < 0 or mid_res_convs < 0:
            raise ValueError(
                f"MODEL.FOREGROUND_HEAD.CONV_DIM must be >= 1 and NUM_CONV, MID_RES_CONVS >= 0, "
                f"got {conv_dim}, {num_conv} and {mid_res_convs}"
            )
        self.in_feature = in_feature
        self.ndim = ndim
        self.loss_weight = float(loss_weight)
        conv = conv_nd(ndim)
        self.reduce = conv(input_shape.channels, conv_dim, kernel_size=1)
        self.image_conv = conv(image_channels, conv_dim, kernel_size=3, padding=1)
        stride = as_tuple(input_shape.stride or 1, ndim, name="input_shape.stride")
        self.mid_factor = tuple(max(int(s) // 2, 1) for s in stride)
        self.mid_convs = []
        if mid_res_convs:
            self.mid_image_conv = conv(image_channels, conv_dim, kernel_size=3, padding=1)
            weight_init.c2_msra_fill(self.mid_image_conv)
            stack = conv_norm_relu_stack(ndim, conv_dim, [conv_dim] * mid_res_convs, norm)
            for k, layer in enumerate(stack):
                weight_init.c2_msra_fill(layer)
                self.add_module(f"fg_mid_conv{k + 1}", layer)
                self.mid_convs.append(layer)
        self.convs = []
        stack = conv_norm_relu_stack(ndim, conv_dim, [conv_dim] * num_conv, norm)
        for k, layer in enumerate(stack):
            weight_init.c2_msra_fill(layer)
            self.add_module(f"fg_conv{k + 1}", layer)
            self.convs.append(layer)
        self.predictor = conv(conv_dim, 2 if self.predicts_centers else 1, kernel_size=1)
        weight_init.c2_msra_fill(self.reduce)
        weight_init.c2_msra_fill(self.image_conv)
        nn.init.normal_(self.predictor.weight, std=0.001)
        nn.init.constant_(self.predictor.bias, 0.0)

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        name = cfg.MODEL.FOREGROUND_HEAD.IN_FEATURE
        if name not in input_shape:
            raise KeyError(
                f"MODEL.FOREGROUND_HEAD.IN_FEATURE {name!r} is not a backbone output; "
                f"the backbone gives {sorted(input_shape)}"
            )
        return {
            "input_shape": input_shape[name],
            "in_feature": name,
            "image_channels": len(cfg.MODEL.PIXEL_MEAN),
            "conv_dim": cfg.MODEL.FOREGROUND_HEAD.CONV_DIM,
            "num_conv": cfg.MODEL.FOREGROUND_HEAD.NUM_CONV,
            "mid_res_convs": cfg.MODEL.FOREGROUND_HEAD.MID_RES_CONVS,
            "norm": cfg.MODEL.FOREGROUND_HEAD.NORM,
            "loss_weight": cfg.MODEL.FOREGROUND_HEAD.LOSS_WEIGHT,
            "ndim": cfg.MODEL.SPATIAL_DIMS,
        }

    def layers(self, features: Dict[str, torch.Tensor], images: torch.Tensor) -> torch.Tensor:
        """
        Args:
            features: backbone outputs of the batch.
            images: (N, C, *spatial) the normalised, padded batch.

        Returns:
            Tensor: (N, K, *spatial) logits: foreground, and centre map where predicted.
        """
        x = self.reduce(features[self.in_feature])
        images = images.to(x.dtype)
        if self.mid_convs:
            pool = getattr(F, f"avg_pool{self.ndim}d")
            mid = pool(images, self.mid_factor, self.mid_factor, ceil_mode=True)
            x = resize_linear(x, mid.shape[2:])
            x = F.relu(x + self.mid_image_conv(mid))
            for layer in self.mid_convs:
                x = layer(x)
        x = resize_linear(x, images.shape[2:])
        x = F.relu(x + self.image_conv(images))
        for layer in self.convs:
            x = layer(x)
        return self.predictor(x)

    def forward(
        self,
        features: Dict[str, torch.Tensor],
        images: ImageList,
        targets: Optional[List[Instances]] = None,
    ):
        """
        Returns:
            the losses with ``targets``; else (N, K, *spatial) float32 probabilities of the
            padded batch.
        """
        logits = self.layers(features, images.tensor)
        if targets is None:
            return torch.sigmoid(logits.float())
        return self.losses(ImageList(logits, images.image_sizes), targets)

    def losses(self, logits: ImageList, targets: List[Instances]) -> Dict[str, torch.Tensor]:
        """
        ``{"loss_foreground"}`` from the (N, K, *spatial) logits of the padded batch, as an
        ImageList (``logits[i]``: volume i without its padding).
        """
        losses = []
        for i, gt in enumerate(foreground_targets(targets)):
            x, t = logits[i][0].float()[None], gt.to(logits.device)[None]
            bce = F.binary_cross_entropy_with_logits(x, t)
            losses.append(bce + dice_loss(x, t, reduction="mean"))
        return {"loss_foreground": self.loss_weight * torch.stack(losses).mean()}


@FOREGROUND_HEAD_REGISTRY.register()
class FPNForegroundCenterHead(FPNForegroundHead):
    """
    :class:`FPNForegroundHead` with a second output channel, the centre map: for each object
    voxel, its Euclidean distance (in voxels of the model's input) to the nearest voxel outside
    its object, divided by the object's largest (:func:`det3d.modeling.center_split.center_targets`;
    StarDist's object probability). Its loss, ``loss_center``, is binary cross-entropy against that
    map, the mean over each volume's object voxels and the mean over its other (unpadded) voxels
    weighing half each. At inference the model splits each instance of
    ``instance_labels`` that holds two or more centres (``center_split``).
    """

    predicts_centers = True

    @configurable
    def __init__(
        self,
        *,
        center_loss_weight: float = 1.0,
        center_split: Optional[dict] = None,
        **kwargs,
    ):
        """
        Args:
            center_loss_weight: weight of ``loss_center``.
            center_split: keyword arguments of
                :func:`det3d.modeling.center_split.split_by_centers` (``seed_threshold``,
                ``min_seed_voxels``), or None: the map is predicted but nothing is split.
            kwargs: as :class:`FPNForegroundHead`.
        """
        super().__init__(**kwargs)
        self.center_loss_weight = float(center_loss_weight)
        self.center_split = dict(center_split) if center_split is not None else None

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        ret = super().from_config(cfg, input_shape)
        c = cfg.MODEL.FOREGROUND_HEAD
        if not 0.0 < c.CENTER_SEED_THRESHOLD <= 1.0 or c.CENTER_MIN_SEED_VOXELS < 1:
            raise ValueError(
                f"MODEL.FOREGROUND_HEAD.CENTER_SEED_THRESHOLD must be in (0, 1] and "
                f"CENTER_MIN_SEED_VOXELS >= 1, got {c.CENTER_SEED_THRESHOLD} and "
                f"{c.CENTER_MIN_SEED_VOXELS}"
            )
        ret["center_loss_weight"] = c.CENTER_LOSS_WEIGHT
        ret["center_split"] = (
            {"seed_threshold": c.CENTER_SEED_THRESHOLD, "min_seed_voxels": c.CENTER_MIN_SEED_VOXELS}
            if c.CENTER_SPLIT
            else None
        )
        return ret

    def losses(self, logits: ImageList, targets: List[Instances]) -> Dict[str, torch.Tensor]:
        """``loss_foreground`` and ``loss_center``."""
        losses = super().losses(logits, targets)
        center = []
        for i, t in enumerate(targets):
            x, want = logits[i][1].float(), center_targets(t.gt_masks.tensor).to(logits.device)
            # object and background voxels weigh half each: where the map matters is inside the
            # objects (the valleys between touching ones), often a tenth of the volume or less
            inside = (want > 0).float()
            n_in = inside.sum()
            n_out = inside.numel() - n_in
            parts = int(n_in > 0) + int(n_out > 0)
            weight = inside / n_in.clamp(min=1) + (1 - inside) / n_out.clamp(min=1)
            bce = F.binary_cross_entropy_with_logits(x, want, reduction="none")
            center.append((bce * weight).sum() / parts)
        losses["loss_center"] = self.center_loss_weight * torch.stack(center).mean()
        return losses


def build_foreground_head(cfg, input_shape: Dict[str, ShapeSpec]) -> Optional[nn.Module]:
    """``FOREGROUND_HEAD_REGISTRY.get(cfg.MODEL.FOREGROUND_HEAD.NAME)``; None where NAME is ""."""
    name = cfg.MODEL.FOREGROUND_HEAD.NAME
    head = FOREGROUND_HEAD_REGISTRY.get(name) if name else None
    if not getattr(head, "predicts_centers", False):
        defaults = get_cfg().MODEL.FOREGROUND_HEAD
        for key in CENTER_KEYS:
            if cfg.MODEL.FOREGROUND_HEAD.get(key) != defaults[key]:
                raise ValueError(
                    f"MODEL.FOREGROUND_HEAD.{key} is set, but NAME {name!r} predicts no centre "
                    f"map: use NAME FPNForegroundCenterHead"
                )
    return head(cfg, input_shape) if head is not None else None
