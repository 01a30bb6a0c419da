import math

import pytest
import torch
from _rcnn_test_utils import single_thread

from det3d.config import get_cfg
from det3d.modeling.backbone import build_backbone
from det3d.modeling.matcher import ATSSMatcher
from det3d.modeling.proposal_generator import (
    RPN3D,
    add_ground_truth_to_proposals,
    build_proposal_generator,
    find_top_rpn_proposals,
)
from det3d.structures import Boxes, ImageList, Instances, pairwise_iou


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


def _cfg(ndim=3):
    cfg = get_cfg()
    cfg.MODEL.SPATIAL_DIMS = ndim
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 8
    cfg.MODEL.RESNETS.STEM_OUT_CHANNELS = 8
    cfg.MODEL.RESNETS.STEM_STRIDE = [1, 2, 2]
    cfg.MODEL.RESNETS.STEM_POOL_STRIDE = [1, 2, 2]
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4"]
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4"]
    cfg.MODEL.FPN.OUT_CHANNELS = 16
    cfg.MODEL.FPN.TOP_BLOCK = False
    cfg.MODEL.RPN.IN_FEATURES = ["p2", "p3", "p4"]
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[8], [16], [32]]
    cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = [[0.5, 1.0, 2.0]]
    cfg.MODEL.ANCHOR_GENERATOR.Z_ASPECT_RATIOS = [[0.5, 1.0]]
    cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = 100
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 20
    cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN = 200
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 50
    return cfg


def _build(cfg):
    backbone = build_backbone(cfg)
    rpn = build_proposal_generator(cfg, backbone.output_shape())
    return backbone, rpn


_GT3D = [[2.0, 3, 1, 12, 11, 7], [14, 12, 2, 30, 28, 10], [20, 2, 4, 27, 9, 8]]
_GT2D = [[2.0, 3, 12, 11], [14, 12, 30, 28]]


def _inputs(ndim, num_images=2, image_sizes=None):
    g = torch.Generator().manual_seed(0)
    spatial = (12, 32, 32)[-ndim:]
    x = torch.randn((num_images, 1) + spatial, generator=g)
    image_sizes = image_sizes or [spatial] * num_images
    gts = [
        Instances(s, gt_boxes=Boxes(torch.tensor(_GT3D if ndim == 3 else _GT2D)[: 3 - n]))
        for n, s in enumerate(image_sizes)
    ]
    return ImageList(x, image_sizes), gts


@pytest.mark.parametrize("ndim", [2, 3])
def test_losses_finite_and_gradients_reach_head(ndim):
    torch.manual_seed(0)
    cfg = _cfg(ndim)
    backbone, rpn = _build(cfg)
    assert isinstance(rpn, RPN3D)
    images, gts = _inputs(ndim)
    proposals, losses = rpn(images, backbone(images.tensor), gts)
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_loc"}
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    assert losses["loss_rpn_loc"] > 0
    sum(losses.values()).backward()
    head = rpn.rpn_head
    for p in (head.objectness_logits.weight, head.anchor_deltas.weight, head.conv.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert backbone.bottom_up.stem.conv1.weight.grad.abs().sum() > 0
    assert len(proposals) == 2 and all(
        len(p) <= cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN for p in proposals
    )


@pytest.mark.parametrize(
    "overrides",
    [
        {"CLS_LOSS_TYPE": "focal"},
        {"BBOX_REG_LOSS_TYPE": "huber"},
        {"BBOX_REG_LOSS_TYPE": "giou"},
        {"BBOX_REG_LOSS_TYPE": "smooth_l1", "SMOOTH_L1_BETA": 0.1},
    ],
)
def test_loss_variants(overrides):
    torch.manual_seed(0)
    cfg = _cfg(3)
    for k, v in overrides.items():
        cfg.MODEL.RPN[k] = v
    backbone, rpn = _build(cfg)
    images, gts = _inputs(3)
    _, losses = rpn(images, backbone(images.tensor), gts)
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())


def test_loss_weights_and_unknown_types():
    images, gts = _inputs(3)
    results = []
    for loss_weight, reg_weight in ((1.0, 1.0), (2.0, 3.0)):
        torch.manual_seed(0)
        cfg = _cfg(3)
        cfg.MODEL.RPN.LOSS_WEIGHT = loss_weight
        cfg.MODEL.RPN.BBOX_REG_LOSS_WEIGHT = reg_weight
        backbone, rpn = _build(cfg)
        torch.manual_seed(1)  # same anchor sampling
        results.append(rpn(images, backbone(images.tensor), gts)[1])
    torch.testing.assert_close(results[1]["loss_rpn_cls"], 2 * results[0]["loss_rpn_cls"])
    torch.testing.assert_close(results[1]["loss_rpn_loc"], 6 * results[0]["loss_rpn_loc"])
    for key, value in (("BBOX_REG_LOSS_TYPE", "l2"), ("CLS_LOSS_TYPE", "hinge")):
        cfg = _cfg(3)
        cfg.MODEL.RPN[key] = value
        with pytest.raises(ValueError, match=key):
            _build(cfg)


