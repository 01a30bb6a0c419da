"""
ConvNeXt (Liu et al. 2022, "A ConvNet for the 2020s") for 2D images and 3D volumes from one code
path, with an FPN on top.

Anisotropy: the patchify stem (kernel = stride) and each downsampling layer take a stride per
array axis, and the depthwise kernel a size per axis, so e.g. ``STEM_STRIDE [1, 4, 4]`` keeps the
z resolution of thin-sliced volumes. Module names follow the official ConvNeXt code
(``downsample_layers``, ``stages``, ``norm{i}``) so that its 2D ImageNet state dicts load through
:func:`det3d.checkpoint.load_2d_pretrained`, which inflates the kernels to 3D.
"""

from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from det3d.checkpoint.inflate import load_2d_pretrained
from det3d.layers import DropPath, LayerNorm, ShapeSpec, conv_nd
from det3d.utils.axes import per_axis

from ..registries import BACKBONE_REGISTRY
from .backbone import Backbone
from .fpn import FPN, build_fpn_on
from .transformer_utils import crop_to_stride, pad_to_multiple

__all__ = ["ConvNeXtBlock", "ConvNeXt", "build_convnext_backbone", "build_convnext_fpn_backbone"]

# (depths, dims) of the published sizes; MODEL.CONVNEXT.DEPTHS / DIMS take any values.
CONVNEXT_SIZES = {
    "tiny": ((3, 3, 9, 3), (96, 192, 384, 768)),
    "small": ((3, 3, 27, 3), (96, 192, 384, 768)),
    "base": ((3, 3, 27, 3), (128, 256, 512, 1024)),
}


_CHANNELS_LAST = {4: torch.channels_last, 5: torch.channels_last_3d}


