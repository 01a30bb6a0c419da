"""
The default model is sized for volumes: the activations the ROI heads keep per RoI, times the
RoIs the defaults send them, stay within a fixed share of an 8 GB machine. (Detectron2's 2D
sizes carried into 3D, 14^3 mask pooling upsampled to 28^3 over 256 channels on up to 128
foreground RoIs per volume, kept ~9 GB for the mask head alone.) The whole-model peak on a
64x128x128 volume is measured by bench/memory.py, not here.
"""

import numpy as np
import torch
from torch import nn

from det3d.config import get_cfg
from det3d.layers import ShapeSpec
from det3d.modeling.roi_heads import build_box_head, build_mask_head
from det3d.utils.axes import per_axis

_GIB = 1024**3


def _activation_bytes_per_roi(head: nn.Module, x: torch.Tensor, *args) -> int:
    """float32 bytes of every leaf module's output for one RoI (what autograd keeps, roughly)."""
    sizes = []
    hooks = [
        m.register_forward_hook(lambda m, i, o: sizes.append(o.numel()))
        for m in head.modules()
        if len(list(m.children())) == 0
    ]
    with torch.no_grad():
        head.eval()
        head(x, *args)
    for h in hooks:
        h.remove()
    return 4 * sum(sizes)


def test_default_roi_heads_activations_fit_a_small_machine():
    cfg = get_cfg()
    ndim = cfg.MODEL.SPATIAL_DIMS
    assert ndim == 3
    channels = cfg.MODEL.FPN.OUT_CHANNELS
    torch.manual_seed(0)

    box_head = build_box_head(cfg, ShapeSpec(channels=channels))
    box_res = per_axis(cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION, ndim, "box")
    box_bytes = _activation_bytes_per_roi(box_head, torch.zeros((1, channels) + box_res))
    box_params = sum(p.numel() for p in box_head.parameters())

    mask_head = build_mask_head(cfg, ShapeSpec(channels=channels))
    mask_res = per_axis(cfg.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION, ndim, "mask")
    mask_bytes = _activation_bytes_per_roi(
        nn.Sequential(*mask_head.conv_norm_relus, mask_head.deconv, mask_head.predictor),
        torch.zeros((1, channels) + mask_res),
    )

    batch = cfg.SOLVER.IMS_PER_BATCH
    rois = cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE
    fg_rois = int(rois * cfg.MODEL.ROI_HEADS.POSITIVE_FRACTION)
    # Training: a backward pass holds about twice the forward activations at its peak.
    assert 2 * mask_bytes * fg_rois * batch < 1.5 * _GIB, mask_bytes
    assert 2 * box_bytes * rois * batch < 0.25 * _GIB, box_bytes
    # Box head weights + gradients + two optimizer moments in float32.
    assert 4 * 4 * box_params < 0.5 * _GIB, box_params
    # Inference: the mask head runs on at most ROI_CHUNK_SIZE detections at a time.
    chunk = cfg.TEST.ROI_CHUNK_SIZE or cfg.TEST.DETECTIONS_PER_IMAGE
    assert 0 < chunk <= cfg.TEST.DETECTIONS_PER_IMAGE
    assert mask_bytes * min(chunk, cfg.TEST.DETECTIONS_PER_IMAGE) < 1.0 * _GIB
    # The masks are finer than 2D's 28x28 = 784 pixels per object, the pooled grids cover
    # an object at least 5 bins a side.
    assert np.prod([2 * r for r in mask_res]) > 784 and min(box_res) >= 5
