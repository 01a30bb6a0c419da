"""
ResNet / ResNeXt backbones for 2D images and 3D volumes from one code path.

Anisotropy: the stem (conv and max-pool) and the first block of every stage take a stride per
array axis, so e.g. ``STEM_STRIDE [1, 2, 2]`` keeps the z resolution of thin-sliced volumes while
x and y are downsampled. Output strides are per-axis tuples in array order ``(D, H, W)``.
"""

from typing import Dict, List, Optional, Sequence, Tuple, Type

import torch
import torch.nn.functional as F
from torch import nn

from det3d.layers import (
    Conv,
    FrozenBatchNorm,
    ShapeSpec,
    checkpoint_module,
    get_norm,
    max_pool_nd,
)
from det3d.utils.axes import as_tuple, per_axis

from ..registries import BACKBONE_REGISTRY
from .backbone import Backbone

__all__ = [
    "CNNBlockBase",
    "BasicStem",
    "BasicBlock",
    "BottleneckBlock",
    "ResNet",
    "per_axis",
    "build_resnet3d_backbone",
]


def c2_msra_fill(module: nn.Module) -> None:
    """Kaiming-normal (fan_out, ReLU) weights and zero bias, as Caffe2's MSRAFill."""
    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    if module.bias is not None:
        nn.init.constant_(module.bias, 0)


class CNNBlockBase(nn.Module):
    """
    A block with ``in_channels``, ``out_channels`` and ``stride`` (per-axis tuple) attributes, that
    can be frozen.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: Tuple[int, ...]):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = tuple(stride)

    def freeze(self) -> "CNNBlockBase":
        """
        Stops gradients to every parameter of the block and turns its batch norms into
        ``FrozenBatchNorm``, so frozen statistics are not updated by training either (Detectron2).
        """
        for p in self.parameters():
            p.requires_grad = False
        FrozenBatchNorm.convert_frozen_batchnorm(self)
        return self


def _conv(ndim, in_channels, out_channels, kernel_size, stride=1, padding=0, norm="BN", **kwargs):
    conv = Conv(
        ndim,
        in_channels,
        out_channels,
        kernel_size=kernel_size,
        stride=stride,
        padding=padding,
        bias=False,
        norm=get_norm(norm, out_channels, ndim),
        **kwargs,
    )
    c2_msra_fill(conv.conv)
    return conv


def _shortcut(ndim, in_channels, out_channels, stride, norm):
    """The 1x1 projection of a block's residual branch, or None where the identity fits."""
    if in_channels != out_channels or any(s != 1 for s in stride):
        return _conv(ndim, in_channels, out_channels, 1, stride, norm=norm)
    return None


