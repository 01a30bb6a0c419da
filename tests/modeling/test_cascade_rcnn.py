"""CascadeROIHeads3D: stages, their labels, their inference, and its config errors."""

import pytest
import torch
from _rcnn_test_utils import single_thread, synthetic_input, tiny_cfg
from test_roi_heads import _features, _proposals
from torch.nn import functional as F

from det3d.modeling import ROI_HEADS_REGISTRY, build_model, build_roi_heads
from det3d.modeling.roi_heads import fast_rcnn_inference
from det3d.modeling.roi_heads.cascade_rcnn import _ScaleGradient
from det3d.structures import Boxes, ImageList, pairwise_iou


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


def _cascade_cfg(ndim=3, ious=(0.5, 0.6, 0.7)):
    cfg = tiny_cfg(ndim)
    cfg.MODEL.ROI_HEADS.NAME = "CascadeROIHeads3D"
    cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = True
    cfg.MODEL.ROI_BOX_CASCADE_HEAD.IOUS = list(ious)
    base = [10.0, 10.0, 10.0, 5.0, 5.0, 5.0]
    cfg.MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS = [
        [w * (k + 1) for w in base] for k in range(len(ious))
    ]
    return cfg


def _setup(ndim=3, seed=0, **kw):
    torch.manual_seed(seed)
    shape = (16, 32, 32) if ndim == 3 else (32, 32)
    cfg = _cascade_cfg(ndim, **kw)
    feats, shapes = _features(ndim, shape)
    heads = build_roi_heads(cfg, shapes)
    targets = [synthetic_input(shape, seed=seed)["instances"]]
    images = ImageList(torch.zeros((1, 1) + shape), [shape])
    return cfg, heads, feats, targets, images


@pytest.mark.parametrize("ndim", [2, 3])
def test_cascade_trains_every_stage_and_infers(ndim):
    cfg, heads, feats, targets, images = _setup(ndim)
    assert type(heads).__name__ == "CascadeROIHeads3D" and "CascadeROIHeads3D" in ROI_HEADS_REGISTRY
    assert heads.num_cascade_stages == 3
    heads.train()
    _, losses = heads(images, feats, _proposals(targets), targets)
    want = {f"{n}_stage{k}" for n in ("loss_cls", "loss_box_reg") for k in range(3)}
    assert set(losses) == want | {"loss_mask"}
    assert all(torch.isfinite(v) and v.requires_grad for v in losses.values())
    sum(losses.values()).backward()
    for k in range(3):
        assert heads.box_predictor[k].cls_score.weight.grad.abs().sum() > 0
        assert heads.box_predictor[k].bbox_pred.weight.grad.abs().sum() > 0
    # class-agnostic regression: one box per RoI
    assert heads.box_predictor[0].bbox_pred.out_features == 2 * ndim

    heads.eval()
    for p in heads.box_predictor:
        p.test_score_thresh = 0.0
    with torch.no_grad():
        pred, extra = heads(images, feats, _proposals(targets))
    p = pred[0]
    assert extra == {} and len(p) > 0
    assert p.pred_boxes.tensor.shape[1] == 2 * ndim
    assert p.has("objectness") and p.has("pred_masks")
    assert (p.scores[:-1] >= p.scores[1:]).all()


def test_later_stages_label_their_boxes_at_their_own_iou():
    cfg, heads, feats, targets, images = _setup(3, seed=1)
    heads.train()
    t = targets[0]
    g = torch.Generator().manual_seed(5)
    # boxes around the gt boxes at every IoU from about 0.2 to 1, and some far away
    gt = t.gt_boxes.tensor.repeat(20, 1)
    boxes = gt + torch.randn(gt.shape, generator=g) * torch.linspace(0, 4, len(gt))[:, None]
    boxes = torch.cat([boxes, torch.tensor([[0.0, 0.0, 0.0, 3.0, 3.0, 3.0]])])
    for k, thr in enumerate((0.5, 0.6, 0.7)):
        props = [t.__class__(t.image_size, proposal_boxes=Boxes(boxes.clone()))]
        labelled = heads._match_and_label(props, k, targets)[0]
        iou = pairwise_iou(t.gt_boxes, Boxes(boxes))
        best, idx = iou.max(dim=0)
        for i in range(len(boxes)):  # the reference: each box against its best gt box
            if best[i] >= thr:
                assert int(labelled.gt_classes[i]) == int(t.gt_classes[idx[i]])
                assert torch.equal(labelled.gt_boxes.tensor[i], t.gt_boxes.tensor[idx[i]])
            else:
                assert int(labelled.gt_classes[i]) == cfg.MODEL.ROI_HEADS.NUM_CLASSES
        fg = labelled.gt_classes < cfg.MODEL.ROI_HEADS.NUM_CLASSES
        assert int(fg.sum()) == int((best >= thr).sum()) > 0


