"""MaskRCNNConvUpsampleHead3D: shapes, losses (bce, bce_dice) against manual values, inference."""

import pytest
import torch
from _rcnn_test_utils import tiny_cfg
from torch.nn import functional as F

from det3d.layers import ShapeSpec
from det3d.modeling import ROI_MASK_HEAD_REGISTRY
from det3d.modeling.roi_heads import build_mask_head, mask_rcnn_inference, mask_rcnn_loss
from det3d.structures import Boxes, Instances
from det3d.structures.masks import BitMasks


@pytest.mark.parametrize("agnostic", [False, True])
@pytest.mark.parametrize("ndim", [2, 3])
def test_head_output_is_twice_the_pooled_size(ndim, agnostic):
    cfg = tiny_cfg(ndim)
    cfg.MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK = agnostic
    cfg.MODEL.ROI_MASK_HEAD.NUM_CONV = 2
    cfg.MODEL.ROI_MASK_HEAD.NORM = "GN"
    assert "MaskRCNNConvUpsampleHead3D" in ROI_MASK_HEAD_REGISTRY
    head = build_mask_head(cfg, ShapeSpec(channels=16))
    pooled = (2, 3, 4)[-ndim:]
    logits = head.layers(torch.randn((5, 16) + pooled))
    assert logits.shape == (5, 1 if agnostic else 2) + tuple(2 * p for p in pooled)


def _instances(ndim=3):
    """Two foreground RoIs on a cube mask: one exactly on it, one shifted off by half."""
    shape = (8,) * ndim
    m = torch.zeros((2,) + shape, dtype=torch.bool)
    m[(slice(None),) + (slice(2, 6),) * ndim] = True
    boxes = torch.tensor([[2.0] * ndim + [6.0] * ndim, [4.0] * ndim + [8.0] * ndim])
    inst = Instances(shape, proposal_boxes=Boxes(boxes), gt_classes=torch.tensor([1, 0]))
    inst.gt_masks = BitMasks(m)
    return inst


@pytest.mark.parametrize("loss_type", ["bce", "bce_dice"])
def test_mask_loss_matches_manual(loss_type):
    inst = _instances()
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 2, 4, 4, 4, generator=g)
    loss = mask_rcnn_loss(logits, [inst], loss_type, bce_weight=0.2, dice_weight=0.8)

    target = torch.zeros(2, 4, 4, 4)
    target[0] = 1.0  # the RoI on the cube sees only cube voxels
    target[1, :2, :2, :2] = 1.0  # the shifted RoI overlaps the cube in its first half per axis
    chosen = torch.stack([logits[0, 1], logits[1, 0]])  # the gt class channel of each RoI
    bce = F.binary_cross_entropy_with_logits(chosen, target)
    if loss_type == "bce":
        expected = bce
    else:
        p = chosen.sigmoid().flatten(1)
        t = target.flatten(1)
        dice = (1 - (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)).mean()
        expected = 0.2 * bce + 0.8 * dice
    torch.testing.assert_close(loss, expected)


def test_mask_loss_empty_and_head_forward_keys():
    cfg = tiny_cfg(3)
    cfg.MODEL.ROI_MASK_HEAD.LOSS_TYPE = "bce_dice"
    cfg.MODEL.ROI_MASK_HEAD.LOSS_WEIGHT = 3.0
    head = build_mask_head(cfg, ShapeSpec(channels=16))
    head.train()
    x = torch.randn(2, 16, 4, 4, 4)
    inst = _instances()
    out = head(x, [inst])
    assert set(out) == {"loss_mask"} and torch.isfinite(out["loss_mask"])
    manual = 3.0 * mask_rcnn_loss(head.layers(x), [inst], "bce_dice", 1.0, 1.0)
    torch.testing.assert_close(out["loss_mask"], manual)

    empty = head(x[:0], [inst[:0]])
    assert empty["loss_mask"].item() == 0 and empty["loss_mask"].requires_grad
    with pytest.raises(ValueError, match="LOSS_TYPE"):
        cfg.MODEL.ROI_MASK_HEAD.LOSS_TYPE = "focal"
        build_mask_head(cfg, ShapeSpec(channels=16))


def test_mask_inference_takes_predicted_class():
    logits = torch.randn(3, 2, 4, 4)
    a = Instances((8, 8), pred_classes=torch.tensor([1, 0]))
    b = Instances((8, 8), pred_classes=torch.tensor([1]))
    mask_rcnn_inference(logits, [a, b])
    torch.testing.assert_close(a.pred_masks, torch.stack([logits[0, 1], logits[1, 0]]).sigmoid())
    torch.testing.assert_close(b.pred_masks, logits[2:, 1].sigmoid())
    c = Instances((8, 8), pred_classes=torch.zeros(0, dtype=torch.int64))
    mask_rcnn_inference(logits[:0], [c])
    assert c.pred_masks.shape == (0, 4, 4)


