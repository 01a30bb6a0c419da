"""
Linear resampling of N-D feature maps, one axis at a time.

``resize_linear`` gives what ``F.interpolate(x, size, mode="bilinear" / "trilinear",
align_corners=False)`` gives, computed as one small matrix product per spatial axis. On a CPU
that is several times faster, forward and backward: bringing 2 x 8 channels from 16^3 to 64^3,
as the foreground head does every training step, took torch 2.13's trilinear kernels 47 ms
forward and backward on one core, the matrix products 11 ms (``bench/ops.py`` measures it).
"""

from functools import lru_cache
from typing import Sequence

import torch

__all__ = ["resize_linear", "linear_resize_matrix"]


@lru_cache(maxsize=64)
def _matrix(n_in: int, n_out: int) -> torch.Tensor:
    # source coordinate of each output voxel centre, as torch's align_corners=False computes it
    # (scale in / out, negative coordinates clamped to the first voxel)
    src = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_in / n_out) - 0.5).clamp(min=0)
    lo = src.floor().long().clamp(max=n_in - 1)
    hi = (lo + 1).clamp(max=n_in - 1)
    frac = src - lo
    rows = torch.arange(n_out)
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    m.index_put_((rows, lo), 1.0 - frac, accumulate=True)
    m.index_put_((rows, hi), frac, accumulate=True)
    return m


def linear_resize_matrix(n_in: int, n_out: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """
    The ``(n_out, n_in)`` matrix of 1-D linear resampling with ``align_corners=False``: row ``i``
    holds the weights of the input voxels that output voxel ``i`` interpolates (at most two,
    summing to 1).
    """
    if n_in < 1 or n_out < 1:
        raise ValueError(f"linear_resize_matrix: sizes must be >= 1, got {n_in} -> {n_out}")
    return _matrix(int(n_in), int(n_out)).to(dtype=dtype, device=device)


def resize_linear(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """
    Resamples ``x`` (N, C, *spatial) to ``size`` by separable linear interpolation, as
    ``F.interpolate(..., mode="linear" / "bilinear" / "trilinear", align_corners=False)`` does
    (no anti-aliasing when shrinking), and differentiably.

    Args:
        x: (N, C, *spatial), floating point.
        size: the output's spatial size, one entry per spatial axis.

    Returns:
        Tensor: (N, C, *size), x's dtype and device.
    """
    ndim = x.dim() - 2
    if ndim < 1 or len(size) != ndim:
        raise ValueError(
            f"resize_linear: expected x (N, C, *spatial) and one size per spatial axis, got "
            f"x {tuple(x.shape)} and size {tuple(size)}"
        )
    if not x.is_floating_point():
        raise TypeError(f"resize_linear: x must be floating point, got {x.dtype}")
    for axis, n_out in enumerate(size):
        n_in = x.shape[2 + axis]
        if n_in == n_out:
            continue
        m = linear_resize_matrix(n_in, n_out, x.dtype, x.device)
        x = torch.matmul(x.movedim(2 + axis, -1), m.t()).movedim(-1, 2 + axis)
    return x
