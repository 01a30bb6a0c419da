"""The box head's IoU estimate (MODEL.ROI_BOX_HEAD.IOU_HEAD) and the label volume's order by it."""

import math

import pytest
import torch
from _rcnn_test_utils import (
    box_predictions_by_hand,
    eval_model,
    single_thread,
    sum_over_flips,
    synthetic_input,
    tiny_cfg,
    twin,
)

from det3d.layers import ShapeSpec
from det3d.modeling import build_model
from det3d.modeling.box_regression import Box2BoxTransform
from det3d.modeling.postprocessing import instances_to_label_volume
from det3d.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers3D
from det3d.structures import Boxes, Instances

SHAPES = {3: (16, 32, 32), 2: (64, 64)}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


def _predictor(predict_iou, ndim=3, num_classes=2):
    return FastRCNNOutputLayers3D(
        ShapeSpec(channels=8),
        box2box_transform=Box2BoxTransform(weights=(10.0,) * ndim + (5.0,) * ndim),
        num_classes=num_classes,
        ndim=ndim,
        predict_iou=predict_iou,
    )


def _sampled_rois():
    """Four RoIs with gt boxes whose IoUs are worked out by hand: 1/3, 1, 0 and 1/8."""
    proposal = [[0, 0, 0, 2, 2, 2], [0, 0, 0, 2, 2, 2], [0, 0, 0, 1, 1, 1], [0, 0, 0, 4, 4, 4]]
    gt = [[1, 0, 0, 3, 2, 2], [0, 0, 0, 2, 2, 2], [5, 5, 5, 6, 6, 6], [0, 0, 0, 2, 2, 2]]
    # overlap 1x2x2 = 4 of 8 + 8 - 4; the same box; disjoint; 8 of 64
    want = torch.tensor([1 / 3, 1.0, 0.0, 1 / 8])
    rois = Instances((8, 8, 8))
    rois.proposal_boxes = Boxes(torch.tensor(proposal, dtype=torch.float32))
    rois.gt_boxes = Boxes(torch.tensor(gt, dtype=torch.float32))
    rois.gt_classes = torch.tensor([0, 1, 2, 0])  # 2 = background
    return rois, want


def test_iou_loss_is_cross_entropy_against_each_rois_iou_with_its_matched_box():
    # At logits equal to logit(IoU) the loss is the mean binary entropy of the IoUs (its minimum)
    # and its gradient vanishes; at other logits it is larger.
    predictor = _predictor(True)
    rois, want = _sampled_rois()
    x = torch.randn(4, 8)
    scores, deltas, _ = predictor(x)
    t = want.clamp(1e-6, 1 - 1e-6)
    logits = torch.log(t / (1 - t)).requires_grad_(True)
    loss = predictor.losses((scores, deltas, logits), [rois])["loss_box_iou"]
    entropy = [-(v * math.log(v) + (1 - v) * math.log(1 - v)) for v in t.tolist()]
    assert loss.item() == pytest.approx(sum(entropy) / 4, abs=1e-5)
    (grad,) = torch.autograd.grad(loss, logits)
    assert grad.abs().max() < 1e-6
    worse = predictor.losses((scores, deltas, torch.zeros(4)), [rois])["loss_box_iou"]
    assert worse.item() > loss.item() + 0.05
    predictor.loss_weight["loss_box_iou"] = 2.0
    doubled = predictor.losses((scores, deltas, logits.detach()), [rois])["loss_box_iou"]
    assert doubled.item() == pytest.approx(2 * loss.item(), rel=1e-5)


def test_without_the_iou_head_the_predictor_is_unchanged():
    rois, _ = _sampled_rois()
    x = torch.randn(4, 8)
    plain = _predictor(False)
    out = plain(x)
    assert len(out) == 2 and not hasattr(plain, "iou_pred")
    assert set(plain.losses(out, [rois])) == {"loss_cls", "loss_box_reg"}
    with pytest.raises(RuntimeError, match="no IoU head"):
        plain.predict_ious(out, [rois])
    with_iou = _predictor(True)
    out = with_iou(x)
    assert len(out) == 3 and out[2].shape == (4,)
    assert set(with_iou.losses(out, [rois])) == {"loss_cls", "loss_box_reg", "loss_box_iou"}
    (ious,) = with_iou.predict_ious(out, [rois])
    torch.testing.assert_close(ious, torch.sigmoid(out[2]))


def _iou_model(ndim, opts=()):
    return eval_model(ndim, ["MODEL.ROI_BOX_HEAD.IOU_HEAD.ENABLED", True, *opts])


def _ious_by_hand(model, images, boxes):
    """sigmoid of the IoU logit of the box branch at ``boxes`` (one image), written out."""
    return torch.sigmoid(box_predictions_by_hand(model, images, boxes)[2])


