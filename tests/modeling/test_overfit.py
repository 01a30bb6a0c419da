"""
A tiny 3D Mask R-CNN overfits one synthetic volume: every object is found, with its box and its
mask (from ``instance_labels``), within a bounded number of CPU iterations.
"""

import time

import torch
from _rcnn_test_utils import single_thread, tiny_cfg

from det3d.modeling import build_model
from det3d.structures import Instances, pairwise_iou
from det3d.structures.masks import BitMasks

MAX_ITERS = 150


def _ellipsoid_volume(seed: int = 0):
    """1x24x48x48 noisy volume with four separate bright ellipsoids (anisotropic: flat in z)."""
    g = torch.Generator().manual_seed(seed)
    shape = (24, 48, 48)
    centers = [(6, 12, 12), (16, 14, 34), (8, 34, 16), (17, 35, 35)]
    radii = [(4, 7, 7), (5, 8, 6), (4, 6, 8), (4, 7, 7)]
    centres = [torch.arange(s, dtype=torch.float32) + 0.5 for s in shape]
    grid = torch.meshgrid(*centres, indexing="ij")
    masks = torch.stack(
        [
            sum(((x - c) / r) ** 2 for x, c, r in zip(grid, center, radius)) <= 1
            for center, radius in zip(centers, radii)
        ]
    )
    image = 0.2 + 0.15 * torch.randn((1,) + shape, generator=g)
    image[0][masks.any(0)] += 0.6
    bitmasks = BitMasks(masks)
    instances = Instances(
        shape,
        gt_boxes=bitmasks.get_bounding_boxes(),
        gt_classes=torch.zeros(len(masks), dtype=torch.int64),
        gt_masks=bitmasks,
    )
    return {"image": image, "instances": instances}, masks


def _overfit_cfg():
    cfg = tiny_cfg(3, levels=2)  # p2, p3 (strides 4, 8)
    cfg.MODEL.PIXEL_MEAN = [0.3]
    cfg.MODEL.PIXEL_STD = [0.3]
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 1
    # Objects are ~16 voxels across in x/y and ~9 in z.
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[16], [32]]
    cfg.MODEL.ANCHOR_GENERATOR.Z_ASPECT_RATIOS = [[0.5, 1.0]]
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 100
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 100
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 64
    cfg.MODEL.ROI_HEADS.POSITIVE_FRACTION = 0.5
    cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 5
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 64
    cfg.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION = 7
    cfg.MODEL.ROI_MASK_HEAD.NUM_CONV = 2
    cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = 16
    return cfg


def overfit_and_score(cfg, iters: int):
    """
    Trains ``cfg``'s model on the ellipsoid volume for ``iters`` Adam steps (one thread), then
    predicts it. Returns ``(output, report, train_seconds)``: per ground-truth object, the box IoU
    of its best-overlapping detection and the IoU of that detection's region of
    ``instance_labels`` with the object's mask.
    """
    with single_thread():
        torch.manual_seed(0)
        inputs, gt_masks = _ellipsoid_volume()
        model = build_model(cfg)
        model.train()
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        start = time.perf_counter()
        for _ in range(iters):
            losses = model([inputs])
            assert all(torch.isfinite(v) for v in losses.values()), losses
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
        train_seconds = time.perf_counter() - start

        model.eval()
        with torch.no_grad():
            output = model([{"image": inputs["image"], "depth": 24, "height": 48, "width": 48}])[0]

    pred, labels = output["instances"], output["instance_labels"]
    report = []
    if len(pred):
        box_iou = pairwise_iou(inputs["instances"].gt_boxes, pred.pred_boxes)
        for j in range(len(gt_masks)):
            i = int(box_iou[j].argmax())
            predicted = labels == i + 1
            union = float((predicted | gt_masks[j]).sum())
            report.append((float(box_iou[j, i]), float((predicted & gt_masks[j]).sum()) / union))
    return output, report, train_seconds


def test_tiny_model_overfits_one_volume():
    output, report, train_seconds = overfit_and_score(_overfit_cfg(), MAX_ITERS)
    pred, labels = output["instances"], output["instance_labels"]
    assert labels.shape == (24, 48, 48) and labels.dtype == torch.int32
    assert len(pred) >= 4
    assert all(b > 0.5 and m > 0.5 for b, m in report), (report, train_seconds)