@pytest.mark.parametrize("ndim", [2, 3])
def test_image_refinement_sees_the_roi_image(ndim):
    torch.manual_seed(0)
    cfg = tiny_cfg(ndim)
    cfg.MODEL.ROI_MASK_HEAD.IMAGE_REFINE_DIM = 4
    pooled = (2, 3, 4)[-ndim:]
    head = build_mask_head(cfg, ShapeSpec(channels=16, size=pooled))
    out = tuple(2 * p for p in pooled)
    assert head.image_input_size == out
    x = torch.randn((3, 16) + pooled)
    image = torch.randn((3, 1) + out)
    logits = head.layers(x, image)
    assert logits.shape == (3, 2) + out
    # the logits follow the image: a changed voxel changes the logits around it, not far away
    changed = image.clone()
    changed[(0, 0) + (0,) * ndim] += 5.0
    diff = (head.layers(x, changed) - logits).abs()
    assert diff[0].amax() > 1e-6 and diff[1:].amax() == 0
    # two 3-wide convs reach 2 voxels from the changed one
    assert diff[(0, slice(None)) + (slice(3, None),) * ndim].amax() == 0
    with pytest.raises(ValueError, match="no RoI image"):
        head.layers(x)
    with pytest.raises(ValueError, match="channels"):
        head.layers(x, torch.randn((3, 2) + out))
    with pytest.raises(ValueError, match="does not match"):
        head.layers(x, torch.randn((3, 1) + pooled))
    # without refinement the head is Detectron2's and needs no image
    cfg.MODEL.ROI_MASK_HEAD.IMAGE_REFINE_DIM = 0
    plain = build_mask_head(cfg, ShapeSpec(channels=16, size=pooled))
    assert plain.image_input_size is None and not hasattr(plain, "image_reduce")
    cfg.MODEL.ROI_MASK_HEAD.IMAGE_REFINE_DIM = -1
    with pytest.raises(ValueError, match="IMAGE_REFINE_DIM"):
        build_mask_head(cfg, ShapeSpec(channels=16, size=pooled))


def test_mask_loss_weighs_the_neighbours_voxels_in_the_roi():
    # two touching cubes along x; the RoI of the first reaches 2 voxels into the second
    shape = (8, 8, 8)
    labels = torch.zeros(shape, dtype=torch.int64)
    labels[2:6, 2:6, 2:4] = 1
    labels[2:6, 2:6, 4:6] = 2
    own = BitMasks((labels == 1)[None])
    boxes = torch.tensor([[2.0, 2.0, 2.0, 6.0, 6.0, 6.0]])  # x0 y0 z0 x1 y1 z1
    inst = Instances(shape, proposal_boxes=Boxes(boxes), gt_classes=torch.tensor([0]))
    inst.gt_masks = own
    inst.gt_union_masks = BitMasks((labels > 0)[None])
    logits = torch.randn(1, 1, 4, 4, 4, generator=torch.Generator().manual_seed(1))

    target = torch.zeros(1, 4, 4, 4)
    target[..., :2] = 1.0  # the first cube fills the RoI's first half in x
    weight = torch.ones(1, 4, 4, 4)
    weight[..., 2:] = 5.0  # the second half is the neighbour
    expected = F.binary_cross_entropy_with_logits(logits[:, 0], target, weight=weight)
    loss = mask_rcnn_loss(logits, [inst], "bce", neighbor_weight=5.0)
    torch.testing.assert_close(loss, expected)
    # weight 1 is the plain loss and does not need the union
    inst.remove("gt_union_masks")
    plain = mask_rcnn_loss(logits, [inst], "bce", neighbor_weight=1.0)
    torch.testing.assert_close(plain, F.binary_cross_entropy_with_logits(logits[:, 0], target))
    with pytest.raises(ValueError, match="NEIGHBOR_WEIGHT needs gt_union_masks"):
        mask_rcnn_loss(logits, [inst], "bce", neighbor_weight=5.0)


def test_neighbor_weight_must_not_be_negative():
    cfg = tiny_cfg(3)
    cfg.MODEL.ROI_MASK_HEAD.NEIGHBOR_WEIGHT = -1.0
    with pytest.raises(ValueError, match="NEIGHBOR_WEIGHT must be >= 0, got -1.0"):
        build_mask_head(cfg, ShapeSpec(channels=16))


def _touching_pair_roi():
    """Two cubes touching along x; one RoI on the first reaching 2 voxels into the second."""
    shape = (8, 8, 8)
    labels = torch.zeros(shape, dtype=torch.int64)
    labels[2:6, 2:6, 2:4] = 1
    labels[2:6, 2:6, 4:6] = 2
    boxes = torch.tensor([[2.0, 2.0, 2.0, 6.0, 6.0, 6.0]])  # x0 y0 z0 x1 y1 z1
    inst = Instances(shape, proposal_boxes=Boxes(boxes), gt_classes=torch.tensor([0]))
    inst.gt_masks = BitMasks((labels == 1)[None])
    inst.gt_union_masks = BitMasks((labels > 0)[None])
    return inst


