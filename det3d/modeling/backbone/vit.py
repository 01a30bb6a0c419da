"""
Plain Vision Transformer of ViTDet (Li et al. 2022, "Exploring Plain Vision Transformer Backbones
for Object Detection") for 2D images and 3D volumes from one code path.

Patches, windows and the grid of the absolute position embeddings are per array axis, so a volume
with thick z slices can use e.g. ``PATCH_SIZE [4, 16, 16]``. Most blocks attend within windows
(padded when the window does not divide the token grid), the blocks not in
``window_block_indexes`` attend globally. Attention runs through
``torch.nn.functional.scaled_dot_product_attention``; the optional decomposed relative position
bias is passed to it as an additive mask. Module names follow Detectron2's ``vit.py`` / MAE
(``patch_embed.proj``, ``pos_embed``, ``blocks.{i}.attn.qkv``, ``attn.rel_pos_h``, ...).
"""

import math
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from det3d.layers import DropPath

from .backbone import Backbone
from .transformer_utils import (
    Mlp,
    PatchEmbed,
    pad_to_multiple,
    rel_pos_bias,
    resize_abs_pos_embed,
    window_partition,
    window_unpartition,
)

__all__ = ["Attention", "ViTBlock", "ViT"]

_AXIS_NAMES = ("d", "h", "w")


class Attention(nn.Module):
    """Multi-head self-attention over a token map, with optional decomposed relative positions."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        use_rel_pos: bool = False,
        rel_pos_grid: Optional[Sequence[int]] = None,
    ):
        """
        Args:
            dim: channels.
            num_heads: heads (must divide ``dim``).
            qkv_bias: bias of the q, k, v projection.
            use_rel_pos: add a relative position bias, one table per axis
                (``rel_pos_d``, ``rel_pos_h``, ``rel_pos_w``; Detectron2's names in 2D).
            rel_pos_grid: the grid the tables are sized for (resized at run time otherwise).
        """
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"Attention: {num_heads} heads do not divide {dim} channels")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        self.rel_pos_names = []
        if use_rel_pos:
            if rel_pos_grid is None:
                raise ValueError("Attention: use_rel_pos needs rel_pos_grid")
            names = _AXIS_NAMES[-len(rel_pos_grid) :]
            for name, g in zip(names, rel_pos_grid):
                # zero init, as Detectron2's rel_pos_zero_init default
                self.register_parameter(
                    f"rel_pos_{name}", nn.Parameter(torch.zeros(2 * g - 1, dim // num_heads))
                )
                self.rel_pos_names.append(f"rel_pos_{name}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, *grid, C) -> (B, *grid, C)."""
        B, grid, C = x.shape[0], tuple(x.shape[1:-1]), x.shape[-1]
        N, head_dim = math.prod(grid), C // self.num_heads
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, heads, N, head_dim)
        bias = None
        if self.use_rel_pos:
            tables = [getattr(self, n) for n in self.rel_pos_names]
            bias = rel_pos_bias(q.reshape(B * self.num_heads, N, head_dim), tables, grid, grid)
            bias = bias.view(B, self.num_heads, N, N).to(q.dtype)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        x = x.transpose(1, 2).reshape(B, *grid, C)
        return self.proj(x)