def test_no_losses_in_eval_or_without_gt():
    torch.manual_seed(0)
    cfg = _cfg(3)
    backbone, rpn = _build(cfg)
    images, gts = _inputs(3)
    features = backbone(images.tensor)
    _, losses = rpn(images, features)  # training mode, no ground truth
    assert losses == {}
    rpn.eval()
    proposals, losses = rpn(images, features, gts)
    assert losses == {}
    assert all(len(p) <= cfg.MODEL.RPN.POST_NMS_TOPK_TEST for p in proposals)


def _iou_reference(a, b):
    d = len(a) // 2
    inter = 1.0
    for k in range(d):
        inter *= max(0.0, min(a[d + k], b[d + k]) - max(a[k], b[k]))
    vol = lambda t: math.prod(t[d + k] - t[k] for k in range(d))  # noqa: E731
    return inter / (vol(a) + vol(b) - inter) if inter > 0 else 0.0


def test_anchor_labels_against_brute_force():
    torch.manual_seed(0)
    cfg = _cfg(3)
    cfg.MODEL.RPN.BATCH_SIZE_PER_IMAGE = 10**6  # keep every label: no subsampling
    backbone, rpn = _build(cfg)
    images, gts = _inputs(3, num_images=1)
    features = [backbone(images.tensor)[f] for f in rpn.in_features]
    anchors = rpn.anchor_generator(features)
    gt_labels, matched = rpn.label_and_sample_anchors(anchors, gts)
    all_anchors = Boxes.cat(anchors).tensor.tolist()
    gt = gts[0].gt_boxes.tensor.tolist()
    ious = [[_iou_reference(a, g) for a in all_anchors] for g in gt]
    best_per_gt = [max(row) for row in ious]
    num_pos = 0
    for r in range(len(all_anchors)):
        col = [ious[i][r] for i in range(len(gt))]
        best = max(col)
        positive = best >= 0.7 or any(col[i] == best_per_gt[i] > 0 for i in range(len(gt)))
        expected = 1 if positive else (0 if best < 0.3 else -1)
        assert gt_labels[0][r] == expected, (r, col)
        if positive:
            num_pos += 1
            assert matched[0][r].tolist() == gt[col.index(best)]
    assert num_pos >= len(gt)


def test_chunked_matching_equals_full_matrix():
    torch.manual_seed(0)
    cfg = _cfg(3)
    backbone, rpn = _build(cfg)
    images, gts = _inputs(3, num_images=1)
    features = [backbone(images.tensor)[f] for f in rpn.in_features]
    levels = rpn.anchor_generator(features)
    anchors, per_level = Boxes.cat(levels), [len(a) for a in levels]
    full = rpn._match(gts[0].gt_boxes, anchors, per_level)
    rpn.max_match_elements = 50  # chunks of 16 anchors
    chunked = rpn._match(gts[0].gt_boxes, anchors, per_level)
    assert torch.equal(full[0], chunked[0]) and torch.equal(full[1], chunked[1])


def test_sampling_and_boundary():
    torch.manual_seed(0)
    cfg = _cfg(3)
    cfg.MODEL.RPN.BATCH_SIZE_PER_IMAGE = 16
    cfg.MODEL.RPN.POSITIVE_FRACTION = 0.25
    cfg.MODEL.RPN.BOUNDARY_THRESH = 0
    backbone, rpn = _build(cfg)
    images, gts = _inputs(3, num_images=1)
    features = [backbone(images.tensor)[f] for f in rpn.in_features]
    anchors = rpn.anchor_generator(features)
    labels = rpn.label_and_sample_anchors(anchors, gts)[0][0]
    assert (labels == 1).sum() <= 4 and (labels >= 0).sum() == 16
    inside = Boxes.cat(anchors).inside_box(images.image_sizes[0], 0)
    assert (labels[~inside] == -1).all()


def test_empty_ground_truth():
    torch.manual_seed(0)
    backbone, rpn = _build(_cfg(3))
    images, _ = _inputs(3, num_images=1)
    gts = [Instances(images.image_sizes[0], gt_boxes=Boxes(torch.zeros(0, 6)))]
    _, losses = rpn(images, backbone(images.tensor), gts)
    assert losses["loss_rpn_loc"] == 0 and torch.isfinite(losses["loss_rpn_cls"])


