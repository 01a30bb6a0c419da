"""Feature Pyramid Network (Lin et al. 2017) over any bottom-up backbone, in 2D or 3D."""

import math
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from det3d.layers import Conv, ShapeSpec, get_norm

from ..registries import BACKBONE_REGISTRY
from .backbone import Backbone
from .resnet import build_resnet3d_backbone

__all__ = ["FPN", "LastLevelMaxPool", "build_fpn_on", "build_resnet3d_fpn_backbone"]


def c2_xavier_fill(module: nn.Module) -> None:
    """Caffe2's XavierFill: kaiming-uniform with a=1, zero bias."""
    nn.init.kaiming_uniform_(module.weight, a=1)
    if module.bias is not None:
        nn.init.constant_(module.bias, 0)


class LastLevelMaxPool(nn.Module):
    """
    Extra coarsest level: max-pool with kernel 1 and stride 2 on every axis of the coarsest FPN
    output (an axis of size 1 stays 1). The level's stride doubles on every axis.
    """

    def __init__(self, ndim: int, in_feature: str = "p5"):
        super().__init__()
        self.ndim = ndim
        self.num_levels = 1
        self.in_feature = in_feature

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        pool = F.max_pool3d if self.ndim == 3 else F.max_pool2d
        return [pool(x, kernel_size=1, stride=2, padding=0)]


def pyramid_strides(strides, top_block=None) -> Dict[str, Tuple[int, ...]]:
    """
    ``p{k}`` -> per-axis stride of a pyramid's levels, named by their in-plane stride ``2**k``,
    finest first: one per level in ``strides``, then the top block's coarser levels (each twice
    the stride of the one before).
    """
    out = {f"p{int(math.log2(s[-1]))}": tuple(s) for s in strides}
    last = tuple(strides[-1])
    for _ in range(top_block.num_levels if top_block is not None else 0):
        last = tuple(2 * s for s in last)
        out[f"p{int(math.log2(last[-1]))}"] = last
    return out