class BasicStem(CNNBlockBase):
    """
    Conv (kernel and stride per axis) + norm + ReLU, then a max-pool with kernel 3 on the axes
    it downsamples (kernel 1 elsewhere); no pool when ``pool_stride`` is 1 on every axis.
    """

    def __init__(
        self,
        ndim: int,
        in_channels: int = 1,
        out_channels: int = 64,
        kernel_size: Sequence[int] = 7,
        stride: Sequence[int] = 2,
        pool_stride: Sequence[int] = 2,
        norm: str = "BN",
    ):
        kernel_size = as_tuple(kernel_size, ndim, "stem kernel_size")
        stride = as_tuple(stride, ndim, "stem stride")
        pool_stride = as_tuple(pool_stride, ndim, "stem pool_stride")
        super().__init__(
            in_channels, out_channels, tuple(s * p for s, p in zip(stride, pool_stride))
        )
        self.ndim = ndim
        self.conv1 = _conv(
            ndim,
            in_channels,
            out_channels,
            kernel_size,
            stride,
            tuple(k // 2 for k in kernel_size),
            norm,
        )
        if any(p > 1 for p in pool_stride):
            self.pool = max_pool_nd(ndim)(
                kernel_size=tuple(3 if p > 1 else 1 for p in pool_stride),
                stride=pool_stride,
                padding=tuple(1 if p > 1 else 0 for p in pool_stride),
            )
        else:
            self.pool = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu_(self.conv1(x))
        if self.pool is not None:
            x = self.pool(x)
        return x


class BasicBlock(CNNBlockBase):
    """Two 3x3 convs with a residual connection (ResNet-18/34)."""

    def __init__(
        self, in_channels: int, out_channels: int, *, ndim: int, stride=1, norm: str = "BN"
    ):
        stride = as_tuple(stride, ndim, "stride")
        super().__init__(in_channels, out_channels, stride)
        self.shortcut = _shortcut(ndim, in_channels, out_channels, stride, norm)
        self.conv1 = _conv(ndim, in_channels, out_channels, 3, stride, 1, norm)
        self.conv2 = _conv(ndim, out_channels, out_channels, 3, 1, 1, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu_(self.conv1(x))
        out = self.conv2(out)
        out = out + (x if self.shortcut is None else self.shortcut(x))
        return F.relu_(out)


class BottleneckBlock(CNNBlockBase):
    """1x1 reduce, 3x3 (grouped, dilated), 1x1 expand, with a residual connection (ResNet-50+)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        ndim: int,
        bottleneck_channels: int,
        stride=1,
        num_groups: int = 1,
        norm: str = "BN",
        stride_in_1x1: bool = False,
        dilation: int = 1,
    ):
        stride = as_tuple(stride, ndim, "stride")
        super().__init__(in_channels, out_channels, stride)
        self.shortcut = _shortcut(ndim, in_channels, out_channels, stride, norm)
        # MSRA ResNet strides in the first 1x1; torchvision / Caffe2 ResNet in the 3x3.
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = _conv(ndim, in_channels, bottleneck_channels, 1, stride_1x1, norm=norm)
        self.conv2 = _conv(
            ndim,
            bottleneck_channels,
            bottleneck_channels,
            3,
            stride_3x3,
            padding=dilation,
            norm=norm,
            groups=num_groups,
            dilation=dilation,
        )
        self.conv3 = _conv(ndim, bottleneck_channels, out_channels, 1, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu_(self.conv1(x))
        out = F.relu_(self.conv2(out))
        out = self.conv3(out)
        out = out + (x if self.shortcut is None else self.shortcut(x))
        return F.relu_(out)


class ResNet(Backbone):
    """
    A stem followed by residual stages ``res2, res3, ...``. Outputs any of ``"stem"`` and the stage
    names; the stride of each is the per-axis product of the strides before it.
    """

    def __init__(
        self,
        stem: BasicStem,
        stages: List[List[CNNBlockBase]],
        out_features: Optional[List[str]] = None,
        freeze_at: int = 0,
    ):
        """
        Args:
            stem: the stem; must have ``ndim``, ``out_channels`` and per-axis ``stride``.
            stages: blocks of each stage; stage ``i`` is named ``res{i + 2}``.
            out_features: names of the outputs; defaults to the last stage.
            freeze_at: 0 freezes nothing, 1 the stem, k > 1 the stem and ``res2 .. res{k}``.
        """
        super().__init__()
        self.ndim = stem.ndim
        self.stem = stem
        self._checkpoint = False
        stride = tuple(stem.stride)
        self._out_feature_strides = {"stem": stride}
        self._out_feature_channels = {"stem": stem.out_channels}

        self.stage_names, self.stages = [], []
        for i, blocks in enumerate(stages):
            if len(blocks) == 0:
                raise ValueError(f"ResNet: stage res{i + 2} has no blocks")
            name = f"res{i + 2}"
            stage = nn.Sequential(*blocks)
            self.add_module(name, stage)
            self.stage_names.append(name)
            self.stages.append(stage)
            for block in blocks:
                stride = tuple(s * b for s, b in zip(stride, block.stride))
            self._out_feature_strides[name] = stride
            self._out_feature_channels[name] = blocks[-1].out_channels
        self.stage_names = tuple(self.stage_names)

        if out_features is None:
            out_features = [self.stage_names[-1] if self.stage_names else "stem"]
        unknown = [f for f in out_features if f not in self._out_feature_channels]
        if unknown:
            raise ValueError(
                f"ResNet: unknown output feature(s) {unknown}; available: "
                f"{list(self._out_feature_channels)}"
            )
        self._out_features = list(out_features)
        self.freeze(freeze_at)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """
        Args:
            x (Tensor): (N, C, *spatial).

        Returns:
            dict[str, Tensor]: the requested outputs.
        """
        if x.dim() != self.ndim + 2:
            raise ValueError(
                f"ResNet (ndim={self.ndim}) expects input (N, C, {self.ndim} spatial dims), got "
                f"shape {tuple(x.shape)}"
            )
        outputs = {}
        x = self._run(self.stem, x)
        if "stem" in self._out_features:
            outputs["stem"] = x
        for name, stage in zip(self.stage_names, self.stages):
            for block in stage:
                x = self._run(block, x)
            if name in self._out_features:
                outputs[name] = x
        return outputs

    def _run(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        # One checkpoint per block: the backward pass holds the blocks' inputs plus the
        # recomputed activations of one block at a time.
        return checkpoint_module(block, x) if self._checkpoint else block(x)

    def set_activation_checkpointing(self, enabled: bool = True) -> None:
        """Checkpoints the stem and every residual block (see ``Backbone``)."""
        self._checkpoint = bool(enabled)

    def freeze(self, freeze_at: int = 0) -> "ResNet":
        """Freezes the stem if ``freeze_at >= 1`` and stage ``res{k}`` if ``freeze_at >= k``."""
        if freeze_at >= 1:
            self.stem.freeze()
        for idx, stage in enumerate(self.stages, start=2):
            if freeze_at >= idx:
                for block in stage.children():
                    block.freeze()
        return self

    @staticmethod
    def make_stage(
        block_class: Type[CNNBlockBase],
        num_blocks: int,
        *,
        in_channels: int,
        out_channels: int,
        first_stride=1,
        **kwargs,
    ) -> List[CNNBlockBase]:
        """``num_blocks`` blocks; only the first changes channels and strides (``first_stride``)."""
        blocks = []
        for i in range(num_blocks):
            blocks.append(
                block_class(
                    in_channels=in_channels if i == 0 else out_channels,
                    out_channels=out_channels,
                    stride=first_stride if i == 0 else 1,
                    **kwargs,
                )
            )
        return blocks


_NUM_BLOCKS = {
    18: [2, 2, 2, 2],
    34: [3, 4, 6, 3],
    50: [3, 4, 6, 3],
    101: [3, 4, 23, 3],
    152: [3, 8, 36, 3],
}


@BACKBONE_REGISTRY.register()
def build_resnet3d_backbone(cfg, input_shape: ShapeSpec) -> ResNet:
    """
    ResNet from ``cfg.MODEL.RESNETS`` for ``cfg.MODEL.SPATIAL_DIMS`` spatial dims.

    Channels: res2 outputs ``RES2_OUT_CHANNELS`` and every later stage doubles. Unlike Detectron2,
    which requires 64 for ResNet-18/34, any value is allowed (the default config's 256 gives a wide
    ResNet-18). Bottleneck stages are ``NUM_GROUPS * WIDTH_PER_GROUP`` wide inside res2.
    In 2D, per-axis values given as 3-lists (stem kernel/strides, stage strides) use their last two
    entries, so one base config serves both.
    """
    ndim = cfg.MODEL.SPATIAL_DIMS
    if ndim not in (2, 3):
        raise ValueError(f"MODEL.SPATIAL_DIMS={ndim!r}; expected 2 or 3")
    r = cfg.MODEL.RESNETS
    if any(r.DEFORM_ON_PER_STAGE):
        raise ValueError(
            f"MODEL.RESNETS.DEFORM_ON_PER_STAGE={list(r.DEFORM_ON_PER_STAGE)}: deformable convs "
            "are not supported by det3d"
        )
    depth = r.DEPTH
    if depth not in _NUM_BLOCKS:
        raise ValueError(f"MODEL.RESNETS.DEPTH={depth!r}; expected one of {sorted(_NUM_BLOCKS)}")
    norm = r.NORM
    stem = BasicStem(
        ndim,
        in_channels=input_shape.channels,
        out_channels=r.STEM_OUT_CHANNELS,
        kernel_size=per_axis(r.STEM_KERNEL_SIZE, ndim, "MODEL.RESNETS.STEM_KERNEL_SIZE"),
        stride=per_axis(r.STEM_STRIDE, ndim, "MODEL.RESNETS.STEM_STRIDE"),
        pool_stride=per_axis(r.STEM_POOL_STRIDE, ndim, "MODEL.RESNETS.STEM_POOL_STRIDE"),
        norm=norm,
    )

    stage_strides = list(r.STAGE_STRIDES) or [1, 2, 2, 2]
    if len(stage_strides) != 4:
        raise ValueError(
            f"MODEL.RESNETS.STAGE_STRIDES={stage_strides}: expected 4 entries (res2..res5)"
        )
    res5_dilation = r.RES5_DILATION
    if res5_dilation not in (1, 2):
        raise ValueError(f"MODEL.RESNETS.RES5_DILATION={res5_dilation!r}; expected 1 or 2")
    if depth in (18, 34) and res5_dilation != 1:
        raise ValueError("MODEL.RESNETS.RES5_DILATION must be 1 for ResNet-18/34")

    out_features = list(r.OUT_FEATURES)
    stage_index = {"stem": 1, "res2": 2, "res3": 3, "res4": 4, "res5": 5}
    unknown = [f for f in out_features if f not in stage_index]
    if unknown:
        raise ValueError(
            f"MODEL.RESNETS.OUT_FEATURES has unknown name(s) {unknown}; expected among "
            f"{list(stage_index)}"
        )
    max_stage = max(stage_index[f] for f in out_features)

    in_channels = r.STEM_OUT_CHANNELS
    out_channels = r.RES2_OUT_CHANNELS
    bottleneck_channels = r.NUM_GROUPS * r.WIDTH_PER_GROUP
    stages = []
    for i, stage_idx in enumerate(range(2, max_stage + 1)):
        dilation = res5_dilation if stage_idx == 5 else 1
        first_stride = per_axis(stage_strides[i], ndim, f"MODEL.RESNETS.STAGE_STRIDES[{i}]")
        if dilation > 1:
            first_stride = (1,) * ndim  # dilation replaces the downsampling of res5
        kwargs = dict(
            num_blocks=_NUM_BLOCKS[depth][i],
            in_channels=in_channels,
            out_channels=out_channels,
            first_stride=first_stride,
            ndim=ndim,
            norm=norm,
        )
        if depth in (18, 34):
            kwargs["block_class"] = BasicBlock
        else:
            kwargs.update(
                block_class=BottleneckBlock,
                bottleneck_channels=bottleneck_channels,
                num_groups=r.NUM_GROUPS,
                stride_in_1x1=r.STRIDE_IN_1X1,
                dilation=dilation,
            )
            bottleneck_channels *= 2
        stages.append(ResNet.make_stage(**kwargs))
        in_channels = out_channels
        out_channels *= 2
    return ResNet(stem, stages, out_features=out_features, freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT)