class ViTBlock(nn.Module):
    """Pre-norm transformer block, attending within windows (``window_size``) or globally."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        use_rel_pos: bool = False,
        window_size: Optional[Sequence[int]] = None,
        input_grid: Optional[Sequence[int]] = None,
    ):
        """
        Args:
            window_size: window per axis in tokens; None = global attention.
            input_grid: token grid of the pretraining input, which sizes the relative position
                tables of global blocks.
        """
        super().__init__()
        self.window_size = tuple(window_size) if window_size is not None else None
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(
            dim,
            num_heads,
            qkv_bias,
            use_rel_pos,
            rel_pos_grid=self.window_size if self.window_size is not None else input_grid,
        )
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, *grid, C) -> same shape."""
        shortcut = x
        x = self.norm1(x)
        if self.window_size is not None:
            grid = x.shape[1:-1]
            x, padded = window_partition(x, self.window_size)
            x = self.attn(x)
            x = window_unpartition(x, self.window_size, padded, grid)
        else:
            x = self.attn(x)
        x = shortcut + self.drop_path(x)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class ViT(Backbone):
    """
    Patch embedding + absolute position embeddings + transformer blocks; one output,
    ``"last_feat"`` (channels-first) at stride ``patch_size``.
    """

    def __init__(
        self,
        *,
        ndim: int,
        in_channels: int,
        patch_size: Sequence[int] = (16, 16, 16),
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
        use_abs_pos: bool = True,
        use_rel_pos: bool = False,
        pretrain_img_size: Sequence[int] = (224, 224, 224),
        window_size: Sequence[int] = (0, 0, 0),
        window_block_indexes: Sequence[int] = (),
        use_act_checkpoint: bool = False,
    ):
        """
        Args:
            ndim: spatial dims (2 or 3).
            patch_size: patch (= kernel and stride of the embedding conv) per axis.
            embed_dim, depth, num_heads, mlp_ratio, qkv_bias: transformer sizes.
            drop_path_rate: stochastic depth of the last block; rises linearly from 0.
            use_abs_pos: learnt absolute position embeddings on the grid of ``pretrain_img_size``,
                interpolated to the input's grid.
            use_rel_pos: decomposed relative position bias in every block.
            pretrain_img_size: input size per axis the position embeddings are learnt for.
            window_size: window per axis in tokens for the blocks in ``window_block_indexes``.
            window_block_indexes: blocks that attend within windows; the others are global.
            use_act_checkpoint: recompute each block's activations in the backward pass
                (``torch.utils.checkpoint``) instead of keeping them: less memory, ~30% slower.
        """
        super().__init__()
        self.ndim = ndim
        self.patch_size = tuple(patch_size)
        self.patch_embed = PatchEmbed(
            ndim,
            in_channels,
            embed_dim,
            kernel_size=self.patch_size,
            stride=self.patch_size,
            key="MODEL.VIT.PATCH_SIZE",
        )
        self.pretrain_grid = tuple(s // p for s, p in zip(pretrain_img_size, self.patch_size))
        if any(g < 1 for g in self.pretrain_grid):
            raise ValueError(
                f"ViT: pretrain_img_size {list(pretrain_img_size)} is smaller than the patch "
                f"{list(self.patch_size)} on some axis"
            )
        if use_abs_pos:
            self.pos_embed = nn.Parameter(torch.zeros(1, math.prod(self.pretrain_grid), embed_dim))
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        else:
            self.pos_embed = None
        bad = [i for i in window_block_indexes if not 0 <= i < depth]
        if bad:
            raise ValueError(
                f"ViT: window_block_indexes {bad} are not blocks of a depth-{depth} ViT"
            )
        if window_block_indexes and any(w < 1 for w in window_size):
            raise ValueError(
                f"ViT: window_size {list(window_size)} must be >= 1 on every axis when blocks "
                f"{list(window_block_indexes)} use windows"
            )
        rates = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList(
            ViTBlock(
                embed_dim,
                num_heads,
                mlp_ratio,
                qkv_bias,
                rates[i],
                use_rel_pos,
                window_size=tuple(window_size) if i in window_block_indexes else None,
                input_grid=self.pretrain_grid,
            )
            for i in range(depth)
        )
        self.use_act_checkpoint = use_act_checkpoint
        self._out_features = ["last_feat"]
        self._out_feature_channels = {"last_feat": embed_dim}
        self._out_feature_strides = {"last_feat": self.patch_size}
        self.apply(_init_weights)

    @property
    def size_divisibility(self) -> Tuple[int, ...]:
        return self.patch_size

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """
        Args:
            x (Tensor): (N, C, *spatial), any size (padded inside to a multiple of the patch).

        Returns:
            dict: ``"last_feat"`` -> (N, embed_dim, *ceil(spatial / patch_size)).
        """
        if x.dim() != self.ndim + 2:
            raise ValueError(
                f"ViT (ndim={self.ndim}) expects input (N, C, {self.ndim} spatial dims), got "
                f"shape {tuple(x.shape)}"
            )
        x = self.patch_embed(pad_to_multiple(x, self.patch_size))  # (N, *grid, C)
        if self.pos_embed is not None:
            x = x + resize_abs_pos_embed(self.pos_embed, self.pretrain_grid, x.shape[1:-1])
        for blk in self.blocks:
            if self.use_act_checkpoint and self.training and torch.is_grad_enabled():
                x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        return {"last_feat": x.movedim(-1, 1)}

    def freeze(self, freeze_at: int = 0) -> "ViT":
        """``freeze_at >= 1`` freezes the patch and position embeddings (ViT has no stages)."""
        if freeze_at >= 1:
            for p in self.patch_embed.parameters():
                p.requires_grad = False
            if self.pos_embed is not None:
                self.pos_embed.requires_grad = False
        return self


def _init_weights(m: nn.Module) -> None:
    """Detectron2 / MAE init: truncated normal (std 0.02) linear weights, zero biases, unit LN."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
