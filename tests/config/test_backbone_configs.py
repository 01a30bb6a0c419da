"""The shipped ConvNeXt / ViTDet / Hiera configs load and build backbones that fit their heads."""

import os

import pytest
import torch

from det3d.config import get_cfg
from det3d.modeling.backbone import build_backbone

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "Synthetic")
NAMES = [
    "mask_rcnn_convnext_nano_FPN_3d_cpu",
    "mask_rcnn_vitdet_nano_SFP_3d_cpu",
    "mask_rcnn_hiera_nano_FPN_3d_cpu",
    "mask_rcnn_convnext_T_FPN_3d_gpu",
    "mask_rcnn_vitdet_B_SFP_3d_gpu",
    "mask_rcnn_hiera_T_FPN_3d_gpu",
]


@pytest.mark.parametrize("name", NAMES)
def test_backbone_config_builds_and_fits_the_heads(name):
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(CONFIGS, name + ".yaml"))
    torch.manual_seed(0)
    backbone = build_backbone(cfg)
    shapes = backbone.output_shape()
    wanted = set(cfg.MODEL.RPN.IN_FEATURES) | set(cfg.MODEL.ROI_HEADS.IN_FEATURES)
    assert wanted <= set(shapes), (sorted(wanted), list(shapes))
    assert len({shapes[f].channels for f in wanted}) == 1
    # the synthetic volumes (32, 96, 96) need no padding
    assert all(s % d == 0 for s, d in zip((32, 96, 96), backbone.size_divisibility))
    # the levels the ROI heads pool from keep the demo's x/y strides 4 .. 32
    assert [shapes[f].stride[-1] for f in cfg.MODEL.ROI_HEADS.IN_FEATURES] == [4, 8, 16, 32]
