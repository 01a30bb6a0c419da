"""
ViTDet's simple feature pyramid: the levels of an FPN built from the single last feature map of a
plain ViT by transposed convs (finer levels) and max-pooling (coarser), in 2D or 3D.

Per-axis scaling. A level with scale factor ``s`` has stride ``patch / s`` on each axis, except
that an axis is never upsampled below stride 1: with ``PATCH_SIZE [4, 16, 16]`` and scale factors
``(4, 2, 1, 0.5)`` the strides are ``(1, 4, 4)``, ``(2, 8, 8)``, ``(4, 16, 16)``, ``(8, 32, 32)``,
those of the anisotropic ResNet-FPN.
"""

import math
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from det3d.checkpoint.inflate import load_2d_pretrained
from det3d.layers import Conv, ShapeSpec, conv_transpose_nd, get_norm, max_pool_nd
from det3d.utils.axes import per_axis

from ..registries import BACKBONE_REGISTRY
from .backbone import Backbone
from .fpn import LastLevelMaxPool, pyramid_strides
from .transformer_utils import crop_to_stride, pad_to_multiple
from .vit import ViT

__all__ = ["SimpleFeaturePyramid", "build_vit_backbone", "build_vit_sfp_backbone"]

_SCALES = (4.0, 2.0, 1.0, 0.5)


