"""
Each transformer-era backbone family (ConvNeXt, ViTDet, Hiera) drops into the tiny 3D Mask R-CNN
of ``test_overfit.py`` and overfits its synthetic volume: every object found, with its box and its
mask, within a bounded number of CPU iterations.
"""

import pytest
import torch
from _rcnn_test_utils import single_thread, synthetic_input
from test_overfit import _overfit_cfg, overfit_and_score

from det3d.modeling import build_model

STAGES = ["stage2", "stage3"]


def _backbone_cfg(family: str):
    """The ResNet test's tiny Mask R-CNN (p2, p3 only) with ``family``'s backbone instead, its
    levels at strides (2, 4, 4) and (4, 8, 8)."""
    cfg = _overfit_cfg()
    if family == "convnext":
        cfg.MODEL.BACKBONE.NAME = "build_convnext_fpn_backbone"
        cfg.MODEL.CONVNEXT.DEPTHS = [1, 1]
        cfg.MODEL.CONVNEXT.DIMS = [16, 32]
        cfg.MODEL.CONVNEXT.STEM_STRIDE = [2, 4, 4]
        cfg.MODEL.CONVNEXT.KERNEL_SIZE = [3, 5, 5]
        cfg.MODEL.CONVNEXT.DROP_PATH_RATE = 0.0
        cfg.MODEL.CONVNEXT.OUT_FEATURES = STAGES
        cfg.MODEL.FPN.IN_FEATURES = STAGES
    elif family == "vitdet":
        cfg.MODEL.BACKBONE.NAME = "build_vit_sfp_backbone"
        cfg.MODEL.VIT.PATCH_SIZE = [8, 16, 16]
        cfg.MODEL.VIT.EMBED_DIM = 32
        cfg.MODEL.VIT.DEPTH = 2
        cfg.MODEL.VIT.NUM_HEADS = 2
        cfg.MODEL.VIT.DROP_PATH_RATE = 0.0
        cfg.MODEL.VIT.PRETRAIN_IMG_SIZE = [24, 48, 48]
        cfg.MODEL.VIT.WINDOW_SIZE = [2, 2, 2]  # padded on the 3 x 3 x 3 token grid
        cfg.MODEL.VIT.WINDOW_BLOCK_INDEXES = [0]
        cfg.MODEL.VIT.SCALE_FACTORS = [4.0, 2.0]  # p2, p3
    elif family == "hiera":
        cfg.MODEL.BACKBONE.NAME = "build_hiera_fpn_backbone"
        cfg.MODEL.HIERA.EMBED_DIM = 16
        cfg.MODEL.HIERA.NUM_HEADS = 1
        cfg.MODEL.HIERA.STAGES = [1, 1]
        cfg.MODEL.HIERA.MASK_UNIT_SIZE = [2, 2, 2]
        cfg.MODEL.HIERA.MASK_UNIT_ATTN = [True, False]
        cfg.MODEL.HIERA.PATCH_KERNEL = [3, 7, 7]
        cfg.MODEL.HIERA.PATCH_STRIDE = [2, 4, 4]
        cfg.MODEL.HIERA.PATCH_PADDING = [1, 3, 3]
        cfg.MODEL.HIERA.DROP_PATH_RATE = 0.0
        cfg.MODEL.HIERA.PRETRAIN_IMG_SIZE = [24, 48, 48]
        cfg.MODEL.HIERA.OUT_FEATURES = STAGES
        cfg.MODEL.FPN.IN_FEATURES = STAGES
    return cfg


@pytest.mark.parametrize("family, max_iters", [("convnext", 150), ("vitdet", 150), ("hiera", 150)])
def test_backbone_family_overfits_one_volume(family, max_iters):
    output, report, train_seconds = overfit_and_score(_backbone_cfg(family), max_iters)
    pred, labels = output["instances"], output["instance_labels"]
    assert labels.shape == (24, 48, 48)
    assert len(pred) >= 4, (family, len(pred), train_seconds)
    assert all(b > 0.5 and m > 0.5 for b, m in report), (family, report, train_seconds)


@pytest.mark.parametrize("family", ["convnext", "vitdet", "hiera"])
def test_backbone_family_drops_into_the_2d_model(family):
    """The same config with ``SPATIAL_DIMS 2`` (the 2.5D model's per-slice network) trains and
    predicts on images: per-axis 3-lists drop their D entry."""
    with single_thread():
        torch.manual_seed(0)
        cfg = _backbone_cfg(family)
        cfg.MODEL.SPATIAL_DIMS = 2
        model = build_model(cfg)
        inputs = synthetic_input((40, 56), num_objects=2, num_classes=1)
        losses = model.train()([inputs])
        sum(losses.values()).backward()
        assert all(torch.isfinite(v) for v in losses.values())
        with torch.no_grad():
            out = model.eval()([{"image": inputs["image"], "height": 40, "width": 56}])[0]
    assert out["instance_labels"].shape == (40, 56)
    assert out["instances"].pred_boxes.tensor.shape[1] == 4