class ConvNeXtBlock(nn.Module):
    """
    Depthwise conv (kernel per axis) -> LayerNorm over channels -> Linear 4x (inverted bottleneck)
    -> GELU -> Linear -> layer scale, added to the input through stochastic depth.
    """

    def __init__(
        self,
        ndim: int,
        dim: int,
        kernel_size: Sequence[int] = (7, 7, 7),
        drop_path: float = 0.0,
        layer_scale_init: float = 1e-6,
    ):
        super().__init__()
        kernel_size = tuple(kernel_size)
        self.dwconv = conv_nd(ndim)(
            dim, dim, kernel_size, padding=tuple(k // 2 for k in kernel_size), groups=dim
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)  # channels-last, after a permute
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = (
            nn.Parameter(torch.full((dim,), float(layer_scale_init)))
            if layer_scale_init > 0
            else None
        )
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, C, *spatial) -> same shape."""
        shortcut = x
        # Channels-last memory makes the CPU backward of depthwise convs ~3x faster, and the
        # channel-last ops after it read the conv's output without a copy.
        x = self.dwconv(x.contiguous(memory_format=_CHANNELS_LAST[x.dim()])).movedim(1, -1)
        x = self.pwconv2(self.act(self.pwconv1(self.norm(x))))
        if self.gamma is not None:
            x = self.gamma * x
        return shortcut + self.drop_path(x.movedim(-1, 1))


class ConvNeXt(Backbone):
    """
    Patchify stem, then stages of :class:`ConvNeXtBlock` separated by downsampling layers
    (LayerNorm + conv with kernel = stride). Outputs ``stage2`` .. ``stage5`` (``stage{i + 2}`` is
    stage ``i``; the names follow ResNet's ``res2`` .. ``res5``), each through its own LayerNorm
    (``norm{i}``) as in the official detection backbone.
    """

    def __init__(
        self,
        *,
        ndim: int,
        in_channels: int,
        depths: Sequence[int] = (3, 3, 9, 3),
        dims: Sequence[int] = (96, 192, 384, 768),
        stem_stride: Sequence[int] = (4, 4, 4),
        downsample_strides: Sequence[Sequence[int]] = ((2, 2, 2),) * 3,
        kernel_size: Sequence[int] = (7, 7, 7),
        drop_path_rate: float = 0.0,
        layer_scale_init: float = 1e-6,
        out_features: Optional[List[str]] = None,
        freeze_at: int = 0,
    ):
        """
        Args:
            ndim: spatial dims (2 or 3).
            in_channels: input channels.
            depths, dims: blocks and channels of each stage (same length).
            stem_stride: stride (= kernel) of the patchify stem, per axis.
            downsample_strides: stride (= kernel) per axis of the layer before each later stage.
            kernel_size: depthwise kernel per axis (odd).
            drop_path_rate: stochastic depth of the last block; rises linearly from 0.
            layer_scale_init: initial layer scale (0 disables layer scale).
            out_features: outputs among ``stage2`` ..; default: the last stage.
            freeze_at: 0 freezes nothing, 1 the stem, k > 1 the stem and ``stage2 .. stage{k}``.
        """
        super().__init__()
        if len(depths) != len(dims):
            raise ValueError(
                f"ConvNeXt: depths {list(depths)} and dims {list(dims)} differ in length"
            )
        if len(downsample_strides) != len(depths) - 1:
            raise ValueError(
                f"ConvNeXt: {len(downsample_strides)} downsample strides for {len(depths)} stages; "
                f"expected {len(depths) - 1}"
            )
        if any(k % 2 == 0 for k in kernel_size):
            raise ValueError(f"ConvNeXt: depthwise kernel_size {list(kernel_size)} must be odd")
        names = [f"stage{i + 2}" for i in range(len(depths))]
        out_features = list(out_features or names[-1:])
        unknown = [f for f in out_features if f not in names]
        if unknown:
            raise ValueError(f"ConvNeXt: unknown output feature(s) {unknown}; available: {names}")
        # Only the stages up to the last requested output are built (no unused parameters).
        self._num_stages = 1 + max(names.index(f) for f in out_features)
        self.ndim = ndim
        conv = conv_nd(ndim)
        stem = conv(in_channels, dims[0], stem_stride, stem_stride)
        self.downsample_layers = nn.ModuleList([nn.Sequential(stem, LayerNorm(dims[0]))])
        for i, stride in enumerate(downsample_strides[: self._num_stages - 1]):
            self.downsample_layers.append(
                nn.Sequential(LayerNorm(dims[i]), conv(dims[i], dims[i + 1], stride, stride))
            )
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.stages = nn.ModuleList()
        stride = tuple(stem_stride)
        self._out_feature_strides, self._out_feature_channels = {}, {}
        for i in range(self._num_stages):
            first = sum(depths[:i])
            blocks = [
                ConvNeXtBlock(ndim, dims[i], kernel_size, rates[first + j], layer_scale_init)
                for j in range(depths[i])
            ]
            self.stages.append(nn.Sequential(*blocks))
            if i > 0:
                stride = tuple(s * d for s, d in zip(stride, downsample_strides[i - 1]))
            if names[i] in out_features:
                self._out_feature_strides[names[i]] = stride
                self._out_feature_channels[names[i]] = dims[i]
                self.add_module(f"norm{i}", LayerNorm(dims[i]))
        self._out_features = [n for n in names if n in out_features]
        # Inputs are padded to a multiple of the coarsest stride built.
        self._size_divisibility = stride
        self.apply(_init_weights)
        self.freeze(freeze_at)

    @property
    def size_divisibility(self):
        """Per-axis stride of the coarsest stage that is built."""
        return self._size_divisibility

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """
        Args:
            x (Tensor): (N, C, *spatial), any size (padded inside to ``size_divisibility``).

        Returns:
            dict[str, Tensor]: ``stage{k}`` -> (N, dims[k - 2], *ceil(spatial / stride)).
        """
        if x.dim() != self.ndim + 2:
            raise ValueError(
                f"ConvNeXt (ndim={self.ndim}) expects input (N, C, {self.ndim} spatial dims), got "
                f"shape {tuple(x.shape)}"
            )
        size = x.shape[2:]
        x = pad_to_multiple(x, self._size_divisibility)
        outputs = {}
        for i in range(self._num_stages):
            x = self.stages[i](self.downsample_layers[i](x))
            name = f"stage{i + 2}"
            if name in self._out_features:
                out = getattr(self, f"norm{i}")(x)
                outputs[name] = crop_to_stride(out, size, self._out_feature_strides[name])
        return outputs

    def freeze(self, freeze_at: int = 0) -> "ConvNeXt":
        """Freezes the stem if ``freeze_at >= 1`` and ``stage{k}`` (with the downsampling layer
        before it) if ``freeze_at >= k``."""
        modules = []
        if freeze_at >= 1:
            modules.append(self.downsample_layers[0])
        for i in range(len(self.stages)):
            if freeze_at >= i + 2:
                modules += [self.downsample_layers[i], self.stages[i]]
        for m in modules:
            for p in m.parameters():
                p.requires_grad = False
        return self


def _init_weights(m: nn.Module) -> None:
    """Official ConvNeXt init: truncated normal (std 0.02) weights, zero biases."""
    if isinstance(m, (nn.Linear, nn.Conv2d, nn.Conv3d)):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


@BACKBONE_REGISTRY.register()
def build_convnext_backbone(cfg, input_shape: ShapeSpec) -> ConvNeXt:
    """
    ConvNeXt from ``cfg.MODEL.CONVNEXT`` for ``cfg.MODEL.SPATIAL_DIMS``; per-axis values given as
    3-lists serve 2D too (their D entry is dropped). Loads ``MODEL.CONVNEXT.PRETRAINED`` (a local
    2D or 3D state dict) when set.
    """
    ndim = cfg.MODEL.SPATIAL_DIMS
    if ndim not in (2, 3):
        raise ValueError(f"MODEL.SPATIAL_DIMS={ndim!r}; expected 2 or 3")
    c = cfg.MODEL.CONVNEXT
    depths, dims = list(c.DEPTHS), list(c.DIMS)
    strides = list(c.DOWNSAMPLE_STRIDES) or [2] * (len(depths) - 1)
    if len(strides) != len(depths) - 1:
        raise ValueError(
            f"MODEL.CONVNEXT.DOWNSAMPLE_STRIDES={strides}: expected {len(depths) - 1} entries "
            f"(one per stage after the first, MODEL.CONVNEXT.DEPTHS={depths})"
        )
    if len(dims) != len(depths):
        raise ValueError(
            f"MODEL.CONVNEXT.DIMS={dims} and MODEL.CONVNEXT.DEPTHS={depths} differ in length"
        )
    model = ConvNeXt(
        ndim=ndim,
        in_channels=input_shape.channels,
        depths=depths,
        dims=dims,
        stem_stride=per_axis(c.STEM_STRIDE, ndim, "MODEL.CONVNEXT.STEM_STRIDE"),
        downsample_strides=[
            per_axis(s, ndim, f"MODEL.CONVNEXT.DOWNSAMPLE_STRIDES[{i}]")
            for i, s in enumerate(strides)
        ],
        kernel_size=per_axis(c.KERNEL_SIZE, ndim, "MODEL.CONVNEXT.KERNEL_SIZE"),
        drop_path_rate=c.DROP_PATH_RATE,
        layer_scale_init=c.LAYER_SCALE_INIT,
        out_features=list(c.OUT_FEATURES),
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
    )
    if c.PRETRAINED:
        load_2d_pretrained(model, c.PRETRAINED)
    return model


@BACKBONE_REGISTRY.register()
def build_convnext_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """ConvNeXt (``cfg.MODEL.CONVNEXT``) + FPN (``cfg.MODEL.FPN``; ``IN_FEATURES`` ``stage*``)."""
    return build_fpn_on(cfg, build_convnext_backbone(cfg, input_shape))
