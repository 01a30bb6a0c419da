"""
N-D building blocks shared by the transformer backbones (ViTDet, Hiera): patch embedding, MLP,
window partition / unpartition, and absolute and relative position embeddings resized to the
input. Token maps are channels-last, ``(B, *grid, C)``, as in Detectron2's ``vit.py``.
"""

import math
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from det3d.layers import conv_nd

__all__ = [
    "PatchEmbed",
    "Mlp",
    "window_partition",
    "window_unpartition",
    "resize_abs_pos_embed",
    "get_rel_pos",
    "rel_pos_bias",
    "pad_to_multiple",
    "crop_to_stride",
]


class PatchEmbed(nn.Module):
    """
    Image or volume to patch tokens: one conv with a kernel, stride and padding per axis.

    ``key`` names the config entry of the kernel in error messages (e.g. ``MODEL.VIT.PATCH_SIZE``).
    """

    def __init__(
        self,
        ndim: int,
        in_channels: int,
        embed_dim: int,
        kernel_size: Sequence[int],
        stride: Sequence[int],
        padding: Sequence[int] = 0,
        key: str = "patch kernel",
    ):
        super().__init__()
        self.ndim = ndim
        self.kernel_size = tuple(kernel_size)
        self.padding = tuple(padding) if isinstance(padding, (list, tuple)) else (padding,) * ndim
        self.key = key
        self.proj = conv_nd(ndim)(in_channels, embed_dim, self.kernel_size, stride, self.padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x (Tensor): (B, C_in, *spatial).

        Returns:
            Tensor: (B, *grid, embed_dim).
        """
        if x.dim() != self.ndim + 2:
            raise ValueError(
                f"PatchEmbed (ndim={self.ndim}) expects (B, C, {self.ndim} spatial dims), got "
                f"shape {tuple(x.shape)}"
            )
        spatial = tuple(x.shape[2:])
        if any(s + 2 * p < k for s, p, k in zip(spatial, self.padding, self.kernel_size)):
            raise ValueError(
                f"input of spatial size {spatial} is smaller than the patch ({self.key}="
                f"{list(self.kernel_size)}); pad it (the model's ImageList pads to the "
                "backbone's size_divisibility)"
            )
        x = self.proj(x)
        return x.movedim(1, -1)


class Mlp(nn.Module):
    """Linear -> GELU -> Linear (timm's ``Mlp`` names: ``fc1``, ``fc2``)."""

    def __init__(self, dim: int, hidden_dim: int, out_dim: int = None):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, out_dim or dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def window_partition(
    x: torch.Tensor, window_size: Sequence[int]
) -> Tuple[torch.Tensor, Tuple[int, ...]]:
    """
    Cuts a token map into non-overlapping windows, padding each axis at its end with zeros to a
    multiple of the window size (Detectron2's ``window_partition`` in N-D).

    Args:
        x (Tensor): (B, *grid, C).
        window_size: window size per axis.

    Returns:
        windows (Tensor): (B * num_windows, *window_size, C), windows in C order of their grid.
        padded (tuple): the padded grid size, for :func:`window_unpartition`.
    """
    ndim = x.dim() - 2
    grid = x.shape[1:-1]
    pads = [(-g) % w for g, w in zip(grid, window_size)]
    if any(pads):
        # F.pad lists (before, after) pairs from the last axis on; C is the last axis here.
        x = F.pad(x, [0, 0] + [v for p in reversed(pads) for v in (0, p)])
    padded = tuple(g + p for g, p in zip(grid, pads))
    B, C = x.shape[0], x.shape[-1]
    shape = [B]
    for g, w in zip(padded, window_size):
        shape += [g // w, w]
    x = x.view(*shape, C)
    # (B, n0, w0, n1, w1, ..., C) -> (B, n0, n1, ..., w0, w1, ..., C)
    order = [0] + [1 + 2 * a for a in range(ndim)] + [2 + 2 * a for a in range(ndim)]
    order.append(2 * ndim + 1)
    windows = x.permute(order).reshape(-1, *window_size, C)
    return windows, padded


def window_unpartition(
    windows: torch.Tensor,
    window_size: Sequence[int],
    padded: Sequence[int],
    grid: Sequence[int],
) -> torch.Tensor:
    """
    Inverse of :func:`window_partition`: reassembles the windows and removes the padding.

    Args:
        windows (Tensor): (B * num_windows, *window_size, C).
        window_size, padded: as given to / returned by :func:`window_partition`.
        grid: the original grid size.

    Returns:
        Tensor: (B, *grid, C).
    """
    ndim = len(window_size)
    counts = [p // w for p, w in zip(padded, window_size)]
    B = windows.shape[0] // math.prod(counts)
    C = windows.shape[-1]
    x = windows.view(B, *counts, *window_size, C)
    order = [0] + [v for a in range(ndim) for v in (1 + a, 1 + ndim + a)] + [2 * ndim + 1]
    x = x.permute(order).reshape(B, *padded, C)
    if tuple(padded) != tuple(grid):
        x = x[(slice(None),) + tuple(slice(0, g) for g in grid)]
    return x.contiguous()


def resize_abs_pos_embed(
    pos_embed: torch.Tensor, pretrain_grid: Sequence[int], grid: Sequence[int]
) -> torch.Tensor:
    """
    Absolute position embeddings for a token grid of another size than the one they were learnt
    on: bicubic (2D) or trilinear (3D) interpolation, as Detectron2's ``get_abs_pos``.

    Args:
        pos_embed (Tensor): (1, prod(pretrain_grid), C), tokens in C order.
        pretrain_grid: grid the embeddings belong to.
        grid: grid of the input.

    Returns:
        Tensor: (1, *grid, C).
    """
    C = pos_embed.shape[-1]
    if pos_embed.shape[1] != math.prod(pretrain_grid):
        raise ValueError(
            f"pos_embed has {pos_embed.shape[1]} tokens, not prod({list(pretrain_grid)})"
        )
    pos = pos_embed.reshape(1, *pretrain_grid, C)
    if tuple(pretrain_grid) == tuple(grid):
        return pos
    mode = {1: "linear", 2: "bicubic", 3: "trilinear"}[len(grid)]
    pos = F.interpolate(pos.movedim(-1, 1), size=tuple(grid), mode=mode, align_corners=False)
    return pos.movedim(1, -1)


def get_rel_pos(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """
    Relative position embeddings of every (query, key) pair along one axis (Detectron2's
    ``get_rel_pos``): the table is linearly resized to ``2 * max(q_size, k_size) - 1`` entries
    when it was learnt for another size, and coordinates of the smaller side are scaled.

    Args:
        rel_pos (Tensor): (L, C) table.

    Returns:
        Tensor: (q_size, k_size, C).
    """
    length = 2 * max(q_size, k_size) - 1
    if rel_pos.shape[0] != length:
        rel_pos = F.interpolate(
            rel_pos.t()[None], size=length, mode="linear", align_corners=False
        )[0].t()
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * max(q_size / k_size, 1.0)
    relative = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos[relative.long()]


def rel_pos_bias(
    q: torch.Tensor, rel_pos: List[torch.Tensor], q_grid: Sequence[int], k_grid: Sequence[int]
) -> torch.Tensor:
    """
    Decomposed relative position bias of MViTv2 / ViTDet in N-D: the bias of query ``i`` and key
    ``j`` is the sum over axes ``a`` of ``q_i . R_a[i_a - j_a]``.

    Args:
        q (Tensor): (B, prod(q_grid), C) queries (one head).
        rel_pos: one (L_a, C) table per axis.
        q_grid, k_grid: query and key grids.

    Returns:
        Tensor: (B, prod(q_grid), prod(k_grid)), to add to the attention logits.
    """
    ndim = len(q_grid)
    B, _, C = q.shape
    r_q = q.reshape(B, *q_grid, C)
    bias = q.new_zeros((B, *q_grid, *k_grid))
    letters = "defg"[:ndim]
    for a in range(ndim):
        table = get_rel_pos(q_grid[a], k_grid[a], rel_pos[a])  # (q_a, k_a, C)
        # sum over C of r_q[b, *q, c] * table[q_a, k, c] -> (B, *q, k_a)
        rel = torch.einsum(f"b{letters}c,{letters[a]}kc->b{letters}k", r_q, table)
        shape = [B, *q_grid] + [1] * ndim
        shape[1 + ndim + a] = k_grid[a]
        bias = bias + rel.reshape(shape)
    return bias.reshape(B, math.prod(q_grid), math.prod(k_grid))



def pad_to_multiple(x: torch.Tensor, multiples: Sequence[int]) -> torch.Tensor:
    """
    Zero-pads the end of each spatial axis of ``x`` (N, C, *spatial) to a multiple of
    ``multiples`` (one int per axis); ``x`` itself when nothing is needed. The backbones call it so
    that inputs of any size work; ``ImageList`` normally pads to ``size_divisibility`` first.
    """
    spatial = x.shape[2:]
    pads = [(-s) % m for s, m in zip(spatial, multiples)]
    if not any(pads):
        return x
    return F.pad(x, [v for p in reversed(pads) for v in (0, p)])


def crop_to_stride(x: torch.Tensor, input_size: Sequence[int], stride: Sequence[int]):
    """
    Crops a feature map of a padded input to ``ceil(input_size / stride)`` per axis, the size a
    strided convnet gives for the unpadded input.
    """
    sizes = [math.ceil(n / s) for n, s in zip(input_size, stride)]
    if list(x.shape[2:]) == sizes:
        return x
    return x[(slice(None), slice(None)) + tuple(slice(0, s) for s in sizes)]
