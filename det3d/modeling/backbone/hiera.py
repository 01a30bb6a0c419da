"""
Hiera (Ryali et al. 2023, "Hiera: A Hierarchical Vision Transformer without the
Bells-and-Whistles") for 2D images and 3D volumes from one code path, with an FPN on top.

Tokens are *unrolled* once after the patch embedding: reordered so that every later query pooling
(a max over ``q_stride`` neighbours per axis) and every mask-unit attention window are contiguous
slices of the token sequence, with no reshaping between blocks. Each stage's output is *rerolled*
to the spatial order of its grid for the FPN (``return_intermediates``). Module names follow the
official Hiera code (``patch_embed.proj``, ``pos_embed``, ``blocks.{i}.attn.qkv``, ``proj``).

Token order after unrolling with strides ``s_1 .. s_k`` (per axis) of a grid ``G``: the token index
is ``(j_1, j_2, .., j_k, c)`` in C order, where ``j_i`` (C order over the axes) is the offset inside
the ``i``-th stride and ``c`` the position on the coarse grid ``G / prod(s)``; the token's
position along each axis is ``((c * s_k + j_k) * s_{k-1} + ..) * s_1 + j_1``. Pooling by ``s_1`` is
a max over ``j_1``, the outermost index; a mask unit of ``prod(s_1 .. s_m)`` tokens per axis is
the set of tokens sharing ``(j_{m+1} .. j_k, c)``.
"""

import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from det3d.checkpoint.inflate import load_2d_pretrained
from det3d.layers import DropPath, ShapeSpec
from det3d.utils.axes import per_axis

from ..registries import BACKBONE_REGISTRY
from .backbone import Backbone
from .fpn import FPN, build_fpn_on
from .transformer_utils import (
    Mlp,
    PatchEmbed,
    crop_to_stride,
    pad_to_multiple,
    resize_abs_pos_embed,
)

__all__ = [
    "unroll",
    "reroll",
    "MaskUnitAttention",
    "HieraBlock",
    "Hiera",
    "build_hiera_backbone",
    "build_hiera_fpn_backbone",
]