def test_neighbor_mask_loss_targets_the_other_objects_voxels_in_the_roi():
    from det3d.modeling.roi_heads import neighbor_mask_loss

    inst = _touching_pair_roi()
    logits = torch.randn(1, 1, 4, 4, 4, generator=torch.Generator().manual_seed(2))
    target = torch.zeros(1, 4, 4, 4)
    target[..., 2:] = 1.0  # the RoI's second half in x is the other cube
    expected = F.binary_cross_entropy_with_logits(logits[:, 0], target)
    torch.testing.assert_close(neighbor_mask_loss(logits, [inst]), expected)
    # at a coarser grid the target is cropped at that size: 2 cells per axis, the second x cell
    coarse = torch.randn(1, 1, 2, 2, 2, generator=torch.Generator().manual_seed(3))
    target = torch.zeros(1, 2, 2, 2)
    target[..., 1] = 1.0
    expected = F.binary_cross_entropy_with_logits(coarse[:, 0], target)
    torch.testing.assert_close(neighbor_mask_loss(coarse, [inst]), expected)
    # background is not a neighbour: a lone object's RoI has an all-zero target
    lone = _touching_pair_roi()
    lone.gt_union_masks = lone.gt_masks
    zeros = torch.zeros(1, 4, 4, 4)
    expected = F.binary_cross_entropy_with_logits(logits[:, 0], zeros)
    torch.testing.assert_close(neighbor_mask_loss(logits, [lone]), expected)
    empty = neighbor_mask_loss(logits[:0], [inst[:0]])
    assert empty.item() == 0
    inst.remove("gt_union_masks")
    with pytest.raises(ValueError, match="NEIGHBOR_CONVS needs gt_union_masks"):
        neighbor_mask_loss(logits, [inst])


def test_neighbor_branch_feeds_the_mask_convs_and_trains_on_its_own_loss():
    from det3d.modeling.roi_heads import neighbor_mask_loss

    cfg = tiny_cfg(3)
    cfg.MODEL.ROI_MASK_HEAD.NUM_CONV = 2
    torch.manual_seed(0)
    plain = build_mask_head(cfg, ShapeSpec(channels=16))
    assert not plain.needs_gt_union
    cfg.MODEL.ROI_MASK_HEAD.NEIGHBOR_CONVS = 2
    cfg.MODEL.ROI_MASK_HEAD.NEIGHBOR_LOSS_WEIGHT = 0.5
    torch.manual_seed(0)
    head = build_mask_head(cfg, ShapeSpec(channels=16))
    assert head.needs_gt_union
    # built last: the mask convs start from the same weights as the plain head's
    state = head.state_dict()
    for name, value in plain.state_dict().items():
        assert torch.equal(state[name], value), name
    assert [c.out_channels for c in head.neighbor_convs] == [cfg.MODEL.ROI_MASK_HEAD.CONV_DIM, 16]

    x = torch.randn(1, 16, 2, 2, 2)
    h = x
    for layer in head.neighbor_convs:
        h = layer(h)
    assert h.abs().amax() > 0
    # the mask is the plain head's on the pooled features plus the branch's
    torch.testing.assert_close(head.layers(x), plain.layers(x + h))
    assert not torch.allclose(head.layers(x), plain.layers(x))

    head.train()
    inst = _touching_pair_roi()
    out = head(x, [inst])
    assert set(out) == {"loss_mask", "loss_mask_neighbor"}
    torch.testing.assert_close(out["loss_mask"], mask_rcnn_loss(head.layers(x), [inst]))
    torch.testing.assert_close(
        out["loss_mask_neighbor"], 0.5 * neighbor_mask_loss(head.neighbor_predictor(h), [inst])
    )
    # the branch's loss reaches the branch's weights
    out["loss_mask_neighbor"].backward()
    assert head.neighbor_fcn1.weight.grad.abs().amax() > 0
    assert head.mask_fcn1.weight.grad is None

    head.eval()
    with torch.no_grad():
        (det,) = head(x, [Instances((8, 8, 8), pred_classes=torch.tensor([1]))])
    torch.testing.assert_close(det.pred_masks, head.layers(x)[:, 1].sigmoid())


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("NEIGHBOR_CONVS", -1, "NEIGHBOR_CONVS must be an int >= 0, got -1"),
        ("NEIGHBOR_LOSS_WEIGHT", -0.5, "NEIGHBOR_LOSS_WEIGHT must be >= 0, got -0.5"),
    ],
)
def test_neighbor_branch_errors(key, value, match):
    cfg = tiny_cfg(3)
    cfg.MODEL.ROI_MASK_HEAD[key] = value
    with pytest.raises(ValueError, match=match):
        build_mask_head(cfg, ShapeSpec(channels=16))
