"""
The fusion modules of ``SLICE_FUSION_REGISTRY`` (``MODEL.SLICE_FUSION.NAME``); the protocol is in
:mod:`det3d.modeling.slice_fusion.base`. Every learned refinement of a fuser starts at zero, so
with ``INIT "center"`` the untrained fusion is exactly the 2D model on the centre slice.
"""

import math
from typing import Dict

import torch
from torch import nn
from torch.nn import functional as F

from det3d.layers import ShapeSpec

from ..registries import SLICE_FUSION_REGISTRY
from .base import SliceFusion, WindowFuser

__all__ = [
    "CenterSlice",
    "ChannelStack",
    "SliceWeights",
    "WindowedSliceWeights",
    "ConvFusion",
    "AttentionFusion",
]


def _zero_(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class _Centre(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, x.shape[1] // 2]


@SLICE_FUSION_REGISTRY.register()
class CenterSlice(SliceFusion):
    """No fusion: the centre slice only (with ``NUM_SLICES 1``, the plain 2D model per slice)."""

    def make_fuser(self, channels: int) -> nn.Module:
        return _Centre()


class _Stack(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1, 2)  # (B, S, C, H, W) -> (B, S*C, H, W), slice-major


@SLICE_FUSION_REGISTRY.register()
class ChannelStack(SliceFusion):
    """
    Early fusion: the window's ``S`` slices become ``S*C`` input channels of the backbone (slice
    major: channel ``s*C + c``). Its learned part is the backbone's first convolution, which
    :meth:`init_backbone` initialises from the ``C``-channel weights: ``"center"`` keeps them on
    the centre slice's channels and zeroes the others (the 2D model on the centre slice),
    ``"uniform"`` gives every slice the weights divided by ``S``. Input stage only.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.stage != "input":
            raise ValueError(
                "ChannelStack stacks the window's slices as input channels: it needs "
                f"MODEL.SLICE_FUSION.STAGE 'input', got {self.stage!r}"
            )

    def make_fuser(self, channels: int) -> nn.Module:
        return _Stack()

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            k: ShapeSpec(channels=s.channels * self.num_slices, stride=s.stride)
            for k, s in self.input_shape.items()
        }

    def init_backbone(self, backbone: nn.Module) -> None:
        (channels,) = {s.channels for s in self.input_shape.values()}
        stacked = channels * self.num_slices
        first = next(
            (m for m in backbone.modules() if isinstance(m, nn.modules.conv._ConvNd)), None
        )
        if first is None or first.in_channels != stacked:
            raise ValueError(
                f"ChannelStack: the backbone's first convolution should take {stacked} channels "
                f"(NUM_SLICES {self.num_slices} x {channels}), it takes "
                f"{getattr(first, 'in_channels', None)}"
            )
        with torch.no_grad():
            w = first.weight.view(first.out_channels, self.num_slices, channels, *first.kernel_size)
            centre = w[:, self.num_slices // 2].clone()
            w.copy_(
                torch.stack(
                    [
                        centre * (1.0 / self.num_slices)
                        if self.init == "uniform"
                        else (centre if s == self.num_slices // 2 else torch.zeros_like(centre))
                        for s in range(self.num_slices)
                    ],
                    dim=1,
                )
            )


class _Weighted(WindowFuser):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weighted_sum(x, self.base)


@SLICE_FUSION_REGISTRY.register()
class SliceWeights(SliceFusion):
    """
    Learned per-slice weights (``S`` parameters per fuser): ``sum_s w_s x_s``, initialised
    ``"uniform"`` (``1/S``) or ``"center"`` (one-hot on the centre slice). With
    ``PER_LEVEL True`` (features stage) each FPN level learns its own weights.
    """

    def make_fuser(self, channels: int) -> nn.Module:
        return _Weighted(self.num_slices, self.init)


class _Windowed(WindowFuser):
    def __init__(self, num_slices: int, channels: int, init: str, window: int, hidden: int):
        super().__init__(num_slices, init)
        self.window = window
        self.mlp = nn.Sequential(
            nn.Conv2d(num_slices * channels, hidden, 1),
            nn.ReLU(inplace=True),
            _zero_(nn.Conv2d(hidden, num_slices, 1)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, c, h, w = x.shape
        # one descriptor per window and slice: its mean, so the weights follow local content
        desc = F.avg_pool2d(x.reshape(b, s * c, h, w), self.window, self.window, ceil_mode=True)
        weights = self.base.view(1, s, 1, 1) + self.mlp(desc)  # (B, S, H/k, W/k)
        weights = weights.repeat_interleave(self.window, 2).repeat_interleave(self.window, 3)
        return self.weighted_sum(x, weights[:, :, None, :h, :w])


@SLICE_FUSION_REGISTRY.register()
class WindowedSliceWeights(SliceFusion):
    """
    Per-slice weights that vary over a grid of ``WINDOW_SIZE x WINDOW_SIZE``-pixel windows (of
    the level it acts on): each window's weights are the base weights (``INIT``) plus an MLP of
    the window's per-slice mean values (``S*C -> HIDDEN_DIM -> S``, last layer zero at init).
    """

    def make_fuser(self, channels: int) -> nn.Module:
        return _Windowed(self.num_slices, channels, self.init, self.window_size, self.hidden_dim)


class _Conv(WindowFuser):
    def __init__(self, num_slices: int, channels: int, init: str, kernel_size: int):
        super().__init__(num_slices, init)
        self.conv = _zero_(
            nn.Conv2d(num_slices * channels, channels, kernel_size, padding=kernel_size // 2)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weighted_sum(x, self.base) + self.conv(x.flatten(1, 2))


@SLICE_FUSION_REGISTRY.register()
class ConvFusion(SliceFusion):
    """
    A learned convolution across the slice axis: a ``CONV_KERNEL_SIZE``-wide convolution whose
    input is the whole window (``S*C`` channels, a 3D kernel of depth ``S``), added to the base
    weighting (``INIT``) and zero at init. ``STAGE "input"`` (early) or ``"features"`` (late).
    """

    def make_fuser(self, channels: int) -> nn.Module:
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(
                f"MODEL.SLICE_FUSION.CONV_KERNEL_SIZE must be odd and >= 1, got {self.kernel_size}"
            )
        return _Conv(self.num_slices, channels, self.init, self.kernel_size)


class _Attention(WindowFuser):
    def __init__(self, num_slices: int, channels: int, init: str, dim: int):
        super().__init__(num_slices, init)
        self.query = nn.Conv2d(channels, dim, 1)
        self.key = nn.Conv2d(channels, dim, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.out = _zero_(nn.Conv2d(channels, channels, 1))
        self.scale = 1.0 / math.sqrt(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, c, h, w = x.shape
        flat = x.reshape(b * s, c, h, w)
        q = self.query(x[:, s // 2])  # (B, d, H, W)
        k = self.key(flat).view(b, s, -1, h, w)
        v = self.value(flat).view(b, s, c, h, w)
        attn = torch.softmax((q[:, None] * k).sum(2) * self.scale, dim=1)  # (B, S, H, W) per voxel
        attended = (attn[:, :, None] * v).sum(1)
        return self.weighted_sum(x, self.base) + self.out(attended)


@SLICE_FUSION_REGISTRY.register()
class AttentionFusion(SliceFusion):
    """
    Voxel-wise attention of the centre slice over its window: at every pixel, the centre slice's
    query (``HIDDEN_DIM``) scores each slice's key; the softmax over slices weights their values.
    The attended value (through a projection that is zero at init) is added to the base weighting.
    """

    def make_fuser(self, channels: int) -> nn.Module:
        return _Attention(self.num_slices, channels, self.init, self.hidden_dim)
