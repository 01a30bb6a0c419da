"""Tiny configs and synthetic inputs shared by the R-CNN tests (modeling B)."""

import contextlib
import itertools

import torch

from det3d.config import get_cfg
from det3d.modeling import build_model
from det3d.structures import Boxes, Instances
from det3d.structures.masks import BitMasks


def tiny_cfg(ndim: int = 3, levels: int = 4):
    """
    A small Mask R-CNN config: ResNet-18 with 8/16-channel stages, FPN of 16 channels, anchors
    of 8..64 voxels, 32-wide box head, 8-channel mask head. ``levels`` FPN levels from res2 on
    (``levels=2``: p2, p3 only, no p6).
    """
    cfg = get_cfg()
    cfg.MODEL.SPATIAL_DIMS = ndim
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 16
    cfg.MODEL.RESNETS.STEM_OUT_CHANNELS = 8
    cfg.MODEL.RESNETS.NORM = "BN"
    res = ["res2", "res3", "res4", "res5"][:levels]
    cfg.MODEL.RESNETS.OUT_FEATURES = res
    cfg.MODEL.FPN.IN_FEATURES = res
    cfg.MODEL.FPN.OUT_CHANNELS = 16
    cfg.MODEL.FPN.TOP_BLOCK = levels == 4
    p = [f"p{k}" for k in range(2, 2 + levels)]
    cfg.MODEL.RPN.IN_FEATURES = p + (["p6"] if levels == 4 else [])
    sizes = [[8], [16], [32], [64], [128]]
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = sizes[: len(cfg.MODEL.RPN.IN_FEATURES)]
    cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = [[1.0]]
    cfg.MODEL.RPN.BATCH_SIZE_PER_IMAGE = 64
    cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN = 200
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 50
    cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = 200
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 50
    cfg.MODEL.ROI_HEADS.IN_FEATURES = p
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 2
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 32
    cfg.MODEL.ROI_HEADS.CANONICAL_BOX_SIZE = 16
    cfg.MODEL.ROI_HEADS.CANONICAL_LEVEL = 3
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 32
    cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 3
    cfg.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION = 4
    cfg.MODEL.ROI_MASK_HEAD.NUM_CONV = 1
    cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = 8
    return cfg


def synthetic_input(shape=(16, 32, 32), seed: int = 0, num_objects: int = 2, num_classes: int = 2):
    """
    One model input dict with bright boxes on noise: ``"image"`` (1, *shape) and ``"instances"``
    (``gt_boxes``, ``gt_classes``, ``gt_masks``). Objects are cuboids, ``num_objects`` of them,
    side ~ a third to a half of each axis.
    """
    g = torch.Generator().manual_seed(seed)
    ndim = len(shape)
    image = torch.rand((1,) + tuple(shape), generator=g) * 0.2
    masks = torch.zeros((num_objects,) + tuple(shape), dtype=torch.bool)
    for i in range(num_objects):
        region = []
        for s in shape:
            size = max(2, s // 3)
            start = int(torch.randint(0, s - size + 1, (1,), generator=g))
            region.append(slice(start, start + size))
        masks[(i,) + tuple(region)] = True
        image[(0,) + tuple(region)] += 0.8
    bitmasks = BitMasks(masks)
    inst = Instances(tuple(shape))
    inst.gt_boxes = bitmasks.get_bounding_boxes()
    inst.gt_classes = torch.arange(num_objects) % num_classes
    inst.gt_masks = bitmasks
    assert isinstance(inst.gt_boxes, Boxes) and inst.gt_boxes.ndim == ndim
    return {"image": image, "instances": inst}


@contextlib.contextmanager
def single_thread():
    """Runs torch on one thread: on a shared 2-core machine this avoids OpenMP contention that
    makes tiny models 10-100x slower, and keeps results reproducible."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def eval_model(ndim: int, opts=()):
    """
    A tiny model (``tiny_cfg(ndim)`` with the ``[KEY, VALUE, ...]`` overrides ``opts``), seeded,
    in eval mode, that keeps every detection: (cfg, model).
    """
    torch.manual_seed(0)
    cfg = tiny_cfg(ndim)
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.merge_from_list(list(opts))
    model = build_model(cfg)
    model.eval()
    return cfg, model


def twin(cfg, model):
    """A model built from ``cfg`` with ``model``'s weights, in eval mode."""
    other = build_model(cfg)
    other.load_state_dict(model.state_dict())
    other.eval()
    return other


def box_predictions_by_hand(model, images, boxes):
    """The box predictor's outputs at ``boxes`` (one image): pooler, box head, predictor."""
    heads = model.roi_heads
    features = model.backbone(images.tensor)
    pooled = heads.box_pooler([features[f] for f in heads.box_in_features], [boxes])
    return heads.box_predictor(heads.box_head(pooled))


def sum_over_flips(model, image, boxes, axes, by_hand):
    """
    ``by_hand(model, images, flipped boxes)`` summed over every non-empty combination of the
    array ``axes``, each on ``image`` (``(C, *spatial)``) flipped along them: the flipped passes
    of a test-time average, written out.
    """
    shape = image.shape[1:]
    total = 0
    for k in range(1, len(axes) + 1):
        for flip in itertools.combinations(axes, k):
            images = model.preprocess_image([{"image": image.flip([1 + a for a in flip])}])
            total = total + by_hand(model, images, boxes.flipped(flip, shape))
    return total