def test_proposals_inside_image_and_sorted():
    torch.manual_seed(0)
    cfg = _cfg(3)
    backbone, rpn = _build(cfg)
    rpn.eval()
    sizes = [(12, 32, 32), (9, 20, 27)]
    images, _ = _inputs(3, image_sizes=sizes)
    proposals, _ = rpn(images, backbone(images.tensor))
    for p, size in zip(proposals, sizes):
        assert p.image_size == size
        assert 0 < len(p) <= 20
        b = p.proposal_boxes.tensor
        limits = torch.tensor(size[::-1], dtype=b.dtype)
        assert (b[:, :3] >= 0).all() and (b[:, 3:] <= limits).all()
        assert (b[:, 3:] > b[:, :3]).all()
        assert (p.objectness_logits[:-1] >= p.objectness_logits[1:]).all()


def _greedy_nms(boxes, scores, thresh):
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    keep = []
    for i in order:
        if all(_iou_reference(boxes[i], boxes[j]) <= thresh for j in keep):
            keep.append(i)
    return keep


@pytest.mark.parametrize("ndim", [2, 3])
def test_find_top_rpn_proposals_against_reference(ndim):
    g = torch.Generator().manual_seed(0)
    b = 2 * ndim
    level_sizes = [60, 25]
    proposals, logits = [], []
    for n in level_sizes:
        lo = torch.rand(2, n, ndim, generator=g) * 30 - 4
        proposals.append(torch.cat([lo, lo + torch.rand(2, n, ndim, generator=g) * 12], dim=2))
        logits.append(torch.randn(2, n, generator=g))
    image_sizes = [(24,) * ndim, (20,) * ndim]
    pre, post, thresh, min_size = 30, 15, 0.3, 2.0
    out = find_top_rpn_proposals(proposals, logits, image_sizes, thresh, pre, post, min_size)
    for img in range(2):
        cand = []  # (score, box, level)
        for lvl, (p, s) in enumerate(zip(proposals, logits)):
            order = s[img].argsort(descending=True)[:pre]
            for i in order.tolist():
                box = p[img, i].tolist()
                box = [min(max(v, 0.0), image_sizes[img][0]) for v in box]
                if all(box[ndim + k] - box[k] >= min_size for k in range(ndim)):
                    cand.append((s[img, i].item(), box, lvl))
        kept = []
        for lvl in range(2):
            c = [x for x in cand if x[2] == lvl]
            kept += [c[i] for i in _greedy_nms([x[1] for x in c], [x[0] for x in c], thresh)]
        kept = sorted(kept, key=lambda x: -x[0])[:post]
        res = out[img]
        assert len(res) == len(kept) <= post
        torch.testing.assert_close(res.objectness_logits, torch.tensor([x[0] for x in kept]))
        torch.testing.assert_close(
            res.proposal_boxes.tensor, torch.tensor([x[1] for x in kept]).view(-1, b)
        )


def test_non_finite_raises():
    boxes = [torch.tensor([[[0.0, 0, 0, 4, 4, 4], [1, 1, 1, float("nan"), 3, 3]]])]
    with pytest.raises(FloatingPointError, match="boxes"):
        find_top_rpn_proposals(boxes, [torch.tensor([[1.0, 2.0]])], [(8, 8, 8)], 0.7, 10, 10, 0)
    boxes = [torch.tensor([[[0.0, 0, 0, 4, 4, 4], [1, 1, 1, 3, 3, 3]]])]
    with pytest.raises(FloatingPointError, match="logits"):
        find_top_rpn_proposals(
            boxes, [torch.tensor([[1.0, float("inf")]])], [(8, 8, 8)], 0.7, 10, 10, 0
        )


def test_add_ground_truth_to_proposals():
    p = Instances(
        (8, 16, 16),
        proposal_boxes=Boxes(torch.tensor([[0.0, 0, 0, 4, 4, 4]])),
        objectness_logits=torch.tensor([0.3]),
    )
    gt = Instances(
        (8, 16, 16),
        gt_boxes=Boxes(torch.tensor([[1.0, 1, 1, 5, 5, 5], [2.0, 2, 2, 6, 6, 6]])),
        gt_classes=torch.tensor([0, 0]),
    )
    (out,) = add_ground_truth_to_proposals([gt], [p])
    assert len(out) == 3 and set(out.get_fields()) == {"proposal_boxes", "objectness_logits"}
    torch.testing.assert_close(out.proposal_boxes.tensor[1:], gt.gt_boxes.tensor)
    assert (torch.sigmoid(out.objectness_logits[1:]) > 0.999).all()
    (out,) = add_ground_truth_to_proposals([gt.gt_boxes], [p])
    assert len(out) == 3
    p.extra = torch.tensor([1.0])
    with pytest.raises(ValueError, match="extra"):
        add_ground_truth_to_proposals([gt], [p])