def unroll(x: torch.Tensor, strides: Sequence[Sequence[int]]) -> torch.Tensor:
    """
    Args:
        x (Tensor): (B, *grid, C) tokens in spatial order; each grid axis must be divisible by the
            product of its strides.
        strides: the per-axis strides of the successive poolings, finest first.

    Returns:
        Tensor: (B, prod(grid), C) in the unrolled order (module docstring).
    """
    B, grid, C = x.shape[0], tuple(x.shape[1:-1]), x.shape[-1]
    ndim, k = len(grid), len(strides)
    coarse = [g // math.prod(s[a] for s in strides) for a, g in enumerate(grid)]
    # Each axis a splits into (c_a, j_k_a, .., j_1_a): coarsest digit first.
    shape = [B]
    for a in range(ndim):
        shape += [coarse[a]] + [strides[i][a] for i in reversed(range(k))]
    x = x.reshape(*shape, C)
    per_axis_len = k + 1

    def dim(a, digit):  # digit 0 = c, digit i = j_i
        return 1 + a * per_axis_len + (0 if digit == 0 else per_axis_len - digit)

    order = [0]
    for i in range(1, k + 1):
        order += [dim(a, i) for a in range(ndim)]
    order += [dim(a, 0) for a in range(ndim)] + [len(shape)]
    return x.permute(order).reshape(B, -1, C)


def reroll(
    x: torch.Tensor, grid: Sequence[int], strides: Sequence[Sequence[int]]
) -> torch.Tensor:
    """
    Inverse of :func:`unroll`.

    Args:
        x (Tensor): (B, prod(grid), C) in the order :func:`unroll` gives for ``grid`` and
            ``strides`` (the strides not yet consumed by pooling).

    Returns:
        Tensor: (B, *grid, C) in spatial order.
    """
    B, C = x.shape[0], x.shape[-1]
    grid = tuple(grid)
    ndim, k = len(grid), len(strides)
    coarse = [g // math.prod(s[a] for s in strides) for a, g in enumerate(grid)]
    shape = [B] + [v for s in strides for v in s] + coarse + [C]
    x = x.reshape(shape)
    # dims: 0 = B; j_i axis a at 1 + (i - 1) * ndim + a; c axis a at 1 + k * ndim + a
    order = [0]
    for a in range(ndim):
        order.append(1 + k * ndim + a)
        order += [1 + (i - 1) * ndim + a for i in reversed(range(1, k + 1))]
    order.append(len(shape) - 1)
    return x.permute(order).reshape(B, *grid, C)


class MaskUnitAttention(nn.Module):
    """
    Attention within mask units (windows that are contiguous in the unrolled order) or over all
    tokens, with optional query pooling (max over the outermost ``q_stride`` tokens).
    """

    def __init__(
        self,
        dim: int,
        dim_out: int,
        heads: int,
        q_stride: int = 1,
        window_size: int = 0,
        use_mask_unit_attn: bool = False,
    ):
        """
        Args:
            dim, dim_out: input and output channels.
            heads: attention heads.
            q_stride: flattened query pooling stride (e.g. 2 * 2 * 2 = 8); 1 = no pooling.
            window_size: flattened mask-unit size *after* pooling.
            use_mask_unit_attn: attend within mask units (True) or globally.
        """
        super().__init__()
        if dim_out % heads:
            raise ValueError(f"MaskUnitAttention: {heads} heads do not divide {dim_out} channels")
        self.dim_out, self.heads = dim_out, heads
        self.q_stride, self.window_size = q_stride, window_size
        self.use_mask_unit_attn = use_mask_unit_attn
        self.qkv = nn.Linear(dim, 3 * dim_out)
        self.proj = nn.Linear(dim_out, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, N, dim) unrolled -> (B, N / q_stride, dim_out)."""
        B, N, _ = x.shape
        windows = N // (self.q_stride * self.window_size) if self.use_mask_unit_attn else 1
        head_dim = self.dim_out // self.heads
        # The window index is the fastest-varying part of the token index (module docstring).
        qkv = self.qkv(x).reshape(B, -1, windows, 3, self.heads, head_dim)
        q, k, v = qkv.permute(3, 0, 4, 2, 1, 5).unbind(0)  # (B, heads, windows, tokens, hd)
        if self.q_stride > 1:
            q = q.reshape(B, self.heads, windows, self.q_stride, -1, head_dim).amax(dim=3)
        x = F.scaled_dot_product_attention(q, k, v)
        x = x.transpose(1, 3).reshape(B, -1, self.dim_out)
        return self.proj(x)


class HieraBlock(nn.Module):
    """Pre-norm block; the first block of a stage pools the residual (after a projection when the
    width changes) and the queries by the same stride."""

    def __init__(
        self,
        dim: int,
        dim_out: int,
        heads: int,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        q_stride: int = 1,
        window_size: int = 0,
        use_mask_unit_attn: bool = False,
    ):
        super().__init__()
        self.dim, self.dim_out = dim, dim_out
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = MaskUnitAttention(
            dim, dim_out, heads, q_stride, window_size, use_mask_unit_attn
        )
        self.norm2 = nn.LayerNorm(dim_out, eps=1e-6)
        self.mlp = Mlp(dim_out, int(dim_out * mlp_ratio))
        self.drop_path = DropPath(drop_path)
        if dim != dim_out:
            self.proj = nn.Linear(dim, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, N, dim) -> (B, N / q_stride, dim_out)."""
        x_norm = self.norm1(x)
        if self.dim != self.dim_out:
            x = self.proj(x_norm)
        if self.attn.q_stride > 1:
            B, N, C = x.shape
            x = x.reshape(B, self.attn.q_stride, N // self.attn.q_stride, C).amax(dim=1)
        x = x + self.drop_path(self.attn(x_norm))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class Hiera(Backbone):
    """
    Patch embedding, position embeddings, then stages of :class:`HieraBlock`; every stage after
    the first pools by ``q_stride`` per axis and multiplies width and heads. Outputs
    ``stage2`` .. (the stage ``i`` output is ``stage{i + 2}``; ResNet's ``res2`` .. naming).
    """

    def __init__(
        self,
        *,
        ndim: int,
        in_channels: int,
        embed_dim: int = 96,
        num_heads: int = 1,
        stages: Sequence[int] = (2, 3, 16, 3),
        q_stride: Sequence[int] = (2, 2, 2),
        mask_unit_size: Sequence[int] = (8, 8, 8),
        mask_unit_attn: Sequence[bool] = (True, True, False, False),
        dim_mul: float = 2.0,
        head_mul: float = 2.0,
        patch_kernel: Sequence[int] = (7, 7, 7),
        patch_stride: Sequence[int] = (4, 4, 4),
        patch_padding: Sequence[int] = (3, 3, 3),
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
        pretrain_img_size: Sequence[int] = (224, 224, 224),
        out_features: Optional[List[str]] = None,
        freeze_at: int = 0,
    ):
        """
        Args:
            ndim: spatial dims (2 or 3).
            embed_dim, num_heads: width and heads of the first stage.
            stages: blocks per stage.
            q_stride: pooling stride per axis between stages.
            mask_unit_size: mask unit per axis in first-stage tokens; must be ``q_stride ** m``
                for one ``m`` (the mask unit shrinks by ``q_stride`` at each pooling).
            mask_unit_attn: per stage, mask-unit (True) or global (False) attention.
            dim_mul, head_mul: width and heads multiplier at each new stage.
            patch_kernel, patch_stride, patch_padding: the patch embedding conv, per axis.
            mlp_ratio, drop_path_rate: MLP width and stochastic depth of the last block.
            pretrain_img_size: input size per axis the position embeddings are learnt for.
            out_features: outputs among ``stage2`` ..; default: all stages.
            freeze_at: 0 freezes nothing, 1 the patch and position embeddings, k > 1 also
                ``stage2 .. stage{k}``.
        """
        super().__init__()
        num_stages = len(stages)
        if len(mask_unit_attn) != num_stages:
            raise ValueError(
                f"Hiera: mask_unit_attn has {len(mask_unit_attn)} entries for {num_stages} stages"
            )
        q_stride, mask_unit_size = tuple(q_stride), tuple(mask_unit_size)
        mu_power = _stride_power(q_stride, mask_unit_size, num_stages - 1)
        late = [s for s, on in enumerate(mask_unit_attn) if on and s >= mu_power]
        if late:
            raise ValueError(
                f"MODEL.HIERA.MASK_UNIT_ATTN={list(mask_unit_attn)}: stages {late} are pooled "
                f"{mu_power} or more times, so a mask unit of {list(mask_unit_size)} tokens is "
                "one token or less there; use global attention (False) from stage "
                f"{mu_power} on"
            )
        self.ndim = ndim
        self.q_strides = [q_stride] * (num_stages - 1)
        self.patch_stride = tuple(patch_stride)
        self.patch_embed = PatchEmbed(
            ndim,
            in_channels,
            embed_dim,
            kernel_size=patch_kernel,
            stride=patch_stride,
            padding=patch_padding,
            key="MODEL.HIERA.PATCH_KERNEL",
        )
        self.pretrain_grid = tuple(s // p for s, p in zip(pretrain_img_size, self.patch_stride))
        self.pos_embed = nn.Parameter(torch.zeros(1, math.prod(self.pretrain_grid), embed_dim))

        names = [f"stage{i + 2}" for i in range(num_stages)]
        out_features = list(out_features or names)
        unknown = [f for f in out_features if f not in names]
        if unknown:
            raise ValueError(f"Hiera: unknown output feature(s) {unknown}; available: {names}")
        # Only the stages up to the last requested output are built (no unused parameters); the
        # tokens are unrolled for all of them, so the size divisibility does not change.
        num_built = 1 + max(names.index(f) for f in out_features)
        flat_q_stride = math.prod(q_stride)
        flat_mu = math.prod(mask_unit_size)
        rates = torch.linspace(0, drop_path_rate, sum(stages)).tolist()
        self.blocks = nn.ModuleList()
        self.stage_ends = [sum(stages[: i + 1]) - 1 for i in range(num_built)]
        dim, heads, stage = embed_dim, num_heads, 0
        stride = self.patch_stride
        self._out_feature_strides, self._out_feature_channels = {}, {}
        for i in range(self.stage_ends[-1] + 1):
            dim_out, pool = dim, 1
            # As the official code: a new stage's first block still uses the previous stage's
            # attention kind, so global attention starts after the pooling.
            use_mu = mask_unit_attn[stage]
            if i - 1 in self.stage_ends:
                dim_out, heads = int(dim * dim_mul), int(heads * head_mul)
                stage += 1
                pool = flat_q_stride
                # mask units shrink with the tokens (checked above to stay >= 1 token where used)
                flat_mu = max(flat_mu // flat_q_stride, 1)
            self.blocks.append(
                HieraBlock(dim, dim_out, heads, mlp_ratio, rates[i], pool, flat_mu, use_mu)
            )
            dim = dim_out
            if i in self.stage_ends:
                if names[stage] in out_features:
                    self._out_feature_strides[names[stage]] = stride
                    self._out_feature_channels[names[stage]] = dim
                stride = tuple(s * q for s, q in zip(stride, q_stride))
        self._out_features = [n for n in names if n in out_features]
        # The unrolled order needs a token grid divisible by every pooling stride.
        self._size_divisibility = tuple(
            p * q ** (num_stages - 1) for p, q in zip(self.patch_stride, q_stride)
        )
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.apply(_init_weights)
        self.freeze(freeze_at)

    @property
    def size_divisibility(self) -> Tuple[int, ...]:
        """Patch stride times the product of all pooling strides, per axis."""
        return self._size_divisibility

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """
        Args:
            x (Tensor): (N, C, *spatial), any size (padded inside to ``size_divisibility``).

        Returns:
            dict[str, Tensor]: ``stage{k}`` -> (N, C_k, *ceil(spatial / stride_k)), the rerolled
            output of each requested stage (``return_intermediates`` of the official code).
        """
        if x.dim() != self.ndim + 2:
            raise ValueError(
                f"Hiera (ndim={self.ndim}) expects input (N, C, {self.ndim} spatial dims), got "
                f"shape {tuple(x.shape)}"
            )
        size = x.shape[2:]
        x = self.patch_embed(pad_to_multiple(x, self._size_divisibility))  # (B, *grid, C)
        grid = tuple(x.shape[1:-1])
        if any(g % math.prod(s[a] for s in self.q_strides) for a, g in enumerate(grid)):
            raise ValueError(
                f"Hiera: token grid {grid} (input {tuple(size)}) is not divisible by the pooling "
                f"strides {self.q_strides}; MODEL.HIERA.PATCH_KERNEL / PATCH_PADDING must keep "
                "the input size divided by MODEL.HIERA.PATCH_STRIDE"
            )
        x = x + resize_abs_pos_embed(self.pos_embed, self.pretrain_grid, grid)
        x = unroll(x, self.q_strides)
        outputs, stage = {}, 0
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if i in self.stage_ends:
                name = f"stage{stage + 2}"
                if name in self._out_features:
                    out = reroll(x, grid, self.q_strides[stage:]).movedim(-1, 1)
                    outputs[name] = crop_to_stride(out, size, self._out_feature_strides[name])
                if stage < len(self.q_strides):
                    grid = tuple(g // q for g, q in zip(grid, self.q_strides[stage]))
                stage += 1
        return outputs

    def freeze(self, freeze_at: int = 0) -> "Hiera":
        """Freezes the embeddings if ``freeze_at >= 1`` and ``stage{k}`` if ``freeze_at >= k``."""
        params = []
        if freeze_at >= 1:
            params += list(self.patch_embed.parameters()) + [self.pos_embed]
        starts = [0] + [e + 1 for e in self.stage_ends[:-1]]
        for s, (a, b) in enumerate(zip(starts, self.stage_ends)):
            if freeze_at >= s + 2:
                params += [p for blk in self.blocks[a : b + 1] for p in blk.parameters()]
        for p in params:
            p.requires_grad = False
        return self


def _stride_power(q_stride: Tuple[int, ...], mask_unit: Tuple[int, ...], max_power: int) -> int:
    """The ``m`` with ``mask_unit == q_stride ** m`` on every axis (0 <= m <= max_power)."""
    for m in range(max_power + 1):
        if all(q**m == u for q, u in zip(q_stride, mask_unit)):
            return m
    raise ValueError(
        f"MODEL.HIERA.MASK_UNIT_SIZE={list(mask_unit)} must be MODEL.HIERA.Q_STRIDE="
        f"{list(q_stride)} to one power m <= {max_power} (the number of poolings) on every axis, "
        "so that each mask unit is a contiguous run of unrolled tokens"
    )


def _init_weights(m: nn.Module) -> None:
    """Official Hiera init: truncated normal (std 0.02) weights; biases of linears and LNs 0.02."""
    if isinstance(m, (nn.Linear, nn.Conv2d, nn.Conv3d)):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.constant_(m.bias, 0.02)
    elif isinstance(m, nn.LayerNorm):
        nn.init.constant_(m.bias, 0.02)
        nn.init.ones_(m.weight)


@BACKBONE_REGISTRY.register()
def build_hiera_backbone(cfg, input_shape: ShapeSpec) -> Hiera:
    """
    Hiera from ``cfg.MODEL.HIERA``; per-axis values given as 3-lists serve 2D too. Loads
    ``MODEL.HIERA.PRETRAINED`` (a local 2D or 3D state dict) when set.
    """
    ndim = cfg.MODEL.SPATIAL_DIMS
    if ndim not in (2, 3):
        raise ValueError(f"MODEL.SPATIAL_DIMS={ndim!r}; expected 2 or 3")
    h = cfg.MODEL.HIERA
    if len(h.MASK_UNIT_ATTN) != len(h.STAGES):
        raise ValueError(
            f"MODEL.HIERA.MASK_UNIT_ATTN={list(h.MASK_UNIT_ATTN)} needs one entry per stage of "
            f"MODEL.HIERA.STAGES={list(h.STAGES)}"
        )
    model = Hiera(
        ndim=ndim,
        in_channels=input_shape.channels,
        embed_dim=h.EMBED_DIM,
        num_heads=h.NUM_HEADS,
        stages=list(h.STAGES),
        q_stride=per_axis(h.Q_STRIDE, ndim, "MODEL.HIERA.Q_STRIDE"),
        mask_unit_size=per_axis(h.MASK_UNIT_SIZE, ndim, "MODEL.HIERA.MASK_UNIT_SIZE"),
        mask_unit_attn=[bool(b) for b in h.MASK_UNIT_ATTN],
        dim_mul=h.DIM_MUL,
        head_mul=h.HEAD_MUL,
        patch_kernel=per_axis(h.PATCH_KERNEL, ndim, "MODEL.HIERA.PATCH_KERNEL"),
        patch_stride=per_axis(h.PATCH_STRIDE, ndim, "MODEL.HIERA.PATCH_STRIDE"),
        patch_padding=per_axis(h.PATCH_PADDING, ndim, "MODEL.HIERA.PATCH_PADDING"),
        mlp_ratio=h.MLP_RATIO,
        drop_path_rate=h.DROP_PATH_RATE,
        pretrain_img_size=per_axis(h.PRETRAIN_IMG_SIZE, ndim, "MODEL.HIERA.PRETRAIN_IMG_SIZE"),
        out_features=list(h.OUT_FEATURES),
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
    )
    if h.PRETRAINED:
        load_2d_pretrained(model, h.PRETRAINED)
    return model


@BACKBONE_REGISTRY.register()
def build_hiera_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """Hiera (``cfg.MODEL.HIERA``) + FPN (``cfg.MODEL.FPN``; ``IN_FEATURES`` ``stage*``)."""
    return build_fpn_on(cfg, build_hiera_backbone(cfg, input_shape))