def test_cascade_inference_averages_the_stages_and_keeps_the_last_boxes():
    cfg, heads, feats, targets, images = _setup(3, seed=2)
    heads.eval()
    proposals = _proposals(targets)
    shape = proposals[0].image_size
    # the reference, by hand: each stage pools the previous stage's clipped boxes
    boxes = proposals[0].proposal_boxes.tensor
    levels = [feats[f] for f in heads.box_in_features]
    probs = []
    with torch.no_grad():
        for k in range(3):
            x = heads.box_head[k](heads.box_pooler(levels, [Boxes(boxes)]))
            logits, deltas = heads.box_predictor[k](x)
            probs.append(F.softmax(logits, dim=-1))
            decoded = Boxes(heads.box_predictor[k].box2box_transform.apply_deltas(deltas, boxes))
            decoded.clip(shape)
            boxes = decoded.tensor
        last = heads.box_predictor[2]
        want, _ = fast_rcnn_inference(
            [boxes], [sum(probs) / 3], [shape], last.test_score_thresh, last.test_nms_thresh, 100
        )
        got = heads._forward_box(feats, proposals)
    assert len(got[0]) == len(want[0]) > 0
    assert torch.allclose(got[0].pred_boxes.tensor, want[0].pred_boxes.tensor, atol=1e-4)
    assert torch.allclose(got[0].scores, want[0].scores, atol=1e-5)
    assert torch.allclose(got[0].objectness, want[0].objectness, atol=1e-5)
    # the same boxes scored again: every stage's probabilities on them, averaged
    given = [got[0].pred_boxes]
    with torch.no_grad():
        obj = heads.box_objectness(feats, given)[0]
        ref = 0
        for k in range(3):
            logits, _ = heads.box_predictor[k](heads.box_head[k](heads.box_pooler(levels, given)))
            ref = ref + F.softmax(logits, dim=-1)[:, -1] / 3
    assert torch.allclose(obj, 1 - ref, atol=1e-5)


def test_one_stage_cascade_is_the_standard_heads():
    """A cascade of one stage, with the standard heads' weights, gives their losses and output."""
    cfg, cascade, feats, targets, images = _setup(3, seed=3, ious=(0.5,))
    std_cfg = tiny_cfg(3)
    std_cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = True
    std_cfg.MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS = [10.0, 10.0, 10.0, 5.0, 5.0, 5.0]
    _, shapes = _features(3, (16, 32, 32))
    std = build_roi_heads(std_cfg, shapes)
    state = {
        k.replace("box_head.0.", "box_head.").replace("box_predictor.0.", "box_predictor."): v
        for k, v in cascade.state_dict().items()
    }
    std.load_state_dict(state)
    for heads in (std, cascade):
        heads.train()
    torch.manual_seed(7)
    _, l_std = std(images, feats, _proposals(targets), targets)
    torch.manual_seed(7)
    _, l_cas = cascade(images, feats, _proposals(targets), targets)
    for name in ("loss_cls", "loss_box_reg"):
        assert torch.allclose(l_std[name], l_cas[f"{name}_stage0"], atol=1e-6)
    assert torch.allclose(l_std["loss_mask"], l_cas["loss_mask"], atol=1e-6)
    for heads in (std, cascade):
        heads.eval()
    with torch.no_grad():
        a = std(images, feats, _proposals(targets))[0][0]
        b = cascade(images, feats, _proposals(targets))[0][0]
    assert len(a) == len(b) > 0
    assert torch.allclose(a.pred_boxes.tensor, b.pred_boxes.tensor, atol=1e-5)
    assert torch.allclose(a.scores, b.scores, atol=1e-6)
    assert torch.allclose(a.pred_masks, b.pred_masks, atol=1e-6)