class FPN(Backbone):
    """
    Lateral 1x1 convs on the bottom-up features, a top-down path that upsamples (nearest) each
    level to the exact spatial size of the next finer one — so levels whose size ratio differs
    per axis (anisotropic strides) or is not exactly 2 (odd sizes) fuse correctly — and a 3x3
    output conv per level.

    Outputs are named ``p{k}`` with ``k = log2`` of the level's x stride (``p2`` at x stride 4).
    The x/y strides of the inputs must double from level to level; the z stride may do anything.
    """

    def __init__(
        self,
        bottom_up: Backbone,
        in_features: List[str],
        out_channels: int,
        norm: str = "",
        top_block: Optional[nn.Module] = None,
        fuse_type: str = "sum",
    ):
        """
        Args:
            bottom_up: a backbone producing ``in_features``.
            in_features: bottom-up outputs to use, finest first.
            out_channels: channels of every FPN output.
            norm: norm of the lateral and output convs (``get_norm`` names).
            top_block: optional module that maps the coarsest FPN output (or the bottom-up
                feature named by its ``in_feature``) to ``num_levels`` extra coarser levels.
            fuse_type: ``"sum"`` or ``"avg"`` of the lateral and the upsampled top-down feature.
        """
        super().__init__()
        if fuse_type not in ("sum", "avg"):
            raise ValueError(f"FPN: fuse_type={fuse_type!r}; expected 'sum' or 'avg'")
        input_shapes = bottom_up.output_shape()
        missing = [f for f in in_features if f not in input_shapes]
        if missing:
            raise ValueError(
                f"FPN: in_features {missing} are not outputs of the bottom-up network "
                f"(it has {list(input_shapes)})"
            )
        strides = [tuple(input_shapes[f].stride) for f in in_features]
        ndim = len(strides[0])
        for prev, cur, name in zip(strides[:-1], strides[1:], in_features[1:]):
            if cur[-2:] != tuple(2 * s for s in prev[-2:]):
                raise ValueError(
                    f"FPN: the x/y stride must double from level to level; {name} has stride "
                    f"{cur} after {prev}"
                )
        self.ndim = ndim
        self.bottom_up = bottom_up
        self.in_features = tuple(in_features)
        self.top_block = top_block
        self._fuse_type = fuse_type

        lateral_convs, output_convs = [], []
        use_bias = norm == ""
        for idx, f in enumerate(in_features):
            in_channels = input_shapes[f].channels
            lateral = Conv(
                ndim,
                in_channels,
                out_channels,
                1,
                bias=use_bias,
                norm=get_norm(norm, out_channels, ndim),
            )
            output = Conv(
                ndim,
                out_channels,
                out_channels,
                3,
                padding=1,
                bias=use_bias,
                norm=get_norm(norm, out_channels, ndim),
            )
            c2_xavier_fill(lateral.conv)
            c2_xavier_fill(output.conv)
            level = int(math.log2(strides[idx][-1]))
            self.add_module(f"fpn_lateral{level}", lateral)
            self.add_module(f"fpn_output{level}", output)
            lateral_convs.append(lateral)
            output_convs.append(output)
        # Coarsest first, the order of the top-down pass.
        self.lateral_convs = lateral_convs[::-1]
        self.output_convs = output_convs[::-1]

        self._out_feature_strides = pyramid_strides(strides, top_block)
        self._out_features = list(self._out_feature_strides)
        self._out_feature_channels = {k: out_channels for k in self._out_features}
        # As in Detectron2: the coarsest bottom-up level; extra top-block levels subsample it.
        self._size_divisibility = strides[-1]

    def set_activation_checkpointing(self, enabled: bool = True) -> None:
        """Checkpoints the bottom-up network's blocks; the FPN's own convs keep theirs."""
        self.bottom_up.set_activation_checkpointing(enabled)

    @property
    def size_divisibility(self):
        """Per-axis stride of the coarsest bottom-up input level (array order)."""
        return self._size_divisibility

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """
        Args:
            x (Tensor): (N, C, *spatial).

        Returns:
            dict[str, Tensor]: ``p{k}`` -> (N, out_channels, *spatial_k), finest first.
        """
        bottom_up_features = self.bottom_up(x)
        results = []
        prev_features = self.lateral_convs[0](bottom_up_features[self.in_features[-1]])
        results.append(self.output_convs[0](prev_features))
        for idx, (lateral_conv, output_conv) in enumerate(
            zip(self.lateral_convs[1:], self.output_convs[1:]), start=1
        ):
            features = bottom_up_features[self.in_features[-idx - 1]]
            lateral_features = lateral_conv(features)
            top_down_features = F.interpolate(
                prev_features, size=lateral_features.shape[-self.ndim :], mode="nearest"
            )
            prev_features = lateral_features + top_down_features
            if self._fuse_type == "avg":
                prev_features = prev_features / 2
            results.insert(0, output_conv(prev_features))

        if self.top_block is not None:
            if self.top_block.in_feature in bottom_up_features:
                top_block_in = bottom_up_features[self.top_block.in_feature]
            else:
                top_block_in = results[self._out_features.index(self.top_block.in_feature)]
            results.extend(self.top_block(top_block_in))
        return dict(zip(self._out_features, results))


@BACKBONE_REGISTRY.register()
def build_resnet3d_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """ResNet (``cfg.MODEL.RESNETS``) + FPN (``cfg.MODEL.FPN``), with ``p6`` if ``TOP_BLOCK``."""
    return build_fpn_on(cfg, build_resnet3d_backbone(cfg, input_shape))


def build_fpn_on(cfg, bottom_up: Backbone) -> FPN:
    """
    ``MODEL.FPN`` on any bottom-up backbone (ConvNeXt, Hiera, ...), with one more coarse level if
    ``MODEL.FPN.TOP_BLOCK``; a name in ``MODEL.FPN.IN_FEATURES`` that the backbone lacks raises.
    """
    in_features = list(cfg.MODEL.FPN.IN_FEATURES)
    available = list(bottom_up.output_shape())
    missing = [f for f in in_features if f not in available]
    if missing:
        raise ValueError(
            f"MODEL.FPN.IN_FEATURES={in_features}: {missing} are not outputs of "
            f"{type(bottom_up).__name__} (it has {available}; set its OUT_FEATURES and "
            "MODEL.FPN.IN_FEATURES alike)"
        )
    top_block = None
    if cfg.MODEL.FPN.TOP_BLOCK:
        coarsest = bottom_up.output_shape()[in_features[-1]].stride
        top_block = LastLevelMaxPool(
            cfg.MODEL.SPATIAL_DIMS, in_feature=f"p{int(math.log2(coarsest[-1]))}"
        )
    return FPN(
        bottom_up=bottom_up,
        in_features=in_features,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=top_block,
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
