import math

import pytest
import torch
import torch.nn.functional as F

from det3d.layers.losses import (
    classification_loss,
    dice_loss,
    giou_loss,
    huber_soft_clip_loss,
    sigmoid_focal_loss,
    smooth_l1_loss,
    softmax_focal_loss,
)


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_smooth_l1_matches_torch(beta, reduction):
    x, y = randn(20, 6, seed=1) * 2, randn(20, 6, seed=2)
    ours = smooth_l1_loss(x, y, beta=beta, reduction=reduction)
    torch.testing.assert_close(ours, F.smooth_l1_loss(x, y, beta=beta, reduction=reduction))


def test_reduction_errors_and_empty_mean():
    with pytest.raises(ValueError, match="reduction"):
        smooth_l1_loss(torch.zeros(2), torch.zeros(2), beta=0.0, reduction="avg")
    x = torch.zeros(0, 6, requires_grad=True)
    loss = smooth_l1_loss(x, torch.zeros(0, 6), beta=0.0, reduction="mean")
    assert loss.item() == 0.0 and loss.requires_grad


@pytest.mark.parametrize("clip,delta", [(3.0, 1.0), (1.0, 0.5)])
def test_huber_soft_clip_is_huber_of_clipped_prediction(clip, delta):
    x, y = randn(50, seed=3) * 5, randn(50, seed=4)
    ours = huber_soft_clip_loss(x, y, clip=clip, delta=delta, reduction="none")
    clipped = torch.tensor([clip * math.tanh(v / clip) for v in x.tolist()])
    torch.testing.assert_close(ours, F.huber_loss(clipped, y, delta=delta, reduction="none"))
    # soft clipping bounds the loss for a wild prediction
    wild = huber_soft_clip_loss(torch.tensor([1e6]), torch.tensor([0.0]), clip=clip, delta=delta)
    assert wild.item() <= delta * (clip - 0.5 * delta) + 1e-6


def test_giou_hand_cases_2d():
    a = torch.tensor([[0.0, 0, 2, 2], [0, 0, 2, 2], [0, 0, 1, 1]])
    b = torch.tensor([[0.0, 0, 2, 2], [1, 1, 3, 3], [2, 0, 3, 1]])
    # identical -> 0; overlap 1, union 7, hull 9 -> 1 - (1/7 - 2/9); disjoint 1x1 with gap 1:
    # iou 0, union 2, hull 3 -> 1 - (0 - 1/3)
    expected = torch.tensor([0.0, 1 - (1 / 7 - 2 / 9), 1 + 1 / 3])
    torch.testing.assert_close(giou_loss(a, b), expected)
    torch.testing.assert_close(giou_loss(a, b, reduction="sum"), expected.sum())


def test_giou_hand_cases_3d():
    a = torch.tensor([[0.0, 0, 0, 2, 2, 2], [0, 0, 0, 2, 2, 2], [0, 0, 0, 1, 1, 1]])
    b = torch.tensor([[0.0, 0, 0, 2, 2, 2], [1, 1, 1, 3, 3, 3], [0, 0, 2, 1, 1, 3]])
    # overlap 1, union 15, hull 27; disjoint in z: union 2, hull 3
    expected = torch.tensor([0.0, 1 - (1 / 15 - 12 / 27), 1 + 1 / 3])
    torch.testing.assert_close(giou_loss(a, b), expected)
    with pytest.raises(ValueError, match="same shape"):
        giou_loss(a, b[:, :4])


def test_giou_gradient_flows_for_disjoint_boxes():
    a = torch.tensor([[0.0, 0, 0, 1, 1, 1]], requires_grad=True)
    giou_loss(a, torch.tensor([[3.0, 3, 3, 4, 4, 4]]), reduction="sum").backward()
    assert a.grad.abs().sum() > 0  # plain IoU would give zero gradient here


@pytest.mark.parametrize("alpha", [-1.0, 0.25])
def test_sigmoid_focal_gamma0_is_weighted_bce(alpha):
    x = randn(30, seed=5) * 3
    t = (randn(30, seed=6) > 0).float()
    ours = sigmoid_focal_loss(x, t, alpha=alpha, gamma=0.0)
    bce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    w = torch.ones_like(t) if alpha < 0 else alpha * t + (1 - alpha) * (1 - t)
    torch.testing.assert_close(ours, bce * w)