def _upsampling(ndim: int, dim: int, factors: Sequence[int], norm: str) -> nn.Module:
    """Transposed convs that upsample each axis by its factor (1, 2 or 4): one for factors up to
    2, two with a norm and GELU between them when an axis needs 4 (Detectron2's scale 4)."""
    conv_t = conv_transpose_nd(ndim)
    if max(factors) <= 1:
        return nn.Identity()
    if max(factors) == 2:
        return conv_t(dim, dim // 2, factors, factors)
    first = tuple(min(f, 2) for f in factors)
    second = tuple(f // a for f, a in zip(factors, first))
    return nn.Sequential(
        conv_t(dim, dim // 2, first, first),
        get_norm(norm, dim // 2, ndim) or nn.Identity(),
        nn.GELU(),
        conv_t(dim // 2, dim // 4, second, second),
    )


class SimpleFeaturePyramid(Backbone):
    """
    ``p{k}`` levels (``k = log2`` of the x stride) from the ``in_feature`` of ``net``, each followed
    by a 1x1 and a 3x3 conv with a norm to ``out_channels``; an optional ``top_block`` adds a
    coarser level, as :class:`FPN` does.
    """

    def __init__(
        self,
        net: Backbone,
        in_feature: str,
        out_channels: int,
        scale_factors: Sequence[float] = _SCALES,
        top_block: Optional[nn.Module] = None,
        norm: str = "LN",
    ):
        """
        Args:
            net: a backbone with one output ``in_feature`` (a :class:`ViT`).
            in_feature: the output of ``net`` to build the pyramid from.
            out_channels: channels of every level.
            scale_factors: each among 4, 2, 1, 0.5, finest first.
            top_block: as in :class:`FPN` (``LastLevelMaxPool`` for ``p6``).
            norm: norm of the convs (``get_norm`` names; Detectron2 uses "LN").
        """
        super().__init__()
        shapes = net.output_shape()
        if in_feature not in shapes:
            raise ValueError(f"SimpleFeaturePyramid: {in_feature!r} not among {list(shapes)}")
        bad = [s for s in scale_factors if float(s) not in _SCALES]
        if bad:
            raise ValueError(
                f"SimpleFeaturePyramid: scale factors {bad} are not supported; use some of "
                f"{list(_SCALES)} (MODEL.VIT.SCALE_FACTORS)"
            )
        if list(scale_factors) != sorted(scale_factors, reverse=True):
            raise ValueError(
                f"SimpleFeaturePyramid: scale factors {list(scale_factors)} must be finest first "
                "(decreasing)"
            )
        dim = shapes[in_feature].channels
        base = tuple(shapes[in_feature].stride)
        ndim = len(base)
        self.ndim, self.net, self.in_feature = ndim, net, in_feature
        self.top_block = top_block
        use_bias = norm == ""
        strides = []
        for scale in scale_factors:
            if scale >= 1:
                factors = tuple(min(int(scale), b) for b in base)
                if any(b % f for b, f in zip(base, factors)) or any(f == 3 for f in factors):
                    raise ValueError(
                        f"SimpleFeaturePyramid: patch {list(base)} cannot be upsampled by "
                        f"{scale} per axis (MODEL.VIT.PATCH_SIZE, MODEL.VIT.SCALE_FACTORS)"
                    )
                stride = tuple(b // f for b, f in zip(base, factors))
                layer = _upsampling(ndim, dim, factors, norm)
                out_dim = dim // max(factors)
            else:
                stride = tuple(2 * b for b in base)
                layer = max_pool_nd(ndim)(kernel_size=2, stride=2)
                out_dim = dim
            if stride[-1] & (stride[-1] - 1):
                raise ValueError(
                    f"SimpleFeaturePyramid: level stride {stride} is not a power of two along x; "
                    "levels are named p{log2(stride)} (MODEL.VIT.PATCH_SIZE)"
                )
            level = int(math.log2(stride[-1]))
            self.add_module(
                f"simfp_{level}",
                nn.Sequential(
                    layer,
                    Conv(ndim, out_dim, out_channels, 1, bias=use_bias,
                         norm=get_norm(norm, out_channels, ndim)),
                    Conv(ndim, out_channels, out_channels, 3, padding=1, bias=use_bias,
                         norm=get_norm(norm, out_channels, ndim)),
                ),
            )  # fmt: skip
            strides.append(stride)
        self.stages = [getattr(self, f"simfp_{int(math.log2(s[-1]))}") for s in strides]
        self._out_feature_strides = pyramid_strides(strides, top_block)
        self._out_features = list(self._out_feature_strides)
        self._out_feature_channels = {k: out_channels for k in self._out_features}
        # The coarsest pooled level needs an input that is a multiple of its stride.
        self._size_divisibility = tuple(max(s[a] for s in strides) for a in range(ndim))

    @property
    def size_divisibility(self):
        """Per-axis stride of the coarsest level before the top block."""
        return self._size_divisibility

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """
        Args:
            x (Tensor): (N, C, *spatial), any size (padded inside to ``size_divisibility``).

        Returns:
            dict[str, Tensor]: ``p{k}`` -> (N, out_channels, *ceil(spatial / stride)).
        """
        size = x.shape[2:]
        features = self.net(pad_to_multiple(x, self._size_divisibility))[self.in_feature]
        names = self._out_features
        results = [stage(features) for stage in self.stages]
        if self.top_block is not None:
            top_in = results[names.index(self.top_block.in_feature)]
            results.extend(self.top_block(top_in))
        return {
            n: crop_to_stride(r, size, self._out_feature_strides[n]) for n, r in zip(names, results)
        }


@BACKBONE_REGISTRY.register()
def build_vit_backbone(cfg, input_shape: ShapeSpec) -> ViT:
    """
    The plain ViT of ``cfg.MODEL.VIT`` (output ``"last_feat"``); per-axis values given as 3-lists
    serve 2D too. Loads ``MODEL.VIT.PRETRAINED`` (a local 2D or 3D state dict) when set.
    """
    ndim = cfg.MODEL.SPATIAL_DIMS
    if ndim not in (2, 3):
        raise ValueError(f"MODEL.SPATIAL_DIMS={ndim!r}; expected 2 or 3")
    v = cfg.MODEL.VIT
    window_size = per_axis(v.WINDOW_SIZE, ndim, "MODEL.VIT.WINDOW_SIZE")
    if list(v.WINDOW_BLOCK_INDEXES) and any(w < 1 for w in window_size):
        raise ValueError(
            f"MODEL.VIT.WINDOW_SIZE={list(window_size)} must be >= 1 on every axis when "
            f"MODEL.VIT.WINDOW_BLOCK_INDEXES={list(v.WINDOW_BLOCK_INDEXES)} is not empty"
        )
    bad = [i for i in v.WINDOW_BLOCK_INDEXES if not 0 <= i < v.DEPTH]
    if bad:
        raise ValueError(
            f"MODEL.VIT.WINDOW_BLOCK_INDEXES has {bad}, not blocks of MODEL.VIT.DEPTH={v.DEPTH}"
        )
    if v.EMBED_DIM % v.NUM_HEADS:
        raise ValueError(
            f"MODEL.VIT.NUM_HEADS={v.NUM_HEADS} does not divide MODEL.VIT.EMBED_DIM={v.EMBED_DIM}"
        )
    model = ViT(
        ndim=ndim,
        in_channels=input_shape.channels,
        patch_size=per_axis(v.PATCH_SIZE, ndim, "MODEL.VIT.PATCH_SIZE"),
        embed_dim=v.EMBED_DIM,
        depth=v.DEPTH,
        num_heads=v.NUM_HEADS,
        mlp_ratio=v.MLP_RATIO,
        qkv_bias=v.QKV_BIAS,
        drop_path_rate=v.DROP_PATH_RATE,
        use_abs_pos=v.USE_ABS_POS,
        use_rel_pos=v.USE_REL_POS,
        pretrain_img_size=per_axis(v.PRETRAIN_IMG_SIZE, ndim, "MODEL.VIT.PRETRAIN_IMG_SIZE"),
        window_size=window_size,
        window_block_indexes=list(v.WINDOW_BLOCK_INDEXES),
        use_act_checkpoint=v.USE_ACT_CHECKPOINT,
    )
    freeze_at = cfg.MODEL.BACKBONE.FREEZE_AT
    if freeze_at > 1:
        raise ValueError(
            f"MODEL.BACKBONE.FREEZE_AT={freeze_at}: a plain ViT has no stages to freeze; use 0 "
            "or 1 (1 freezes the patch and position embeddings)"
        )
    model.freeze(freeze_at)
    if v.PRETRAINED:
        load_2d_pretrained(model, v.PRETRAINED)
    return model


@BACKBONE_REGISTRY.register()
def build_vit_sfp_backbone(cfg, input_shape: ShapeSpec) -> SimpleFeaturePyramid:
    """
    ViTDet: the ViT of ``cfg.MODEL.VIT`` + a simple feature pyramid (``MODEL.VIT.SCALE_FACTORS``,
    ``MODEL.VIT.SFP_NORM``) of ``MODEL.FPN.OUT_CHANNELS`` channels, with the extra max-pooled
    level when ``MODEL.FPN.TOP_BLOCK``.
    """
    net = build_vit_backbone(cfg, input_shape)
    scales: List[float] = [float(s) for s in cfg.MODEL.VIT.SCALE_FACTORS]
    top_block = None
    if cfg.MODEL.FPN.TOP_BLOCK:
        patch_x = net.output_shape()["last_feat"].stride[-1]
        coarsest = patch_x / scales[-1]
        top_block = LastLevelMaxPool(
            cfg.MODEL.SPATIAL_DIMS, in_feature=f"p{int(math.log2(coarsest))}"
        )
    return SimpleFeaturePyramid(
        net,
        "last_feat",
        cfg.MODEL.FPN.OUT_CHANNELS,
        scale_factors=scales,
        top_block=top_block,
        norm=cfg.MODEL.VIT.SFP_NORM,
    )
