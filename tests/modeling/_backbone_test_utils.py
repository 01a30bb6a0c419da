"""Tiny configs of the transformer-era backbones, shared by their tests."""

import math

import torch

from det3d.config import get_cfg

STAGES = ["stage2", "stage3", "stage4", "stage5"]


def tiny_backbone_cfg(family: str, ndim: int = 3):
    """A config whose ``MODEL.BACKBONE.NAME`` is ``family``'s FPN/SFP builder, a few channels
    wide; per-axis values are 3-lists so that 2D drops their D entry."""
    cfg = get_cfg()
    cfg.MODEL.SPATIAL_DIMS = ndim
    cfg.MODEL.FPN.OUT_CHANNELS = 8
    if family == "convnext":
        cfg.MODEL.BACKBONE.NAME = "build_convnext_fpn_backbone"
        cfg.MODEL.CONVNEXT.DEPTHS = [1, 1, 2, 1]
        cfg.MODEL.CONVNEXT.DIMS = [8, 16, 24, 32]
        cfg.MODEL.CONVNEXT.STEM_STRIDE = [2, 4, 4]
        cfg.MODEL.CONVNEXT.KERNEL_SIZE = [3, 7, 7]
        cfg.MODEL.FPN.IN_FEATURES = STAGES
    elif family == "vit":
        cfg.MODEL.BACKBONE.NAME = "build_vit_sfp_backbone"
        cfg.MODEL.VIT.PATCH_SIZE = [4, 16, 16]
        cfg.MODEL.VIT.EMBED_DIM = 16
        cfg.MODEL.VIT.DEPTH = 3
        cfg.MODEL.VIT.NUM_HEADS = 2
        cfg.MODEL.VIT.PRETRAIN_IMG_SIZE = [16, 64, 64]
        cfg.MODEL.VIT.WINDOW_SIZE = [2, 3, 3]  # does not divide the 4 x 4 grid: padded
        cfg.MODEL.VIT.WINDOW_BLOCK_INDEXES = [0, 2]
    elif family == "hiera":
        cfg.MODEL.BACKBONE.NAME = "build_hiera_fpn_backbone"
        cfg.MODEL.HIERA.EMBED_DIM = 8
        cfg.MODEL.HIERA.NUM_HEADS = 1
        cfg.MODEL.HIERA.STAGES = [1, 1, 2, 1]
        cfg.MODEL.HIERA.MASK_UNIT_SIZE = [4, 4, 4]
        cfg.MODEL.HIERA.MASK_UNIT_ATTN = [True, True, False, False]
        cfg.MODEL.HIERA.PATCH_KERNEL = [3, 7, 7]
        cfg.MODEL.HIERA.PATCH_STRIDE = [1, 4, 4]
        cfg.MODEL.HIERA.PATCH_PADDING = [1, 3, 3]
        cfg.MODEL.HIERA.PRETRAIN_IMG_SIZE = [8, 64, 64]
        cfg.MODEL.FPN.IN_FEATURES = STAGES
    else:
        raise ValueError(family)
    return cfg


def ceil_div(shape, stride):
    return tuple(math.ceil(n / s) for n, s in zip(shape, stride))


def check_outputs_match_output_shape(backbone, x: torch.Tensor):
    """Runs ``backbone`` on ``x`` and checks every output against ``output_shape()``: channels and
    a spatial size of ceil(input / stride) per axis. Returns the outputs."""
    out = backbone(x)
    shapes = backbone.output_shape()
    assert list(out) == list(shapes)
    for name, spec in shapes.items():
        expected = (x.shape[0], spec.channels) + ceil_div(x.shape[2:], spec.stride)
        assert tuple(out[name].shape) == expected, (name, tuple(out[name].shape), expected)
    return out


def forward_backward(backbone, x: torch.Tensor):
    """One forward and backward pass; every trainable parameter gets a finite gradient."""
    out = backbone(x)
    sum(o.square().mean() for o in out.values()).backward()
    no_grad = [n for n, p in backbone.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, no_grad
    assert all(torch.isfinite(p.grad).all() for p in backbone.parameters() if p.grad is not None)