def test_stages_share_the_pooled_features_gradient():
    x = torch.ones(3, requires_grad=True)
    (_ScaleGradient.apply(x, 1 / 3) * torch.tensor([3.0, 6.0, 9.0])).sum().backward()
    assert torch.allclose(x.grad, torch.tensor([1.0, 2.0, 3.0]))


def test_cascade_model_with_flipped_objectness_and_chunks():
    cfg = _cascade_cfg(3)
    cfg.TEST.MASK_FLIP_AXES = [2]
    cfg.TEST.FLIP_OBJECTNESS = True
    cfg.TEST.ROI_CHUNK_SIZE = 7
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    inputs = [synthetic_input((16, 32, 32), seed=4)]
    with torch.no_grad():
        out = model(inputs)[0]
        model.roi_heads.roi_chunk_size = 0
        whole = model(inputs)[0]
    assert out["instance_labels"].shape == (16, 32, 32)
    assert torch.allclose(out["instances"].objectness, whole["instances"].objectness, atol=1e-5)


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", False, "CLS_AGNOSTIC_BBOX_REG"),
        ("MODEL.ROI_BOX_CASCADE_HEAD.IOUS", [0.5, 0.6], "IOUS"),
        ("MODEL.ROI_BOX_CASCADE_HEAD.IOUS", [0.5, 0.6, 1.2], "IOUS"),
        ("MODEL.ROI_BOX_HEAD.TRAIN_ON_PRED_BOXES", True, "TRAIN_ON_PRED_BOXES"),
    ],
)
def test_cascade_config_errors_name_the_key(key, value, match):
    cfg = _cascade_cfg(3)
    cfg.merge_from_list([key, value])
    _, shapes = _features(3, (16, 32, 32))
    with pytest.raises(ValueError, match=match):
        build_roi_heads(cfg, shapes)


def test_slice_fusion_model_takes_cascade_heads():
    """The 2.5D model builds its 2D ROI heads from the same keys: a cascade there works too."""
    from test_slice_fusion import _cfg as slice_cfg

    cfg = slice_cfg()
    cfg.MODEL.ROI_HEADS.NAME = "CascadeROIHeads3D"
    cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = True
    torch.manual_seed(0)
    model = build_model(cfg)
    assert type(model.roi_heads).__name__ == "CascadeROIHeads3D"
    assert model.roi_heads.box_predictor[2].bbox_pred.out_features == 4  # 2D boxes
    volume = synthetic_input((6, 32, 32), seed=1, num_objects=2)
    model.train()
    losses = model([volume])
    assert {"loss_cls_stage0", "loss_box_reg_stage2", "loss_mask"} <= set(losses)
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        (out,) = model([{"image": volume["image"], "depth": 6, "height": 32, "width": 32}])
    assert out["instance_labels"].shape == (6, 32, 32)
    assert out["instances"].pred_boxes.tensor.shape[1] == 6


def test_cascade_on_a_volume_without_objects_and_without_proposals():
    cfg, heads, feats, targets, images = _setup(3, seed=5)
    shape = images.image_sizes[0]
    empty = targets[0][torch.zeros(0, dtype=torch.int64)]
    heads.train()
    # a volume without objects: every later stage's box is background
    sampled = heads.label_and_sample_proposals(_proposals([empty]), [empty])
    stage0 = heads._stage(feats, sampled, 0)
    nxt = heads._match_and_label(heads._next_proposals((stage0, sampled), 0), 1, [empty])[0]
    assert len(nxt) > 0 and (nxt.gt_classes == cfg.MODEL.ROI_HEADS.NUM_CLASSES).all()
    assert nxt.gt_boxes.tensor.shape == (len(nxt), 6)
    _, losses = heads(images, feats, _proposals([empty]), [empty])
    assert all(torch.isfinite(v) for v in losses.values())
    assert float(losses["loss_box_reg_stage2"].detach()) == 0.0
    heads.eval()
    none = [p[torch.zeros(0, dtype=torch.int64)] for p in _proposals(targets)]
    with torch.no_grad():
        pred, _ = heads(images, feats, none)
    assert len(pred[0]) == 0 and pred[0].image_size == shape