def test_sigmoid_focal_reference():
    x = randn(30, seed=7) * 3
    t = (randn(30, seed=8) > 0).float()
    ours = sigmoid_focal_loss(x, t, alpha=0.25, gamma=2.0, reduction="mean")
    ref = []
    for xi, ti in zip(x.tolist(), t.tolist()):
        p = 1 / (1 + math.exp(-xi))
        p_t, a_t = (p, 0.25) if ti == 1 else (1 - p, 0.75)
        ref.append(-a_t * (1 - p_t) ** 2 * math.log(p_t))
    torch.testing.assert_close(ours, torch.tensor(sum(ref) / len(ref)))


def test_softmax_focal_gamma0_is_ce():
    logits = randn(40, 4, seed=9) * 2
    labels = torch.randint(0, 4, (40,), generator=torch.Generator().manual_seed(10))
    ce = F.cross_entropy(logits, labels, reduction="none")
    torch.testing.assert_close(softmax_focal_loss(logits, labels, alpha=-1, gamma=0.0), ce)
    # alpha weights foreground (labels < K = 3) by alpha and background (label 3) by 1 - alpha
    w = torch.where(labels < 3, 0.25, 0.75)
    torch.testing.assert_close(softmax_focal_loss(logits, labels, alpha=0.25, gamma=0.0), ce * w)


def test_softmax_focal_reference():
    logits = randn(10, 3, seed=11)
    labels = torch.tensor([0, 1, 2, 2, 1, 0, 2, 2, 1, 0])
    probs = torch.softmax(logits, dim=1)
    ref = []
    for i, label in enumerate(labels.tolist()):
        p = probs[i, label].item()
        w = 0.25 if label < 2 else 0.75
        ref.append(-w * (1 - p) ** 2 * math.log(p))
    ours = softmax_focal_loss(logits, labels, alpha=0.25, gamma=2.0, reduction="sum")
    torch.testing.assert_close(ours, torch.tensor(sum(ref)))


@pytest.mark.parametrize("spatial", [(5, 6), (3, 4, 5)])
def test_dice_loss_reference(spatial):
    logits = randn(3, *spatial, seed=12) * 2
    targets = (randn(3, *spatial, seed=13) > 0).float()
    ours = dice_loss(logits, targets, eps=1.0)
    ref = []
    for i in range(3):
        p = torch.sigmoid(logits[i]).double()
        t = targets[i].double()
        ref.append(1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1))
    torch.testing.assert_close(ours, torch.stack(ref).float())
    assert dice_loss(logits, targets, reduction="mean").shape == ()


def test_dice_loss_perfect_and_empty():
    t = torch.zeros(2, 4, 4, 4)
    t[0, 1:3, 1:3, 1:3] = 1
    perfect = (t * 2 - 1) * 50  # confident, correct logits
    loss = dice_loss(perfect, t, eps=1e-6)
    assert loss[0] < 1e-6 and loss[1] < 1e-6  # empty target, empty prediction
    with pytest.raises(ValueError, match="differ"):
        dice_loss(perfect, t[:, 0])


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_classification_loss_picks_binary_or_softmax(reduction):
    logits, targets = randn(12, seed=1), (randn(12, seed=2) > 0).float()
    kw = dict(alpha=0.3, gamma=1.5, reduction=reduction)
    torch.testing.assert_close(
        classification_loss(logits, targets, "ce", **kw),
        F.binary_cross_entropy_with_logits(logits, targets, reduction=reduction),
    )
    torch.testing.assert_close(
        classification_loss(logits, targets, "focal", **kw),
        sigmoid_focal_loss(logits, targets, **kw),
    )
    scores, labels = randn(9, 4, seed=3), torch.arange(9) % 4
    torch.testing.assert_close(
        classification_loss(scores, labels, "ce", **kw),
        F.cross_entropy(scores, labels, reduction=reduction),
    )
    torch.testing.assert_close(
        classification_loss(scores, labels, "focal", **kw), softmax_focal_loss(scores, labels, **kw)
    )


def test_classification_loss_empty_mean_and_errors():
    scores = torch.zeros(0, 4, requires_grad=True)
    loss = classification_loss(scores, torch.zeros(0, dtype=torch.int64), reduction="mean")
    assert loss.item() == 0 and loss.requires_grad
    with pytest.raises(ValueError, match="'bce'"):
        classification_loss(randn(3), torch.ones(3), "bce")
    with pytest.raises(ValueError, match=r"\(3, 4\) and \(2,\)"):
        classification_loss(randn(3, 4), torch.zeros(2, dtype=torch.int64))
