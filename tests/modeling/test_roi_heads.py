"""StandardROIHeads3D, the box head and the Fast R-CNN predictor (losses and inference)."""

import pytest
import torch
from _rcnn_test_utils import single_thread, synthetic_input, tiny_cfg
from torch.nn import functional as F

from det3d.layers import ShapeSpec, giou_loss, huber_soft_clip_loss
from det3d.modeling import ROI_BOX_HEAD_REGISTRY, ROI_HEADS_REGISTRY, build_roi_heads
from det3d.modeling.box_regression import Box2BoxTransform
from det3d.modeling.roi_heads import FastRCNNOutputLayers3D, build_box_head, fast_rcnn_inference
from det3d.structures import Boxes, ImageList, Instances, pairwise_iou


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


def _features(ndim, image_shape, channels=16, levels=(2, 3, 4, 5), batch=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    feats, shapes = {}, {}
    for lvl in levels:
        stride = (2**lvl,) * ndim
        size = tuple(max(1, s // st) for s, st in zip(image_shape, stride))
        feats[f"p{lvl}"] = torch.randn((batch, channels) + size, generator=g)
        shapes[f"p{lvl}"] = ShapeSpec(channels=channels, stride=stride)
    return feats, shapes


def _proposals(targets, n_random=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for t in targets:
        shape = t.image_size
        ndim = len(shape)
        limits = torch.tensor(list(reversed(shape)), dtype=torch.float32)
        lo = torch.rand(n_random, ndim, generator=g) * limits * 0.6
        hi = lo + 2 + torch.rand(n_random, ndim, generator=g) * limits * 0.4
        jitter = t.gt_boxes.tensor + torch.randn(t.gt_boxes.tensor.shape, generator=g) * 0.5
        boxes = torch.cat([torch.cat([lo, hi], 1), jitter])
        out.append(
            Instances(
                shape,
                proposal_boxes=Boxes(boxes),
                objectness_logits=torch.randn(len(boxes), generator=g),
            )
        )
    return out


@pytest.mark.parametrize("ndim", [2, 3])
def test_roi_heads_train_and_inference(ndim):
    torch.manual_seed(0)
    shape = (16, 32, 32)[-ndim:] if ndim == 3 else (32, 32)
    cfg = tiny_cfg(ndim)
    cfg.MODEL.ROI_BOX_HEAD.NUM_CONV = 1
    cfg.MODEL.ROI_BOX_HEAD.CONV_DIM = 8
    cfg.MODEL.ROI_BOX_HEAD.NORM = "GN"
    cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = [2, 3, 3][-ndim:]  # per axis
    cfg.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION = [3, 4, 5][-ndim:]
    feats, shapes = _features(ndim, shape)
    heads = build_roi_heads(cfg, shapes)
    assert type(heads).__name__ == "StandardROIHeads3D"
    assert "StandardROIHeads3D" in ROI_HEADS_REGISTRY
    assert "FastRCNNConvFCHead3D" in ROI_BOX_HEAD_REGISTRY

    targets = [synthetic_input(shape, seed=0)["instances"]]
    images = ImageList(torch.zeros((1, 1) + shape), [shape])
    heads.train()
    sampled, losses = heads(images, feats, _proposals(targets), targets)
    assert set(losses) == {"loss_cls", "loss_box_reg", "loss_mask"}
    assert all(torch.isfinite(v) and v.requires_grad for v in losses.values())
    sum(losses.values()).backward()
    assert heads.box_predictor.cls_score.weight.grad is not None
    assert heads.mask_head.predictor.weight.grad is not None

    heads.eval()
    heads.box_predictor.test_score_thresh = 0.0
    with torch.no_grad():
        pred, extra = heads(images, feats, _proposals(targets))
    assert extra == {}
    p = pred[0]
    assert len(p) > 0 and p.image_size == shape
    assert p.pred_boxes.tensor.shape[1] == 2 * ndim
    mask_size = tuple(2 * r for r in cfg.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION)
    assert p.pred_masks.shape == (len(p),) + mask_size
    assert ((p.pred_masks >= 0) & (p.pred_masks <= 1)).all()
    assert (p.scores[:-1] >= p.scores[1:]).all()  # decreasing score


def test_label_and_sample_proposals():
    torch.manual_seed(0)
    shape = (16, 32, 32)
    cfg = tiny_cfg(3)
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 16
    cfg.MODEL.ROI_HEADS.POSITIVE_FRACTION = 0.25
    _, shapes = _features(3, shape)
    heads = build_roi_heads(cfg, shapes)
    target = synthetic_input(shape, seed=3, num_objects=2)["instances"]
    empty = Instances(
        shape, gt_boxes=Boxes(torch.zeros(0, 6)), gt_classes=torch.zeros(0, dtype=torch.int64)
    )
    empty.gt_masks = target.gt_masks[torch.zeros(0, dtype=torch.int64)]
    proposals = _proposals([target, empty], n_random=40)
    sampled = heads.label_and_sample_proposals(proposals, [target, empty])

    s = sampled[0]
    assert len(s) <= 16
    fg = s.gt_classes < cfg.MODEL.ROI_HEADS.NUM_CLASSES
    assert 0 < int(fg.sum()) <= 4  # the appended gt boxes are foreground; at most 25 %
    iou = pairwise_iou(s.proposal_boxes[fg], s.gt_boxes[fg]).diagonal()
    assert (iou >= 0.5).all()
    # The class and mask of each foreground RoI are those of the gt box it matched.
    for k in torch.nonzero(fg).flatten().tolist():
        j = int(pairwise_iou(s.gt_boxes[k : k + 1], target.gt_boxes).argmax())
        assert int(s.gt_classes[k]) == int(target.gt_classes[j])
        assert torch.equal(s.gt_masks.tensor[k], target.gt_masks.tensor[j])
    # An image without objects: only background, with zero gt boxes.
    e = sampled[1]
    assert (e.gt_classes == cfg.MODEL.ROI_HEADS.NUM_CLASSES).all()
    assert e.gt_boxes.tensor.abs().sum() == 0


def _predictor(ndim=3, num_classes=3, **kwargs):
    return FastRCNNOutputLayers3D(
        ShapeSpec(channels=8),
        box2box_transform=Box2BoxTransform(weights=(10.0,) * ndim + (5.0,) * ndim),
        num_classes=num_classes,
        ndim=ndim,
        **kwargs,
    )


def _sampled(ndim=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = 6
    lo = torch.rand(n, ndim, generator=g) * 10
    boxes = torch.cat([lo, lo + 4 + torch.rand(n, ndim, generator=g) * 4], 1)
    gt = boxes + torch.randn(boxes.shape, generator=g)
    gt[:, ndim:] = torch.maximum(gt[:, ndim:], gt[:, :ndim] + 1)
    p = Instances((32,) * ndim, proposal_boxes=Boxes(boxes), gt_boxes=Boxes(gt))
    p.gt_classes = torch.tensor([0, 2, 3, 1, 3, 3])  # 3 = background
    return p


@pytest.mark.parametrize("box_loss", ["smooth_l1", "huber", "giou"])
@pytest.mark.parametrize("cls_loss", ["ce", "focal"])
def test_fast_rcnn_losses_match_manual(cls_loss, box_loss):
    pred = _predictor(
        cls_loss_type=cls_loss,
        box_reg_loss_type=box_loss,
        huber_clip=2.0,
        huber_delta=0.5,
        loss_weight={"loss_cls": 2.0, "loss_box_reg": 0.5},
    )
    p = _sampled()
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(6, 4, generator=g)
    deltas = torch.randn(6, 3 * 6, generator=g) * 0.1
    losses = pred.losses((scores, deltas), [p])
    assert set(losses) == {"loss_cls", "loss_box_reg"}

    labels = p.gt_classes
    if cls_loss == "ce":
        cls = F.cross_entropy(scores, labels)
    else:
        prob = F.softmax(scores, 1)[torch.arange(6), labels]
        w = torch.where(labels < 3, torch.tensor(0.25), torch.tensor(0.75))
        cls = (-w * (1 - prob) ** 2 * prob.log()).mean()
    torch.testing.assert_close(losses["loss_cls"], 2.0 * cls)

    fg = [0, 1, 3]
    d = torch.stack([deltas[i].view(3, 6)[labels[i]] for i in fg])
    props, gts = p.proposal_boxes.tensor[fg], p.gt_boxes.tensor[fg]
    t = pred.box2box_transform
    if box_loss == "smooth_l1":
        box = (d - t.get_deltas(props, gts)).abs().sum()
    elif box_loss == "huber":
        box = huber_soft_clip_loss(d, t.get_deltas(props, gts), 2.0, 0.5, reduction="sum")
    else:
        box = giou_loss(t.apply_deltas(d, props), gts, reduction="sum")
    torch.testing.assert_close(losses["loss_box_reg"], 0.5 * box / 6)  # over all sampled RoIs


def test_fast_rcnn_loss_without_foreground_and_bad_types():
    pred = _predictor()
    p = _sampled()
    p.gt_classes = torch.full((6,), 3)
    scores = torch.randn(6, 4, requires_grad=True)
    deltas = torch.randn(6, 18, requires_grad=True)
    losses = pred.losses((scores, deltas), [p])
    assert losses["loss_box_reg"].item() == 0 and losses["loss_box_reg"].requires_grad
    with pytest.raises(ValueError, match="CLS_LOSS_TYPE"):
        _predictor(cls_loss_type="bce")
    with pytest.raises(ValueError, match="BBOX_REG_LOSS_TYPE"):
        _predictor(box_reg_loss_type="l2")


def test_fast_rcnn_inference_nms_per_class_threshold_and_no_100_cap():
    # RoI 0 and 1 overlap heavily; RoI 2 is elsewhere. Two classes.
    boxes = torch.tensor([[0.0, 0, 10, 10], [1.0, 1, 11, 11], [20.0, 20, 30, 30]])
    boxes = boxes.repeat(1, 2)  # same box for both classes
    scores = torch.tensor([[0.9, 0.05, 0.05], [0.8, 0.15, 0.05], [0.02, 0.6, 0.38]])
    (res,), (inds,) = fast_rcnn_inference([boxes], [scores], [(40, 40)], 0.1, 0.5, 500)
    got = sorted(zip(res.pred_classes.tolist(), inds.tolist()))
    assert got == [(0, 0), (1, 1), (1, 2)]  # RoI 1 suppressed in class 0, class 1 kept
    assert (res.scores[:-1] >= res.scores[1:]).all()
    # objectness = 1 - p(background) of each detection's RoI, whatever its class
    fg = {0: 0.95, 1: 0.95, 2: 0.62}
    for r, obj in zip(inds.tolist(), res.objectness.tolist()):
        assert obj == pytest.approx(fg[r])

    # 300 separate boxes: all kept (DETECTIONS_PER_IMAGE defaults to 500, no 100 cap).
    lo = torch.arange(300, dtype=torch.float32)[:, None] * 3
    boxes = torch.cat([lo, torch.zeros(300, 1), lo + 2, torch.full((300, 1), 2.0)], 1)
    scores = torch.stack([torch.linspace(0.9, 0.5, 300), torch.linspace(0.1, 0.5, 300)], 1)
    (res,), _ = fast_rcnn_inference([boxes], [scores], [(10, 1000)], 0.05, 0.5, 500)
    assert len(res) == 300
    (res,), _ = fast_rcnn_inference([boxes], [scores], [(10, 1000)], 0.05, 0.5, 7)
    assert len(res) == 7


@pytest.mark.parametrize("boxes_per_roi", [1, 2])  # class-agnostic, or one box per class
def test_fast_rcnn_inference_without_rois(boxes_per_roi):
    # A volume whose RPN proposes nothing (or only non-finite boxes) gives no detections.
    boxes = torch.zeros((0, 6 * boxes_per_roi))
    scores = torch.zeros((0, 3))
    (res,), (inds,) = fast_rcnn_inference([boxes], [scores], [(8, 40, 40)], 0.05, 0.5, 500)
    assert len(res) == 0 and res.pred_boxes.tensor.shape == (0, 6) and inds.numel() == 0
    nan_boxes = torch.full((2, 6 * boxes_per_roi), float("nan"))
    (res,), _ = fast_rcnn_inference([nan_boxes], [torch.rand(2, 3)], [(8, 40, 40)], 0.05, 0.5, 9)
    assert len(res) == 0


@pytest.mark.parametrize("num_conv,num_fc", [(0, 2), (2, 0), (1, 1)])
def test_box_head_output_shape(num_conv, num_fc):
    cfg = tiny_cfg(3)
    cfg.MODEL.ROI_BOX_HEAD.NUM_CONV = num_conv
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC = num_fc
    cfg.MODEL.ROI_BOX_HEAD.CONV_DIM = 4
    cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = [2, 3, 3]
    head = build_box_head(cfg, ShapeSpec(channels=16))
    out = head(torch.randn(5, 16, 2, 3, 3))
    assert out.shape == (5, head.output_shape.channels)
    assert head.output_shape.channels == (32 if num_fc else 4 * 18)


def test_box_head_takes_the_pooled_size_from_its_input_shape():
    """Shapes travel with the data: the head follows the pooler's size, not POOLER_RESOLUTION."""
    from det3d.config import get_cfg
    from det3d.layers import ShapeSpec
    from det3d.modeling import build_box_head
    from det3d.modeling.roi_heads.box_head import FastRCNNConvFCHead3D

    cfg = get_cfg()
    cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 3  # what a head re-reading the config would use
    cfg.MODEL.ROI_BOX_HEAD.NUM_CONV, cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 0, 1
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 5
    head = build_box_head(cfg, ShapeSpec(channels=4, size=(2, 4, 6)))
    assert head.fc1.in_features == 4 * 2 * 4 * 6
    assert head(torch.zeros(3, 4, 2, 4, 6)).shape == (3, 5)
    with pytest.raises(ValueError, match=r"pooler_resolution \(3, 3, 3\) disagrees .*\(2, 4, 6\)"):
        FastRCNNConvFCHead3D(
            ShapeSpec(channels=4, size=(2, 4, 6)), pooler_resolution=3, conv_dims=[], fc_dims=[5]
        )
    # a head built alone still reads the config
    assert build_box_head(cfg, ShapeSpec(channels=4)).fc1.in_features == 4 * 27


def test_roi_heads_hand_the_pooler_size_to_the_heads():
    from det3d.config import get_cfg
    from det3d.layers import ShapeSpec
    from det3d.modeling.roi_heads import build_roi_heads

    cfg = get_cfg()
    cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = [2, 3, 3]
    shapes = {
        f"p{k}": ShapeSpec(channels=8, stride=(2 ** (k - 1), 2**k, 2**k)) for k in range(2, 6)
    }
    heads = build_roi_heads(cfg, shapes)
    assert heads.box_pooler.output_size == (2, 3, 3)
    assert heads.box_head(torch.zeros(2, 8, 2, 3, 3)).shape[0] == 2


def _mask_branch_setup(ndim, **mask_head_keys):
    """
    Seeded ROI heads of ``tiny_cfg`` with ``ROI_MASK_HEAD`` keys set, random features of one
    image and its gt: (shape, cfg, feats, shapes, heads, targets).
    """
    torch.manual_seed(0)
    shape = (16, 32, 32) if ndim == 3 else (32, 32)
    cfg = tiny_cfg(ndim)
    for key, value in mask_head_keys.items():
        cfg.MODEL.ROI_MASK_HEAD[key] = value
    feats, shapes = _features(ndim, shape)
    heads = build_roi_heads(cfg, shapes)
    targets = [synthetic_input(shape, seed=0)["instances"]]
    return shape, cfg, feats, shapes, heads, targets


def _mask_head_input_in_training(heads, images, feats, targets):
    """One training forward of ``heads``: (the Instances the mask head got, the losses)."""
    heads.train()
    seen = {}
    handle = heads.mask_head.register_forward_hook(lambda m, i, o: seen.update(inst=i[1]))
    _, losses = heads(images, feats, _proposals(targets), targets)
    handle.remove()
    (inst,) = seen["inst"]
    return inst, losses


@pytest.mark.parametrize("ndim", [2, 3])
def test_mask_branch_on_enlarged_boxes(ndim):
    # BOX_EXPAND: the mask branch pools from boxes scaled about their centres; the mask loss
    # crops its targets from those boxes and the detections carry them as pred_mask_boxes.
    from det3d.modeling.postprocessing import expand_boxes
    from det3d.modeling.roi_heads.mask_head import mask_rcnn_loss

    shape, cfg, feats, shapes, heads, targets = _mask_branch_setup(ndim, BOX_EXPAND=1.5)
    images = ImageList(torch.zeros((1, 1) + shape), [shape])
    inst, losses = _mask_head_input_in_training(heads, images, feats, targets)
    want = expand_boxes(inst.proposal_boxes.tensor, 1.5)
    assert torch.allclose(inst.mask_boxes.tensor, want)
    # the loss is the one of targets cropped from the enlarged boxes, not from the proposals
    logits = heads.mask_head.layers(
        heads.mask_pooler([feats[f] for f in heads.mask_in_features], [inst.mask_boxes])
    )
    assert torch.allclose(
        losses["loss_mask"], mask_rcnn_loss(logits, [inst], loss_type="bce"), atol=1e-6
    )
    heads.eval()
    heads.box_predictor.test_score_thresh = 0.0
    with torch.no_grad():
        (p,), _ = heads(images, feats, _proposals(targets))
    assert torch.allclose(p.pred_mask_boxes.tensor, expand_boxes(p.pred_boxes.tensor, 1.5))
    with pytest.raises(ValueError, match="BOX_EXPAND"):
        cfg.MODEL.ROI_MASK_HEAD.BOX_EXPAND = 0.8
        build_roi_heads(cfg, shapes)


@pytest.mark.parametrize("ndim", [2, 3])
def test_mask_boxes_enlarged_at_inference_only(ndim):
    # BOX_EXPAND_TEST: training pools masks from the proposals themselves, inference from the
    # detections' boxes scaled by the test factor; the masks are the head's on those boxes.
    from det3d.modeling.postprocessing import expand_boxes

    shape, cfg, feats, shapes, heads, targets = _mask_branch_setup(ndim, BOX_EXPAND_TEST=1.25)
    images = ImageList(torch.zeros((1, 1) + shape), [shape])
    inst, _ = _mask_head_input_in_training(heads, images, feats, targets)
    assert not inst.has("mask_boxes")  # training: the proposals' own boxes
    heads.eval()
    heads.box_predictor.test_score_thresh = 0.0
    with torch.no_grad():
        (p,), _ = heads(images, feats, _proposals(targets))
        want = expand_boxes(p.pred_boxes.tensor, 1.25)
        assert torch.allclose(p.pred_mask_boxes.tensor, want)
        logits = heads.mask_head.layers(
            heads.mask_pooler([feats[f] for f in heads.mask_in_features], [Boxes(want)])
        )
    classes = p.pred_classes if logits.shape[1] > 1 else torch.zeros_like(p.pred_classes)
    expected = logits[torch.arange(len(p)), classes].sigmoid()
    assert torch.allclose(p.pred_masks.reshape(expected.shape), expected, atol=1e-6)
    for bad in (0.8, -1.0):
        cfg.MODEL.ROI_MASK_HEAD.BOX_EXPAND_TEST = bad
        with pytest.raises(ValueError, match="BOX_EXPAND_TEST must be >= 1.0"):
            build_roi_heads(cfg, shapes)


def test_expand_boxes_about_their_centres():
    from det3d.modeling.postprocessing import expand_boxes

    b = torch.tensor([[0.0, 2, 4, 10, 6, 8]])
    assert torch.equal(expand_boxes(b, 1.5), torch.tensor([[-2.5, 1, 3, 12.5, 7, 9]]))
    assert expand_boxes(b, 1.0) is b


def test_mask_branch_trains_on_a_capped_number_of_foreground_rois():
    torch.manual_seed(0)
    shape = (16, 32, 32)
    cfg = tiny_cfg(3)
    cfg.MODEL.ROI_MASK_HEAD.TRAIN_ROIS_PER_IMAGE = 3
    feats, shapes = _features(3, shape)
    heads = build_roi_heads(cfg, shapes)
    targets = [synthetic_input(shape, seed=0)["instances"]]
    images = ImageList(torch.zeros((1, 1) + shape), [shape])
    heads.train()
    seen = {}
    heads.mask_head.register_forward_hook(lambda m, i, o: seen.update(x=i[0], inst=i[1]))
    heads.mask_train_rois = 0
    heads(images, feats, _proposals(targets), targets)
    assert len(seen["inst"][0]) > 3  # without the cap, more foreground RoIs
    for bias in (0.0, 4.0):  # uniform, and weighted by the overlap with a neighbour
        heads.mask_train_rois, heads.mask_train_neighbor_bias = 3, bias
        _, losses = heads(images, feats, _proposals(targets), targets)
        (inst,) = seen["inst"]
        assert len(inst) == 3 == seen["x"].shape[0]
        assert (inst.gt_classes < cfg.MODEL.ROI_HEADS.NUM_CLASSES).all()
        assert torch.isfinite(losses["loss_mask"])


@pytest.mark.parametrize("ndim", [2, 3])
def test_mask_head_with_image_refinement_gets_each_rois_image(ndim):
    # IMAGE_REFINE_DIM: the ROI heads resample the input image into every mask RoI at the mask
    # resolution (RoIAlign at stride 1), in training and at inference, chunked or not.
    from det3d.layers import roi_align

    shape, _, feats, _, heads, targets = _mask_branch_setup(ndim, IMAGE_REFINE_DIM=4)
    image = torch.randn((1, 1) + shape)
    images = ImageList(image, [shape])
    seen = {}
    heads.mask_head.register_forward_hook(
        lambda m, i, kw, o: seen.update(inst=i[1], image=kw["image"]), with_kwargs=True
    )
    heads.train()
    _, losses = heads(images, feats, _proposals(targets), targets)
    assert torch.isfinite(losses["loss_mask"])
    (inst,) = seen["inst"]
    boxes = inst.proposal_boxes.tensor
    rois = torch.cat([torch.zeros(len(boxes), 1), boxes], dim=1)
    want = roi_align(image, rois, heads.mask_head.image_input_size, 1.0, 0, True)
    torch.testing.assert_close(seen["image"], want)

    heads.eval()
    heads.box_predictor.test_score_thresh = 0.0
    with torch.no_grad():
        (whole,), _ = heads(images, feats, _proposals(targets))
        heads.roi_chunk_size = 2
        (chunked,), _ = heads(images, feats, _proposals(targets))
        with pytest.raises(ValueError, match="without it"):
            heads.forward_with_given_boxes(feats, [whole])
    assert len(whole) > 2
    torch.testing.assert_close(chunked.pred_masks, whole.pred_masks)


def test_neighbor_iou_is_the_iou_with_the_second_most_overlapped_gt_box():
    from det3d.modeling.roi_heads.roi_heads import neighbor_iou

    g = torch.Generator().manual_seed(0)

    def rand_boxes(n, ndim):
        lo = torch.rand(n, ndim, generator=g) * 20
        return Boxes(torch.cat([lo, lo + 1 + torch.rand(n, ndim, generator=g) * 15], 1))

    for ndim in (2, 3):
        boxes, gt = rand_boxes(30, ndim), rand_boxes(4, ndim)
        got = neighbor_iou(boxes, gt)
        for i in range(len(boxes)):  # brute force: sort the RoI's IoUs with each gt box
            ious = sorted((pairwise_iou(boxes[i : i + 1], gt[j : j + 1]).item() for j in range(4)))
            assert got[i].item() == pytest.approx(ious[-2], abs=1e-6)
        assert torch.equal(neighbor_iou(boxes, gt[:1]), torch.zeros(30))
    # a RoI on one object of a touching pair holds part of the other; one on an isolated one none
    gt = Boxes(
        torch.tensor([[0.0, 0, 0, 10, 10, 10], [8.0, 0, 0, 18, 10, 10], [40.0, 40, 40, 50, 50, 50]])
    )
    rois = Boxes(torch.tensor([[0.0, 0, 0, 10, 10, 10], [40.0, 40, 40, 50, 50, 50]]))
    torch.testing.assert_close(neighbor_iou(rois, gt), torch.tensor([2 / 18, 0.0]))


def test_mask_training_rois_drawn_by_neighbour_overlap():
    # TRAIN_ROIS_NEIGHBOR_BIAS: each draw of one RoI picks RoI i with probability w_i / sum(w),
    # w = 1 + bias * neighbor_iou; 0 draws uniformly.
    cfg = tiny_cfg(3)
    cfg.MODEL.ROI_MASK_HEAD.TRAIN_ROIS_PER_IMAGE = 1
    _, shapes = _features(3, (16, 32, 32))
    heads = build_roi_heads(cfg, shapes)
    shape = (64, 64, 64)
    gt = Instances(shape)
    gt.gt_boxes = Boxes(
        torch.tensor([[0.0, 0, 0, 10, 10, 10], [8.0, 0, 0, 18, 10, 10], [40.0, 40, 40, 50, 50, 50]])
    )
    rois = Instances(shape)  # RoI 0 on the touching pair's first object, RoI 1 on the isolated one
    rois.proposal_boxes = Boxes(torch.tensor([[0.0, 0, 0, 10, 10, 10], [40.0, 40, 40, 50, 50, 50]]))
    rois.tag = torch.arange(2)
    for bias, p_touching in ((0.0, 0.5), (36.0, 5.0 / 6.0)):  # w = 1 + 36 * 2 / 18 = 5 against 1
        heads.mask_train_neighbor_bias = bias
        torch.manual_seed(0)
        picks = torch.stack([heads._mask_training_rois(rois, gt).tag for _ in range(4000)])
        assert picks.shape == (4000, 1)
        assert (picks == 0).float().mean().item() == pytest.approx(p_touching, abs=0.025)
    heads.mask_train_rois = 2  # no more RoIs than the cap: all of them, none drawn
    assert heads._mask_training_rois(rois, gt) is rois


@pytest.mark.parametrize(
    "rois, bias, match",
    [
        (4, -1.0, "TRAIN_ROIS_NEIGHBOR_BIAS must be a number >= 0"),
        (0, 2.0, "TRAIN_ROIS_PER_IMAGE RoIs, which is 0"),
    ],
)
def test_mask_train_neighbor_bias_errors(rois, bias, match):
    cfg = tiny_cfg(3)
    cfg.MODEL.ROI_MASK_HEAD.TRAIN_ROIS_PER_IMAGE = rois
    cfg.MODEL.ROI_MASK_HEAD.TRAIN_ROIS_NEIGHBOR_BIAS = bias
    _, shapes = _features(3, (16, 32, 32))
    with pytest.raises(ValueError, match=match):
        build_roi_heads(cfg, shapes)


@pytest.mark.parametrize("bad", [-1, 2.5])
def test_mask_train_rois_must_be_a_whole_count(bad):
    cfg = tiny_cfg(3)
    cfg.MODEL.ROI_MASK_HEAD.TRAIN_ROIS_PER_IMAGE = bad
    _, shapes = _features(3, (16, 32, 32))
    with pytest.raises(ValueError, match=r"TRAIN_ROIS_PER_IMAGE must be an integer >= 0 .*got "):
        build_roi_heads(cfg, shapes)


@pytest.mark.parametrize("ndim", [2, 3])
def test_mask_branch_weighs_other_objects_voxels_in_training(ndim):
    # NEIGHBOR_WEIGHT: every foreground RoI carries the volume's gt objects, and the loss is the
    # one weighing the voxels of objects other than its own
    from det3d.modeling.roi_heads.mask_head import mask_rcnn_loss
    from det3d.structures import BitMasks

    shape, cfg, feats, _, heads, _ = _mask_branch_setup(ndim, NEIGHBOR_WEIGHT=4.0)
    # two objects touching along x; each RoI is its object's box widened by a fifth on both
    # sides in x (box IoU 0.71: foreground), so it holds a slice of the other object
    masks = torch.zeros((2,) + shape, dtype=torch.bool)
    inner = tuple(slice(s // 4, 3 * s // 4) for s in shape[:-1])
    masks[(0,) + inner + (slice(8, 16),)] = True
    masks[(1,) + inner + (slice(16, 24),)] = True
    gt = BitMasks(masks)
    gt_boxes = gt.get_bounding_boxes()
    targets = [Instances(shape, gt_boxes=gt_boxes, gt_classes=torch.tensor([0, 1]), gt_masks=gt)]
    rois = gt_boxes.tensor.clone()
    rois[:, 0] -= 1.6
    rois[:, ndim] += 1.6
    proposals = [Instances(shape, proposal_boxes=Boxes(rois), objectness_logits=torch.zeros(2))]
    images = ImageList(torch.zeros((1, 1) + shape), [shape])
    heads.train()
    heads.proposal_append_gt = False
    seen = {}
    heads.mask_head.register_forward_hook(lambda m, i, o: seen.update(inst=i[1]))
    _, losses = heads(images, feats, proposals, targets)
    (inst,) = seen["inst"]
    assert len(inst) == 2
    assert all(torch.equal(m, masks.any(0)) for m in inst.gt_union_masks.tensor)
    logits = heads.mask_head.layers(
        heads.mask_pooler([feats[f] for f in heads.mask_in_features], [inst.proposal_boxes])
    )
    weighted = mask_rcnn_loss(logits, [inst], loss_type="bce", neighbor_weight=4.0)
    assert torch.allclose(losses["loss_mask"], weighted, atol=1e-6)
    # 1.6 of each RoI's 11.2 voxels in x are the neighbour's: at logits ~ 0 every voxel's BCE is
    # log 2, so the loss is (1 + 3 * 1.6 / 11.2) times the plain one, up to the mask grid's cells
    plain = mask_rcnn_loss(logits, [inst], loss_type="bce")
    assert abs(float(weighted / plain) - (1 + 3 * 1.6 / 11.2)) < 0.06
    # weight 1 (the default): no union is built
    heads.mask_head.neighbor_weight = 1.0
    heads(images, feats, proposals, targets)
    assert not seen["inst"][0].has("gt_union_masks")


@pytest.mark.parametrize("ndim", [2, 3])
def test_mask_branch_with_a_neighbour_branch_gets_every_gt_object(ndim):
    # NEIGHBOR_CONVS: the foreground RoIs carry the volume's gt objects, and the neighbour
    # branch's loss is the one of its logits against them
    from det3d.modeling.roi_heads import neighbor_mask_loss

    shape, _, feats, _, heads, targets = _mask_branch_setup(ndim, NEIGHBOR_CONVS=1)
    images = ImageList(torch.zeros((1, 1) + shape), [shape])
    inst, losses = _mask_head_input_in_training(heads, images, feats, targets)
    assert len(inst) > 0
    union = targets[0].gt_masks.tensor.any(0)
    assert all(torch.equal(m, union) for m in inst.gt_union_masks.tensor)
    pooled = heads.mask_pooler([feats[f] for f in heads.mask_in_features], [inst.proposal_boxes])
    _, logits = heads.mask_head._layers(pooled)
    assert torch.allclose(
        losses["loss_mask_neighbor"], neighbor_mask_loss(logits, [inst]), atol=1e-6
    )
