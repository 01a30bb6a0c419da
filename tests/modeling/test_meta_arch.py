"""GeneralizedRCNN3D and ProposalNetwork3D from configs, in 2D and 3D."""

import itertools

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
from torch.nn import functional as F

import det3d.modeling as modeling
from det3d.modeling import META_ARCH_REGISTRY, build_model
from det3d.modeling.outline_refine import refine_outlines
from det3d.structures import Boxes, Instances

ALL_LOSSES = {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg", "loss_mask"}
SHAPES = {3: (16, 32, 32), 2: (64, 64)}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


def _batch(ndim, n=2):
    return [synthetic_input(SHAPES[ndim], seed=s) for s in range(n)]


def test_package_surface_registers_every_part():
    for name in ["GeneralizedRCNN3D", "ProposalNetwork3D"]:
        assert name in META_ARCH_REGISTRY
    for name in [
        "RPN3D",
        "build_proposal_generator",
        "DefaultAnchorGenerator3D",
        "ROIPooler",
        "StandardROIHeads3D",
        "build_roi_heads",
        "Box2BoxTransform",
        "Matcher",
        "subsample_labels",
        "build_resnet3d_backbone",
        "build_resnet3d_fpn_backbone",
        "FPN",
        "ResNet",
        "Backbone",
        "ShapeSpec",
        "build_backbone",
        "build_model",
    ]:
        assert hasattr(modeling, name), name
    assert "RPN3D" in modeling.PROPOSAL_GENERATOR_REGISTRY
    assert "build_resnet3d_fpn_backbone" in modeling.BACKBONE_REGISTRY


@pytest.mark.parametrize(
    "ndim,cls_loss,box_loss,mask_loss",
    [
        (3, "ce", "smooth_l1", "bce"),
        (3, "focal", "huber", "bce_dice"),
        (3, "ce", "giou", "bce_dice"),
        (2, "focal", "giou", "bce"),
        (2, "ce", "huber", "bce_dice"),
    ],
)
def test_training_losses(ndim, cls_loss, box_loss, mask_loss):
    torch.manual_seed(0)
    cfg = tiny_cfg(ndim)
    cfg.MODEL.ROI_BOX_HEAD.CLS_LOSS_TYPE = cls_loss
    cfg.MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE = box_loss
    cfg.MODEL.ROI_MASK_HEAD.LOSS_TYPE = mask_loss
    model = build_model(cfg)
    model.train()
    losses = model(_batch(ndim))
    assert set(losses) == ALL_LOSSES
    for k, v in losses.items():
        assert v.dim() == 0 and torch.isfinite(v), (k, v)
    sum(losses.values()).backward()
    predictor = model.roi_heads.box_predictor
    assert all(p.grad is not None for p in predictor.parameters())


def _flip_setup(ndim):
    """(cfg with TEST.MASK_FLIP_AXES on the first and last axes, its plain model, inputs, axes)."""
    cfg, model = eval_model(ndim)
    axes = (0, ndim - 1)
    cfg.TEST.MASK_FLIP_AXES = list(axes)
    return cfg, model, [{"image": synthetic_input(SHAPES[ndim])["image"]}], axes


@pytest.mark.parametrize("ndim", [2, 3])
def test_inference_rescales_to_original_size_and_labels(ndim):
    cfg, model = eval_model(ndim)
    shape = SHAPES[ndim]
    original = tuple(2 * s for s in shape)  # as if the mapper had halved the volume
    keys = ("depth", "height", "width")[-ndim:]
    inputs = [dict({"image": synthetic_input(shape)["image"]}, **dict(zip(keys, original)))]
    with torch.no_grad():
        out = model(inputs)
        raw = model.inference(inputs, do_postprocess=False)
    assert len(out) == 1 and set(out[0]) == {"instances", "instance_labels"}
    inst, labels = out[0]["instances"], out[0]["instance_labels"]
    assert inst.image_size == original and labels.shape == original and labels.dtype == torch.int32
    assert len(inst) > 0 and inst.has("pred_masks") and inst.has("pred_classes")
    assert raw[0].image_size == shape and len(raw[0]) >= len(inst)
    assert inst.pred_boxes.tensor.max() > max(shape) / 2  # boxes live on the original grid
    # Every labelled voxel lies inside the box of its instance (row i has label i + 1).
    assert int(labels.max()) <= len(inst)
    for i in torch.unique(labels)[1:].tolist():
        coords = torch.nonzero(labels == i).float()  # array order
        box = inst.pred_boxes.tensor[i - 1]
        lo = box[:ndim].flip(0)
        hi = box[ndim:].flip(0)
        assert (coords + 0.5 >= lo.floor()).all() and (coords + 0.5 <= hi.ceil()).all()


@pytest.mark.parametrize("ndim", [2, 3])
def test_mask_flips_average_the_masks_of_the_flipped_inputs(ndim):
    # TEST.MASK_FLIP_AXES: boxes, scores and classes are the plain pass's; each mask is the mean
    # of the plain mask and, for every combination of the axes, the mask the branch gives on the
    # flipped input in the flipped box, flipped back. Reference: those passes made by hand.
    cfg, model, inputs, axes = _flip_setup(ndim)
    shape = SHAPES[ndim]
    flipping = twin(cfg, model)
    with torch.no_grad():
        (plain,) = model.inference(inputs, do_postprocess=False)
        (got,) = flipping.inference(inputs, do_postprocess=False)
        want = plain.pred_masks.clone()
        for flip in [(axes[0],), (axes[1],), axes]:
            dims = [1 + a for a in flip]
            images = model.preprocess_image([{"image": inputs[0]["image"].flip(dims)}])
            given = Instances(
                plain.image_size,
                pred_boxes=plain.pred_boxes.flipped(flip, shape),
                pred_classes=plain.pred_classes,
            )
            features = model.backbone(images.tensor)
            (m,) = model.roi_heads.forward_with_given_boxes(features, [given], images)
            want += m.pred_masks.flip(dims)
    assert len(plain) > 0
    torch.testing.assert_close(got.pred_boxes.tensor, plain.pred_boxes.tensor)
    torch.testing.assert_close(got.scores, plain.scores)
    torch.testing.assert_close(got.pred_masks, want / 4)
    assert not torch.allclose(got.pred_masks, plain.pred_masks)
    cfg.TEST.MASK_FLIP_AXES = [0, 0]
    with pytest.raises(ValueError, match="MASK_FLIP_AXES"):
        build_model(cfg)
    cfg.TEST.MASK_FLIP_AXES = [ndim]
    with pytest.raises(ValueError, match="MASK_FLIP_AXES"):
        build_model(cfg)


def _objectness_by_hand(model, images, boxes):
    """1 - p(background) of the box branch at ``boxes`` (one image), written out."""
    logits = box_predictions_by_hand(model, images, boxes)[0]
    return 1.0 - torch.softmax(logits, dim=-1)[:, -1]


@pytest.mark.parametrize("ndim", [2, 3])
def test_box_objectness_is_the_objectness_of_the_detections_rois(ndim):
    # The objectness of a detection is its RoI's: box_objectness at the RoIs the detections came
    # from gives it back, for a batch of two, in one chunk or in chunks of 3 RoIs.
    cfg, model = eval_model(ndim)
    images = model.preprocess_image(_batch(ndim))
    heads = model.roi_heads
    with torch.no_grad():
        features = model.backbone(images.tensor)
        proposals, _ = model.proposal_generator(images, features, None)
        pooled = heads.box_pooler(
            [features[f] for f in heads.box_in_features], [p.proposal_boxes for p in proposals]
        )
        predictions = heads.box_predictor(heads.box_head(pooled))
        dets, rois = heads.box_predictor.inference(predictions, proposals)
        boxes = [p.proposal_boxes[r] for p, r in zip(proposals, rois)]
        got = heads.box_objectness(features, boxes)
        heads.roi_chunk_size = 3
        chunked = heads.box_objectness(features, boxes)
    assert min(len(d) for d in dets) > 3
    for g, c, d in zip(got, chunked, dets):
        torch.testing.assert_close(g, d.objectness)
        torch.testing.assert_close(c, d.objectness)


@pytest.mark.parametrize("ndim", [2, 3])
def test_flip_objectness_averages_the_flipped_boxes_objectness(ndim):
    # TEST.FLIP_OBJECTNESS: boxes, scores, classes and masks are those of MASK_FLIP_AXES alone;
    # each objectness is the mean of the plain pass's and, for every combination of the axes, the
    # box branch's on the flipped input in the flipped box. Reference: those passes by hand.
    cfg, model, inputs, axes = _flip_setup(ndim)
    masks_only = twin(cfg, model)
    cfg.TEST.FLIP_OBJECTNESS = True
    flipping = twin(cfg, model)
    with torch.no_grad():
        (plain,) = masks_only.inference(inputs, do_postprocess=False)
        (got,) = flipping.inference(inputs, do_postprocess=False)
        want = plain.objectness + sum_over_flips(
            model, inputs[0]["image"], plain.pred_boxes, axes, _objectness_by_hand
        )
    assert len(plain) > 0
    for field in ("scores", "pred_classes", "pred_masks"):
        torch.testing.assert_close(got.get(field), plain.get(field))
    torch.testing.assert_close(got.pred_boxes.tensor, plain.pred_boxes.tensor)
    torch.testing.assert_close(got.objectness, want / 4)
    assert not torch.allclose(got.objectness, plain.objectness)
    cfg.TEST.MASK_FLIP_AXES = []
    with pytest.raises(ValueError, match="TEST.FLIP_OBJECTNESS averages over TEST.MASK_FLIP_AXES"):
        build_model(cfg)


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("flip_axes", [None, ()])
def test_transposed_passes_join_the_test_time_averages(ndim, flip_axes):
    # TEST.TRANSPOSE_XY: every pass of MASK_FLIP_AXES (the plain one too) runs again on the input
    # with x and y swapped; masks and objectness are the means over all passes, each view's
    # mask transposed, then flipped back. Reference: those passes by hand.
    cfg, model, inputs, axes = _flip_setup(ndim)
    axes = axes if flip_axes is None else flip_axes
    cfg.TEST.MASK_FLIP_AXES = list(axes)
    cfg.TEST.FLIP_OBJECTNESS = True
    cfg.TEST.TRANSPOSE_XY = True
    shape = SHAPES[ndim]
    averaging = twin(cfg, model)
    flips = [()] + [c for k in range(1, len(axes) + 1) for c in itertools.combinations(axes, k)]
    with torch.no_grad():
        (plain,) = model.inference(inputs, do_postprocess=False)
        (got,) = averaging.inference(inputs, do_postprocess=False)
        masks, objectness = plain.pred_masks.clone(), plain.objectness.clone()
        for transpose in (False, True):
            for flip in flips[0 if transpose else 1 :]:
                dims = [1 + a for a in flip]
                image = inputs[0]["image"].flip(dims) if dims else inputs[0]["image"]
                image = image.transpose(-1, -2) if transpose else image
                images = model.preprocess_image([{"image": image}])
                boxes = plain.pred_boxes.flipped(flip, shape)
                # x and y of the boxes swapped, written out
                if transpose:
                    t = boxes.tensor.clone()
                    t[:, [0, 1, ndim, ndim + 1]] = boxes.tensor[:, [1, 0, ndim + 1, ndim]]
                    boxes = Boxes(t)
                given = Instances(
                    tuple(image.shape[1:]), pred_boxes=boxes, pred_classes=plain.pred_classes
                )
                features = model.backbone(images.tensor)
                (m,) = model.roi_heads.forward_with_given_boxes(features, [given], images)
                m = m.pred_masks.transpose(-1, -2) if transpose else m.pred_masks
                masks += m.flip(dims) if dims else m
                objectness += _objectness_by_hand(model, images, boxes)
    n = 2 * len(flips)
    assert len(plain) > 0
    torch.testing.assert_close(got.pred_boxes.tensor, plain.pred_boxes.tensor)
    torch.testing.assert_close(got.scores, plain.scores)
    torch.testing.assert_close(got.pred_masks, masks / n)
    torch.testing.assert_close(got.objectness, objectness / n)
    assert not torch.allclose(got.pred_masks, plain.pred_masks)


def test_transposed_passes_need_a_mask_grid_as_fine_in_x_as_in_y():
    cfg, _ = eval_model(3)
    cfg.TEST.TRANSPOSE_XY = True
    cfg.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION = [2, 4, 3]
    with pytest.raises(ValueError, match=r"TEST.TRANSPOSE_XY .* mask grid \(2, 4, 3\)"):
        build_model(cfg)


@pytest.mark.parametrize("resampled", [False, True])
def test_outline_refine_redraws_the_label_volume_from_the_input(resampled):
    # TEST.OUTLINE_REFINE: "instance_labels" are the plain model's, refined on the input channel
    # (brought to the labels' grid where the mapper resampled the volume); instances unchanged
    cfg, model = eval_model(3)
    cfg.TEST.OUTLINE_REFINE.ENABLED = True
    cfg.TEST.OUTLINE_REFINE.SIGMA = [0.5, 1.0, 1.0]
    cfg.TEST.OUTLINE_REFINE.GROW = 2
    refined = twin(cfg, model)
    image = synthetic_input(SHAPES[3])["image"]
    inputs = [{"image": image}]
    if resampled:
        inputs[0].update(depth=24, height=40, width=40)
    with torch.no_grad():
        plain, out = model(inputs)[0], refined(inputs)[0]
    channel = image[0]
    if resampled:
        channel = F.interpolate(channel[None, None], (24, 40, 40), mode="trilinear")[0, 0]
    expected = refine_outlines(plain["instance_labels"], channel, [0.5, 1.0, 1.0], 0.5, 2, (2, 5))
    assert not torch.equal(expected, plain["instance_labels"])  # the refinement did something
    assert torch.equal(out["instance_labels"], expected)
    assert torch.equal(out["instances"].pred_masks, plain["instances"].pred_masks)


def test_outline_refine_bad_keys_are_named():
    cfg, _ = eval_model(3)
    cfg.TEST.OUTLINE_REFINE.ENABLED = True
    cfg.TEST.OUTLINE_REFINE.CHANNEL = 1
    with pytest.raises(ValueError, match="TEST.OUTLINE_REFINE.CHANNEL 1 .* 1 input channels"):
        build_model(cfg)
    cfg.TEST.OUTLINE_REFINE.CHANNEL = 0
    cfg.TEST.OUTLINE_REFINE.SIGMA = [1.0, 1.0]
    with pytest.raises(ValueError, match="TEST.OUTLINE_REFINE.SIGMA"):
        build_model(cfg)


def test_brightness_split_runs_on_the_pasted_label_volume():
    # TEST.BRIGHTNESS_SPLIT: "instance_labels" are the plain model's, split by
    # split_by_brightness on the input channel with the model's instances and mask threshold
    from det3d.modeling.brightness_split import split_by_brightness

    cfg, model = eval_model(3)
    cfg.TEST.BRIGHTNESS_SPLIT.ENABLED = True
    # any left-out detection mostly inside one instance splits it, so the wiring is seen
    cfg.TEST.BRIGHTNESS_SPLIT.MIN_EFFECT = 0.0
    cfg.TEST.BRIGHTNESS_SPLIT.MIN_T = 0.0
    cfg.TEST.BRIGHTNESS_SPLIT.MIN_OBJECTNESS = 0.0
    cfg.TEST.BRIGHTNESS_SPLIT.EROSION = 0
    split = twin(cfg, model)
    image = synthetic_input(SHAPES[3])["image"]
    with torch.no_grad():
        plain, out = model([{"image": image}])[0], split([{"image": image}])[0]
    expected, splits = split_by_brightness(
        plain["instance_labels"],
        image[0],
        plain["instances"],
        mask_threshold=cfg.MODEL.ROI_MASK_HEAD.MASK_THRESHOLD,
        min_effect=0.0,
        min_t=0.0,
        min_objectness=0.0,
        erosion=0,
    )
    assert splits  # the split did something
    assert torch.equal(out["instance_labels"], expected)
    assert torch.equal(out["instances"].pred_masks, plain["instances"].pred_masks)
    cfg.TEST.BRIGHTNESS_SPLIT.CHANNEL = 1
    with pytest.raises(ValueError, match="TEST.BRIGHTNESS_SPLIT.CHANNEL 1 .* 1 input channels"):
        build_model(cfg)
    cfg.TEST.BRIGHTNESS_SPLIT.CHANNEL = 0
    cfg.TEST.BRIGHTNESS_SPLIT.EROSION = -1
    with pytest.raises(ValueError, match="TEST.BRIGHTNESS_SPLIT.EROSION"):
        build_model(cfg)


def test_multichannel_input_and_pixel_buffers():
    cfg = tiny_cfg(3)
    cfg.MODEL.PIXEL_MEAN = [0.5, 0.1]
    cfg.MODEL.PIXEL_STD = [0.25, 0.2]
    model = build_model(cfg)
    assert model.pixel_mean.shape == (2, 1, 1, 1) and model.pixel_std.shape == (2, 1, 1, 1)
    assert "pixel_mean" not in model.state_dict()
    batch = _batch(3)
    for b in batch:
        b["image"] = torch.cat([b["image"], b["image"] * 0.5])
    model.train()
    assert set(model(batch)) == ALL_LOSSES
    with pytest.raises(ValueError, match=r"\(1, 16, 32, 32\)"):
        model([synthetic_input((16, 32, 32))])
    bad = synthetic_input((16, 32, 32))
    bad["image"] = torch.cat([bad["image"], bad["image"]])
    bad["image"][1, 3, 4, 5] = float("nan")
    bad["file_name"] = "vol_007.tif"
    with pytest.raises(ValueError, match="vol_007.tif.*NaN"):
        model([bad])


def test_mask_off_and_proposal_network():
    torch.manual_seed(0)
    cfg = tiny_cfg(3)
    cfg.MODEL.MASK_ON = False
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.MODEL.ROI_HEADS.LABELS_SCORE_THRESH_TEST = 0.0
    model = build_model(cfg)
    model.train()
    assert set(model(_batch(3))) == ALL_LOSSES - {"loss_mask"}
    model.eval()
    with torch.no_grad():
        out = model([{"image": _batch(3, 1)[0]["image"]}])[0]
    assert not out["instances"].has("pred_masks")
    assert out["instance_labels"].max() > 0  # box regions are pasted

    cfg = tiny_cfg(3)
    cfg.MODEL.META_ARCHITECTURE = "ProposalNetwork3D"
    rpn = build_model(cfg)
    rpn.train()
    assert set(rpn(_batch(3))) == {"loss_rpn_cls", "loss_rpn_loc"}
    rpn.eval()
    with torch.no_grad():
        out = rpn([{"image": _batch(3, 1)[0]["image"], "depth": 32, "height": 64, "width": 64}])
    props = out[0]["proposals"]
    assert props.image_size == (32, 64, 64) and len(props) > 0
    assert props.has("proposal_boxes") and props.has("objectness_logits")
    # Same parameter names as the full model, so stage checkpoints transfer.
    full = build_model(tiny_cfg(3)).state_dict()
    assert set(rpn.state_dict()) == {k for k in full if not k.startswith("roi_heads.")}


def test_training_statistics_go_to_the_event_storage():
    from det3d.utils.events import EventStorage

    torch.manual_seed(0)
    model = build_model(tiny_cfg(3))
    model.train()
    with EventStorage(0) as storage:
        model(_batch(3))
        logged = set(storage.histories())
    assert {
        "roi_head/num_fg_samples",
        "roi_head/num_bg_samples",
        "fast_rcnn/cls_accuracy",
        "fast_rcnn/fg_cls_accuracy",
        "mask_rcnn/dice",
    } <= logged


def test_proposal_network_2d():
    cfg = tiny_cfg(2)
    cfg.MODEL.META_ARCHITECTURE = "ProposalNetwork3D"
    model = build_model(cfg)
    model.train()
    assert set(model(_batch(2))) == {"loss_rpn_cls", "loss_rpn_loc"}
    model.eval()
    with torch.no_grad():
        out = model([{"image": _batch(2, 1)[0]["image"], "height": 32, "width": 32}])
    assert out[0]["proposals"].image_size == (32, 32)