@pytest.mark.parametrize("ndim", [2, 3])
def test_detections_carry_the_iou_estimate_of_their_final_box(ndim):
    # The estimate is made for the regressed box the detection reports, not for its proposal.
    cfg, model = _iou_model(ndim)
    inputs = [{"image": synthetic_input(SHAPES[ndim])["image"]}]
    training = build_model(cfg)
    training.train()
    batch = [synthetic_input(SHAPES[ndim], seed=s) for s in range(2)]
    assert "loss_box_iou" in training(batch)
    with torch.no_grad():
        (dets,) = model.inference(inputs, do_postprocess=False)
        want = _ious_by_hand(model, model.preprocess_image(inputs), dets.pred_boxes)
    assert len(dets) > 3
    assert ((dets.pred_box_iou >= 0) & (dets.pred_box_iou <= 1)).all()
    torch.testing.assert_close(dets.pred_box_iou, want)
    with torch.no_grad():
        (out,) = model(inputs)
    assert out["instances"].has("pred_box_iou")


def test_flip_objectness_also_averages_the_iou_estimate():
    # With TEST.FLIP_OBJECTNESS each pred_box_iou is the mean of the plain pass's and, for every
    # flip, the estimate on the flipped input in the flipped box. Reference: those passes by hand.
    shape = SHAPES[3]
    axes = (0, 2)
    cfg, model = _iou_model(3, ["TEST.MASK_FLIP_AXES", list(axes), "TEST.FLIP_OBJECTNESS", True])
    plain_cfg = cfg.clone()
    plain_cfg.TEST.MASK_FLIP_AXES = []
    plain_cfg.TEST.FLIP_OBJECTNESS = False
    plain_model = twin(plain_cfg, model)
    inputs = [{"image": synthetic_input(shape)["image"]}]
    with torch.no_grad():
        (plain,) = plain_model.inference(inputs, do_postprocess=False)
        (got,) = model.inference(inputs, do_postprocess=False)
        want = plain.pred_box_iou + sum_over_flips(
            model, inputs[0]["image"], plain.pred_boxes, axes, _ious_by_hand
        )
    assert len(plain) > 0
    torch.testing.assert_close(got.pred_boxes.tensor, plain.pred_boxes.tensor)
    torch.testing.assert_close(got.pred_box_iou, want / 4)
    assert not torch.allclose(got.pred_box_iou, plain.pred_box_iou)


def _touching_pair():
    """
    Two touching objects (x 0-3 and x 4-7 of a (4, 4, 8) volume) and three detections with
    all-one masks: A, confident, spans both (a poor box of either); B and C, each one object.
    """
    inst = Instances((4, 4, 8))
    inst.pred_boxes = Boxes(
        torch.tensor([[0, 0, 0, 8, 4, 4], [0, 0, 0, 4, 4, 4], [4, 0, 0, 8, 4, 4.0]])
    )
    inst.scores = torch.tensor([0.9, 0.8, 0.7])
    inst.objectness = torch.tensor([0.9, 0.8, 0.7])
    inst.pred_box_iou = torch.tensor([0.45, 0.95, 0.9])
    inst.pred_masks = torch.ones(3, 4, 4, 4)
    return inst


def test_the_label_volume_pastes_the_better_box_first():
    inst = _touching_pair()
    # by objectness alone A comes first and holds both objects; B and C are left out
    labels = instances_to_label_volume(inst, (4, 4, 8), 0.5, score_threshold=0.3)
    assert labels.unique().tolist() == [1]
    # by objectness * IoU (0.405, 0.76, 0.63) B and C come first and A is a duplicate
    labels = instances_to_label_volume(inst, (4, 4, 8), 0.5, score_threshold=0.3, iou_power=1.0)
    want = torch.zeros((4, 4, 8), dtype=torch.int32)
    want[..., :4], want[..., 4:] = 2, 3
    assert torch.equal(labels, want)
    # without the field the power changes nothing
    inst.remove("pred_box_iou")
    labels = instances_to_label_volume(inst, (4, 4, 8), 0.5, score_threshold=0.3, iou_power=1.0)
    assert labels.unique().tolist() == [1]
    with pytest.raises(ValueError, match="iou_power must be >= 0"):
        instances_to_label_volume(inst, (4, 4, 8), 0.5, iou_power=-1.0)


def test_the_iou_estimate_orders_but_does_not_admit():
    # Whether a detection enters is its objectness's decision: B with a perfect box but objectness
    # below the threshold stays out; C with a poor box but enough objectness enters.
    inst = _touching_pair()[1:]
    inst.objectness = torch.tensor([0.2, 0.35])
    inst.pred_box_iou = torch.tensor([1.0, 0.1])
    labels = instances_to_label_volume(inst, (4, 4, 8), 0.5, score_threshold=0.3, iou_power=3.0)
    want = torch.zeros((4, 4, 8), dtype=torch.int32)
    want[..., 4:] = 2
    assert torch.equal(labels, want)


def test_bad_settings_are_named():
    cfg = tiny_cfg(3)
    cfg.MODEL.ROI_HEADS.LABELS_IOU_POWER = -0.5
    with pytest.raises(ValueError, match="LABELS_IOU_POWER must be >= 0"):
        build_model(cfg)
    cfg = tiny_cfg(3)
    cfg.MODEL.ROI_HEADS.NAME = "CascadeROIHeads3D"
    cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = True
    cfg.MODEL.ROI_BOX_HEAD.IOU_HEAD.ENABLED = True
    with pytest.raises(ValueError, match="IOU_HEAD.ENABLED: the IoU head is built by"):
        build_model(cfg)
