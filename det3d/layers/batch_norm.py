"""Norm layers for any number of spatial dims, and ``get_norm`` to build one from a config name."""

from typing import Callable, Optional, Union

import torch
from torch import nn

from .layer_norm import LayerNorm

__all__ = ["FrozenBatchNorm", "get_norm"]


class FrozenBatchNorm(nn.Module):
    """
    BatchNorm whose statistics and affine parameters are fixed buffers (Detectron2's
    ``FrozenBatchNorm2d`` for any number of spatial dims):
    ``y = (x - mean) / sqrt(var + eps) * w + b``, computed as one per-channel scale and shift
    broadcast over every dim after the channel dim.
    Input: ``(N, C, *spatial)`` (or ``(N, C)``).
    """

    _version = 1

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features) - eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.shape[1] != self.num_features:
            raise ValueError(
                f"FrozenBatchNorm({self.num_features}) expects input (N, {self.num_features}, ...),"
                f" got shape {tuple(x.shape)}"
            )
        # Compute in the buffers' dtype, then cast: keeps half inputs accurate.
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        view = (1, -1) + (1,) * (x.dim() - 2)
        return x * scale.view(view).to(x.dtype) + shift.view(view).to(x.dtype)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        # BatchNorm checkpoints carry num_batches_tracked, which this module has no use for.
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def __repr__(self) -> str:
        return f"FrozenBatchNorm(num_features={self.num_features}, eps={self.eps})"

    @classmethod
    def convert_frozen_batchnorm(cls, module: nn.Module) -> nn.Module:
        """
        Returns ``module`` with every ``BatchNorm{1,2,3}d`` / ``SyncBatchNorm`` replaced,
        recursively, by a ``FrozenBatchNorm`` holding the same statistics and affine parameters.
        If ``module`` itself is a batch norm, a new module is returned; otherwise ``module`` is
        changed in place and returned.
        """
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            frozen = cls(module.num_features, module.eps)
            ref = next(iter(list(module.parameters()) + list(module.buffers())), None)
            if ref is not None:
                frozen = frozen.to(ref.device)
            if module.affine:
                frozen.weight.copy_(module.weight.detach())
                frozen.bias.copy_(module.bias.detach())
            if module.track_running_stats:
                frozen.running_mean.copy_(module.running_mean)
                frozen.running_var.copy_(module.running_var)
            else:
                # Without running stats a BN normalises by batch statistics, which a frozen
                # layer cannot reproduce; identity statistics are the honest fallback.
                frozen.running_mean.zero_()
                frozen.running_var.fill_(1.0 - module.eps)
            return frozen
        for name, child in module.named_children():
            new_child = cls.convert_frozen_batchnorm(child)
            if new_child is not child:
                module.add_module(name, new_child)
        return module


def get_norm(
    norm: Union[str, None, Callable[[int], nn.Module]], out_channels: int, ndim: int = 3
) -> Optional[nn.Module]:
    """
    Builds a norm layer from a config name.

    Args:
        norm: ``""`` or None (no norm), ``"BN"`` (BatchNorm2d/3d), ``"SyncBN"``, ``"FrozenBN"``,
            ``"GN"`` (GroupNorm with 32 groups, fewer if ``out_channels`` is not a multiple of 32),
            ``"LN"`` (:class:`det3d.layers.LayerNorm` over channels, eps 1e-6),
            or a callable ``channels -> nn.Module``.
        out_channels: number of channels to normalise.
        ndim: number of spatial dims (2 or 3); picks BatchNorm2d or BatchNorm3d.

    Returns:
        nn.Module or None.
    """
    if norm is None:
        return None
    if callable(norm) and not isinstance(norm, str):
        return norm(out_channels)
    if not isinstance(norm, str):
        raise TypeError(f"norm must be a str, None or a callable, got {type(norm).__name__}")
    if norm == "":
        return None
    if norm == "BN":
        bn = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
        if ndim not in bn:
            raise ValueError(f"get_norm('BN'): ndim={ndim} not supported, expected 1, 2 or 3")
        return bn[ndim](out_channels)
    if norm == "SyncBN":
        return nn.SyncBatchNorm(out_channels)
    if norm == "FrozenBN":
        return FrozenBatchNorm(out_channels)
    if norm == "GN":
        # Largest divisor of out_channels not above 32, so any width works.
        groups = max(g for g in range(1, min(32, out_channels) + 1) if out_channels % g == 0)
        return nn.GroupNorm(groups, out_channels)
    if norm == "LN":
        return LayerNorm(out_channels)  # channels-first, as the ViTDet feature pyramid uses
    raise ValueError(
        f"Unknown norm {norm!r}; expected '', 'BN', 'SyncBN', 'FrozenBN', 'GN', 'LN' or a callable"
    )
