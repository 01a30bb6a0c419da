"""
N-D wrappers around torch layers. ``ndim`` is the number of spatial dims (2 or 3); the same code
builds the 2D and the 3D variant.
"""

from typing import Callable, Iterator, List, Optional, Sequence, Tuple, Type

import torch
from torch import nn
from torch.nn import functional as F

from .batch_norm import get_norm

__all__ = [
    "Conv3d",
    "conv_nd",
    "conv_transpose_nd",
    "max_pool_nd",
    "Conv",
    "conv_norm_relu_stack",
    "cat",
    "nonzero_tuple",
]


class Conv3d(nn.Conv3d):
    """
    ``nn.Conv3d`` that trains correctly under CPU bfloat16 autocast.

    With torch 2.13's oneDNN on CPU, a bfloat16 3D convolution whose kernel is deeper than its
    (padded) input, at stride 1 along depth, returns garbage weight gradients (values around 1e37,
    Inf or NaN; the input gradient is right), e.g. a 3x3x3 kernel on the 2x2x2 map of a 64^3
    volume's p5. Measured on AMD EPYC (Zen 4, AVX-512 bfloat16); first seen as
    ``FloatingPointError`` in the first iterations of ``SOLVER.AMP`` training on ``toy3d``. This
    class runs those convolutions, and only those, in float32 while gradients are needed. Such
    maps are tiny, so the cost is nil. ``tests/layers/test_wrappers.py`` checks the gradients
    against a float32 reference.

    It also keeps single-volume convolutions on oneDNN. On a CPU, for a float32 input of one
    volume ``(1, C, D, H, W)``, torch picks its native kernel over oneDNN when ``C * D * H <=
    20480`` (a rule written for 2D images); for a 3D kernel that native path is several times
    slower, forward and backward (torch 2.13, one thread: a 3x3x3 convolution of 16 to 32 channels
    on a 32^3 map took 0.14 s forward and backward against 0.038 s for two such maps). Every
    inference pass is one volume. Such a call is run as a batch of two: the input is cut into two
    halves along a spatial axis, each with the voxels its half of the output needs, so the result
    is the same convolution (``tests/layers/test_wrappers.py``).
    """

    def _float32_needed(self, x: torch.Tensor) -> bool:
        # the shape test first: it is False for almost every call, so the rest is rarely asked
        return (
            x.shape[2] < self.kernel_size[0]
            and x.device.type == "cpu"
            and torch.is_autocast_enabled("cpu")
            and torch.is_grad_enabled()
            and self.weight.requires_grad
        )

    def _split_axis(self, x: torch.Tensor) -> Optional[int]:
        """The spatial axis to cut a single-volume input along, or None to run it as it is."""
        if (
            x.shape[0] != 1
            or x.shape[1] * x.shape[2] * x.shape[3] > _NATIVE_CONV_MAX
            or x.dtype != torch.float32
            or x.device.type != "cpu"
            or torch.is_autocast_enabled("cpu")  # bfloat16 goes to oneDNN at any batch
            or self.padding_mode != "zeros"
            or isinstance(self.padding, str)
            or all(k == 1 for k in self.kernel_size)
            or self.groups > 1  # torch takes oneDNN for these anyway
            or (self.kernel_size[1] > 3 and self.kernel_size[2] > 3)
        ):
            return None
        out = [
            (n + 2 * p - d * (k - 1) - 1) // s + 1
            for n, p, d, k, s in zip(
                x.shape[2:], self.padding, self.dilation, self.kernel_size, self.stride
            )
        ]
        even = [a for a in range(3) if out[a] >= 2 and out[a] % 2 == 0]
        return max(even, key=lambda a: out[a]) if even else None

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]):
        # every convolution of this module comes here (forward, Conv.forward_concat)
        if not self._float32_needed(x):
            axis = self._split_axis(x)
            if axis is None:
                return super()._conv_forward(x, weight, bias)
            return _conv3d_in_halves(
                x, weight, bias, self.stride, self.padding, self.dilation, self.groups, axis
            )
        with torch.autocast("cpu", enabled=False):
            bias = None if bias is None else bias.float()
            return super()._conv_forward(x.float(), weight.float(), bias)


# torch's rule (ConvParams::use_mkldnn): a float32 CPU input of batch 1 goes to oneDNN only when
# its first three sizes, times, exceed this, or for grouped convolutions or kernels wider than 3
# in both last axes
_NATIVE_CONV_MAX = 20480


def _conv3d_in_halves(x, weight, bias, stride, padding, dilation, groups, axis: int):
    """
    ``F.conv3d`` of a one-volume ``x`` as a batch of two: the output is cut in two equal halves
    along spatial ``axis`` (its size there must be even), each computed from the window of the
    zero-padded input that it reads.
    """
    dim = 2 + axis
    k, s, p, d = weight.shape[dim], stride[axis], padding[axis], dilation[axis]
    half = ((x.shape[dim] + 2 * p - d * (k - 1) - 1) // s + 1) // 2
    span = (half - 1) * s + d * (k - 1) + 1  # input voxels one half of the output reads
    pads = [0, 0] * 3
    pads[2 * (2 - axis)] = pads[2 * (2 - axis) + 1] = p  # F.pad lists the last axis first
    xp = F.pad(x, pads) if p else x
    both = torch.cat([xp.narrow(dim, 0, span), xp.narrow(dim, half * s, span)])
    pad_rest = tuple(0 if a == axis else padding[a] for a in range(3))
    y = F.conv3d(both, weight, bias, stride, pad_rest, dilation, groups)
    return torch.cat([y[:1], y[1:]], dim=dim)


_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: Conv3d}
_CONV_T = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_MAX_POOL = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}


