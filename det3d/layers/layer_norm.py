"""Channels-first LayerNorm and stochastic depth: the two layers transformer-era backbones share."""

import torch
from torch import nn

__all__ = ["LayerNorm", "drop_path", "DropPath"]


class LayerNorm(nn.Module):
    """
    LayerNorm over the channel axis of a channels-first tensor ``(N, C, *spatial)``, for any
    number of spatial dims (ConvNeXt's ``channels_first`` LayerNorm, Detectron2's ``LayerNorm``).
    Each voxel's C values are normalised on their own; ``weight`` and ``bias`` have shape ``(C,)``
    so state dicts of the 2D models load unchanged.
    """

    def __init__(self, normalized_shape: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(normalized_shape))
        self.bias = nn.Parameter(torch.zeros(normalized_shape))
        self.eps = eps
        self.normalized_shape = (normalized_shape,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.shape[1] != self.normalized_shape[0]:
            raise ValueError(
                f"LayerNorm({self.normalized_shape[0]}) expects (N, C={self.normalized_shape[0]}, "
                f"*spatial), got shape {tuple(x.shape)}"
            )
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return self.weight.view(shape) * x + self.bias.view(shape)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape[0]}, eps={self.eps}"


def drop_path(x: torch.Tensor, drop_prob: float = 0.0, training: bool = False) -> torch.Tensor:
    """
    Stochastic depth (Huang et al. 2016): in training, zeroes the residual branch ``x`` of whole
    samples with probability ``drop_prob`` and rescales the kept ones by ``1 / (1 - drop_prob)``;
    the identity otherwise.

    Args:
        x (Tensor): (N, ...) the output of a residual branch.
    """
    if drop_prob == 0.0 or not training:
        return x
    keep = 1.0 - drop_prob
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
    return x * mask / keep


class DropPath(nn.Module):
    """:func:`drop_path` as a module."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"DropPath: drop_prob={drop_prob!r}; expected 0 <= p < 1")
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"
