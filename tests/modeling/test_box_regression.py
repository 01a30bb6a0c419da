import math

import pytest
import torch

from det3d.layers import giou_loss, huber_soft_clip_loss
from det3d.modeling.box_regression import (
    Box2BoxTransform,
    _dense_box_regression_loss,
    box_reg_weights,
)
from det3d.structures import Boxes


def _random_boxes(n, ndim, generator):
    lo = torch.rand(n, ndim, generator=generator) * 50
    size = torch.rand(n, ndim, generator=generator) * 30 + 1
    return torch.cat([lo, lo + size], dim=1)


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("weights", [None, "rcnn"])
def test_round_trip(ndim, weights):
    g = torch.Generator().manual_seed(0)
    w = [1.0] * (2 * ndim) if weights is None else [10.0] * ndim + [5.0] * ndim
    t = Box2BoxTransform(w)
    assert t.ndim == ndim
    src, tgt = _random_boxes(100, ndim, g), _random_boxes(100, ndim, g)
    deltas = t.get_deltas(src, tgt)
    assert deltas.shape == (100, 2 * ndim)
    torch.testing.assert_close(t.apply_deltas(deltas, src), tgt, rtol=1e-5, atol=1e-4)


def test_hand_case_3d():
    t = Box2BoxTransform([1.0] * 6)
    src = torch.tensor([[0.0, 0, 0, 2, 4, 8]])
    tgt = torch.tensor([[1.0, 0, 0, 3, 4, 16]])  # shift x by half a width, double the depth
    expected = torch.tensor([[0.5, 0.0, 0.5, 0.0, 0.0, math.log(2.0)]])
    torch.testing.assert_close(t.get_deltas(src, tgt), expected)


def test_weights_scale_deltas():
    src = torch.tensor([[0.0, 0, 0, 2, 4, 8]])
    tgt = torch.tensor([[1.0, 1, 1, 3, 6, 4]])
    plain = Box2BoxTransform([1.0] * 6).get_deltas(src, tgt)
    weighted = Box2BoxTransform([10.0, 10, 10, 5, 5, 5]).get_deltas(src, tgt)
    torch.testing.assert_close(weighted, plain * torch.tensor([10.0, 10, 10, 5, 5, 5]))


@pytest.mark.parametrize("ndim", [2, 3])
def test_class_specific_apply(ndim):
    g = torch.Generator().manual_seed(1)
    t = Box2BoxTransform([10.0] * ndim + [5.0] * ndim)
    boxes = _random_boxes(7, ndim, g)
    deltas = torch.randn(7, 3 * 2 * ndim, generator=g)
    out = t.apply_deltas(deltas, boxes)
    assert out.shape == (7, 3 * 2 * ndim)
    b = 2 * ndim
    for k in range(3):
        torch.testing.assert_close(
            out[:, k * b : (k + 1) * b], t.apply_deltas(deltas[:, k * b : (k + 1) * b], boxes)
        )
    # no boxes at all (an image without proposals)
    assert t.apply_deltas(deltas[:0], boxes[:0]).shape == (0, 3 * 2 * ndim)


def test_scale_clamp():
    t = Box2BoxTransform([1.0] * 6, scale_clamp=math.log(4.0))
    boxes = torch.tensor([[0.0, 0, 0, 2, 2, 2]])
    deltas = torch.tensor([[0.0, 0, 0, 100.0, 0, -1.0]])
    out = t.apply_deltas(deltas, boxes)
    sizes = out[:, 3:] - out[:, :3]
    torch.testing.assert_close(sizes, torch.tensor([[8.0, 2.0, 2 * math.exp(-1.0)]]))
    assert torch.isfinite(out).all()


def test_bad_shapes_raise():
    t = Box2BoxTransform([1.0] * 6)
    with pytest.raises(ValueError, match="apply_deltas"):
        t.apply_deltas(torch.zeros(2, 4), torch.zeros(2, 6))
    with pytest.raises(ValueError, match="get_deltas"):
        t.get_deltas(torch.zeros(2, 4), torch.zeros(2, 4))


def test_box_reg_weights():
    assert box_reg_weights([1, 2, 3, 4, 5, 6], 3) == (1, 2, 3, 4, 5, 6)
    assert box_reg_weights([1, 2, 3, 4, 5, 6], 2) == (1, 2, 4, 5)
    assert box_reg_weights([1, 2, 3, 4], 2) == (1, 2, 3, 4)
    with pytest.raises(ValueError, match="length 5"):
        box_reg_weights([1, 2, 3, 4, 5], 3)
    with pytest.raises(ValueError, match="length 4"):
        box_reg_weights([1, 2, 3, 4], 3)


def _dense_inputs(ndim=3):
    g = torch.Generator().manual_seed(2)
    anchors = [Boxes(_random_boxes(5, ndim, g)), Boxes(_random_boxes(3, ndim, g))]
    pred = [torch.randn(2, 5, 2 * ndim, generator=g), torch.randn(2, 3, 2 * ndim, generator=g)]
    gt = [_random_boxes(8, ndim, g), _random_boxes(8, ndim, g)]
    fg = torch.rand(2, 8, generator=g) > 0.5
    return anchors, pred, gt, fg


def test_dense_loss_types():
    anchors, pred, gt, fg = _dense_inputs()
    t = Box2BoxTransform([1.0, 1, 1, 2, 2, 2])
    all_anchors = torch.cat([a.tensor for a in anchors])
    all_pred = torch.cat(pred, dim=1)
    # slow references, one anchor at a time
    ref_l1 = ref_huber = ref_giou = 0.0
    for n in range(2):
        for r in range(8):
            if not fg[n, r]:
                continue
            target = t.get_deltas(all_anchors[r : r + 1], gt[n][r : r + 1])[0]
            ref_l1 += (all_pred[n, r] - target).abs().sum()
            ref_huber += huber_soft_clip_loss(all_pred[n, r], target, 3.0, 1.0, reduction="sum")
            decoded = t.apply_deltas(all_pred[n, r : r + 1], all_anchors[r : r + 1])
            ref_giou += giou_loss(decoded, gt[n][r : r + 1], reduction="sum")
    kw = dict(huber_clip=3.0, huber_delta=1.0)
    l1 = _dense_box_regression_loss(anchors, t, pred, gt, fg, "smooth_l1", 0.0, **kw)
    huber = _dense_box_regression_loss(anchors, t, pred, gt, fg, "huber", 0.0, **kw)
    giou = _dense_box_regression_loss(anchors, t, pred, gt, fg, "giou", 0.0, **kw)
    torch.testing.assert_close(l1, torch.as_tensor(ref_l1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(huber, torch.as_tensor(ref_huber), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(giou, torch.as_tensor(ref_giou), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="'diou'"):
        _dense_box_regression_loss(anchors, t, pred, gt, fg, "diou")