def _adam_step(params, state, lr, betas=(0.9, 0.999), eps=1e-8):
    # torch.optim would import torch._dynamo (seconds); this is all the test needs
    state["t"] = state.get("t", 0) + 1
    t = state["t"]
    with torch.no_grad():
        for i, p in enumerate(params):
            if p.grad is None:
                continue
            m, v = state.setdefault(i, (torch.zeros_like(p), torch.zeros_like(p)))
            m.mul_(betas[0]).add_(p.grad, alpha=1 - betas[0])
            v.mul_(betas[1]).addcmul_(p.grad, p.grad, value=1 - betas[1])
            denom = (v / (1 - betas[1] ** t)).sqrt_().add_(eps)
            p.addcdiv_(m, denom, value=-lr / (1 - betas[0] ** t))


def test_rpn_overfits_tiny_volume(seed=0, steps=80, lr=2e-3, top=10, norm="GN"):
    """A tiny ResNet-FPN-RPN learns to propose the three cubes of one 3D volume."""
    torch.manual_seed(seed)
    cfg = get_cfg()
    cfg.MODEL.RESNETS.NORM = norm  # batch statistics of a single volume make BN eval drift
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 8
    cfg.MODEL.RESNETS.STEM_OUT_CHANNELS = 8
    cfg.MODEL.RESNETS.STEM_KERNEL_SIZE = [3, 5, 5]
    cfg.MODEL.RESNETS.STEM_STRIDE = [1, 2, 2]
    cfg.MODEL.RESNETS.STEM_POOL_STRIDE = [1, 2, 2]
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3"]
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3"]
    cfg.MODEL.FPN.OUT_CHANNELS = 16
    cfg.MODEL.FPN.TOP_BLOCK = False
    cfg.MODEL.RPN.IN_FEATURES = ["p2", "p3"]
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[8], [16]]
    cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = [[1.0]]
    cfg.MODEL.ANCHOR_GENERATOR.Z_ASPECT_RATIOS = [[1.0]]
    cfg.MODEL.RPN.BATCH_SIZE_PER_IMAGE = 64
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 10
    backbone, rpn = _build(cfg)

    gt = torch.tensor([[3.0, 4, 2, 11, 12, 10], [18, 6, 5, 28, 16, 13], [8, 18, 4, 18, 28, 12]])
    volume = torch.zeros(1, 1, 16, 32, 32)
    for x0, y0, z0, x1, y1, z1 in gt.long().tolist():
        volume[0, 0, z0:z1, y0:y1, x0:x1] = 1.0
    volume += 0.05 * torch.randn(volume.shape)
    images = ImageList(volume, [(16, 32, 32)])
    gts = [Instances((16, 32, 32), gt_boxes=Boxes(gt))]

    params = list(backbone.parameters()) + list(rpn.parameters())
    state = {}
    for _ in range(steps):
        _, losses = rpn(images, backbone(images.tensor), gts)
        for p in params:
            p.grad = None
        sum(losses.values()).backward()
        _adam_step(params, state, lr=lr)
    backbone.eval()
    rpn.eval()
    with torch.no_grad():
        proposals, _ = rpn(images, backbone(images.tensor))
    iou = pairwise_iou(gts[0].gt_boxes, proposals[0].proposal_boxes[:top])
    assert (iou.max(dim=1).values > 0.5).all(), iou


def test_atss_matcher_from_config():
    images, gts = _inputs(3)
    cfg = _cfg(3)
    cfg.MODEL.RPN.MATCHER = "atss"
    cfg.MODEL.RPN.ATSS_TOPK = 4
    torch.manual_seed(0)
    backbone, rpn = _build(cfg)
    anchors = rpn.anchor_generator([backbone(images.tensor)[f] for f in rpn.in_features])
    labels, _ = rpn.label_and_sample_anchors(anchors, gts)
    _, expected = ATSSMatcher(4)(gts[0].gt_boxes, Boxes.cat(anchors), [len(a) for a in anchors])
    # every ATSS positive is sampled (fewer than the batch's positive quota), no other anchor
    assert torch.equal(labels[0] == 1, expected == 1)
    _, losses = rpn(images, backbone(images.tensor), gts)
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    for key, value in (("MATCHER", "hungarian"), ("ATSS_TOPK", 0)):
        cfg = _cfg(3)
        cfg.MODEL.RPN.MATCHER = "atss"
        cfg.MODEL.RPN[key] = value
        with pytest.raises(ValueError, match=key):
            _build(cfg)