def _pick(table: dict, ndim: int, what: str):
    if ndim not in table:
        raise ValueError(f"{what}: ndim={ndim!r} is not supported, expected one of {sorted(table)}")
    return table[ndim]


def conv_nd(ndim: int) -> Type[nn.Module]:
    """``nn.Conv2d`` or :class:`Conv3d` (an ``nn.Conv3d``; ``nn.Conv1d`` for ndim=1)."""
    return _pick(_CONV, ndim, "conv_nd")


def conv_transpose_nd(ndim: int) -> Type[nn.Module]:
    """``nn.ConvTranspose2d`` or ``nn.ConvTranspose3d``."""
    return _pick(_CONV_T, ndim, "conv_transpose_nd")


def max_pool_nd(ndim: int) -> Type[nn.Module]:
    """``nn.MaxPool2d`` or ``nn.MaxPool3d``."""
    return _pick(_MAX_POOL, ndim, "max_pool_nd")


class Conv(nn.Module):
    """
    Convolution over ``ndim`` spatial dims followed by an optional norm and an optional activation
    (Detectron2's ``Conv2d`` in N-D). Weight initialisation is left to the caller.

    Attributes:
        conv: the ``nn.Conv2d`` / ``nn.Conv3d``.
        norm: the norm module or None.
        activation: the activation callable or None.

    Example::

        conv = Conv(3, 64, 128, kernel_size=3, padding=1, bias=False,
                    norm=get_norm("BN", 128, ndim=3), activation=F.relu)
    """

    def __init__(
        self,
        ndim: int,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        bias: bool = True,
        norm: Optional[nn.Module] = None,
        activation: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    ):
        super().__init__()
        self.ndim = ndim
        self.conv = conv_nd(ndim)(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=bias,
        )
        self.norm = norm
        self.activation = activation

    # Detectron2 code reads conv.weight / conv.bias / conv.out_channels directly.
    @property
    def weight(self) -> torch.Tensor:
        return self.conv.weight

    @property
    def bias(self) -> Optional[torch.Tensor]:
        return self.conv.bias

    @property
    def in_channels(self) -> int:
        return self.conv.in_channels

    @property
    def out_channels(self) -> int:
        return self.conv.out_channels

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != self.ndim + 2:
            raise ValueError(
                f"Conv(ndim={self.ndim}) expects input (N, C, {self.ndim} spatial dims), "
                f"got shape {tuple(x.shape)}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return self._after_conv(self.conv(x))

    def forward_concat(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        """
        ``forward(cat(parts, dim=1))``, without the concatenation: each part is convolved with its
        slice of the weight's input channels and the results are summed (the bias added once).
        The same parameters, the same result up to float rounding. On a CPU it is much faster
        where the concatenation's channel count suits oneDNN badly: 16 feature channels and one
        image channel (17) took 56 ms forward and backward for 16 RoIs at 16^3 on one core, 16 and
        1 apart 31 ms.
        """
        if self.conv.groups != 1:
            raise ValueError(f"Conv.forward_concat needs groups=1, got {self.conv.groups}")
        channels = sum(p.shape[1] for p in parts)
        if not parts or channels != self.in_channels:
            raise ValueError(
                f"Conv.forward_concat: the parts' channels {[p.shape[1] for p in parts]} must add "
                f"up to the conv's {self.in_channels} input channels"
            )
        out, start = None, 0
        for i, part in enumerate(parts):
            self._check_input(part)
            weight = self.conv.weight[:, start : start + part.shape[1]]
            start += part.shape[1]
            y = self.conv._conv_forward(part, weight, self.conv.bias if i == 0 else None)
            out = y if out is None else out + y
        return self._after_conv(out)

    def _after_conv(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x


def conv_norm_relu_stack(
    ndim: int, in_channels: int, conv_dims: Sequence[int], norm: str = ""
) -> Iterator[Conv]:
    """
    The conv tower of the RoI heads: for each entry of ``conv_dims``, a kernel-3 :class:`Conv`
    (padding 1, so the size is kept; no bias when normalised) with ``get_norm(norm, channels,
    ndim)`` and ReLU, taking the previous conv's output channels.

    Yields the convs one at a time; as for :class:`Conv`, registering and initialising them is
    the caller's (a head that initialises each conv as it comes draws random numbers in the same
    order as when it built them itself).
    """
    for conv_dim in conv_dims:
        yield Conv(
            ndim,
            in_channels,
            conv_dim,
            kernel_size=3,
            padding=1,
            bias=not norm,
            norm=get_norm(norm, conv_dim, ndim),
            activation=F.relu,
        )
        in_channels = conv_dim


def cat(tensors: List[torch.Tensor], dim: int = 0) -> torch.Tensor:
    """``torch.cat`` that returns a single tensor as is instead of copying it."""
    if not isinstance(tensors, (list, tuple)):
        raise TypeError(f"cat expects a list or tuple of tensors, got {type(tensors).__name__}")
    if len(tensors) == 1:
        return tensors[0]
    return torch.cat(tensors, dim)


def nonzero_tuple(x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """``x.nonzero(as_tuple=True)``, also for 0-dim tensors (treated as 1-element vectors)."""
    if x.dim() == 0:
        return x.unsqueeze(0).nonzero(as_tuple=True)
    return x.nonzero(as_tuple=True)
