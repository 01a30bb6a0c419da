"""
Losses used by the heads. All are N-D where boxes or masks are involved: boxes are
``(x0, y0, x1, y1)`` or ``(x0, y0, z0, x1, y1, z1)``, masks ``(N, *spatial)``.

Every function takes ``reduction`` in ``"none" | "mean" | "sum"`` and defaults to ``"none"`` as
Detectron2's do. ``"mean"`` of an empty input is 0 (still attached to the graph), not NaN, so a
batch without foreground does not poison training.
"""

import torch
import torch.nn.functional as F

__all__ = [
    "CLS_LOSS_TYPES",
    "classification_loss",
    "smooth_l1_loss",
    "huber_soft_clip_loss",
    "giou_loss",
    "sigmoid_focal_loss",
    "softmax_focal_loss",
    "dice_loss",
]

# Values of the config keys ``*.CLS_LOSS_TYPE`` (see :func:`classification_loss`).
CLS_LOSS_TYPES = ("ce", "focal")


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean() if loss.numel() > 0 else loss.sum() * 0.0
    raise ValueError(f"reduction={reduction!r}: expected 'none', 'mean' or 'sum'")


def smooth_l1_loss(
    input: torch.Tensor, target: torch.Tensor, beta: float, reduction: str = "none"
) -> torch.Tensor:
    """
    Smooth L1 loss (Detectron2's): ``0.5 * x**2 / beta`` if ``|x| < beta`` else ``|x| - 0.5 * beta``
    with ``x = input - target``. ``beta < 1e-5`` gives plain L1 (avoids dividing by ~0).
    """
    if beta < 1e-5:
        loss = torch.abs(input - target)
    else:
        n = torch.abs(input - target)
        loss = torch.where(n < beta, 0.5 * n**2 / beta, n - 0.5 * beta)
    return _reduce(loss, reduction)


def huber_soft_clip_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    clip: float = 3.0,
    delta: float = 1.0,
    reduction: str = "none",
) -> torch.Tensor:
    """
    Huber loss of the soft-clipped prediction: ``huber_delta(clip * tanh(input / clip) - target)``.

    The prediction (not the target) is squashed into ``(-clip, clip)`` smoothly, so one wild
    regression output cannot produce a huge loss or gradient, while near zero the squash is the
    identity. Huber is ``torch.nn.functional.huber_loss``: ``0.5 * x**2`` if ``|x| < delta`` else
    ``delta * (|x| - 0.5 * delta)``.

    Args:
        input, target (Tensor): same shape.
        clip (float): c > 0 in ``c * tanh(x / c)``.
        delta (float): Huber threshold, > 0.
    """
    if clip <= 0:
        raise ValueError(f"huber_soft_clip_loss: clip={clip} must be > 0")
    pred = clip * torch.tanh(input / clip)
    loss = F.huber_loss(pred, target.to(pred.dtype), reduction="none", delta=delta)
    return _reduce(loss, reduction)


def giou_loss(
    boxes1: torch.Tensor, boxes2: torch.Tensor, reduction: str = "none", eps: float = 1e-7
) -> torch.Tensor:
    """
    Generalized IoU loss ``1 - GIoU`` (Rezatofighi et al. 2019) of matched box pairs, in N-D.

    Args:
        boxes1, boxes2 (Tensor): (N, 4) or (N, 6) boxes, corners then ends (XYXY / XYZXYZ).
        eps (float): added to denominators.

    Returns:
        (N,) for reduction "none", else a scalar. 0 for identical boxes, in [0, 2].
    """
    if boxes1.shape != boxes2.shape or boxes1.dim() != 2 or boxes1.shape[1] not in (4, 6):
        raise ValueError(
            f"giou_loss expects two (N, 4) or (N, 6) tensors of the same shape, got "
            f"boxes1 {tuple(boxes1.shape)} and boxes2 {tuple(boxes2.shape)}"
        )
    d = boxes1.shape[1] // 2
    lo1, hi1 = boxes1[:, :d], boxes1[:, d:]
    lo2, hi2 = boxes2[:, :d], boxes2[:, d:]
    vol1 = (hi1 - lo1).prod(dim=1)
    vol2 = (hi2 - lo2).prod(dim=1)

    inter = (torch.min(hi1, hi2) - torch.max(lo1, lo2)).clamp(min=0).prod(dim=1)
    union = vol1 + vol2 - inter
    iou = inter / (union + eps)

    enclosing = (torch.max(hi1, hi2) - torch.min(lo1, lo2)).prod(dim=1)
    giou = iou - (enclosing - union) / (enclosing + eps)
    return _reduce(1 - giou, reduction)


def sigmoid_focal_loss(
    inputs: torch.Tensor,
    targets: torch.Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduction: str = "none",
) -> torch.Tensor:
    """
    Binary focal loss (Lin et al. 2017, RetinaNet) on logits:
    ``alpha_t * (1 - p_t)**gamma * BCE(inputs, targets)``.

    Args:
        inputs (Tensor): logits, any shape.
        targets (Tensor): same shape, 1 for positives, 0 for negatives (soft targets allowed).
        alpha (float): weight of positives in [0, 1], negatives get ``1 - alpha``;
            a negative value disables the weighting.
        gamma (float): focusing exponent; 0 gives (alpha-weighted) BCE.
    """
    targets = targets.to(inputs.dtype)
    p = torch.sigmoid(inputs)
    ce = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    return _reduce(loss, reduction)


def softmax_focal_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduction: str = "none",
) -> torch.Tensor:
    """
    Multi-class focal loss: ``w * (1 - p_t)**gamma * CE(logits, labels)`` with ``p_t`` the softmax
    probability of the true class.

    Alpha convention (the binary RetinaNet one carried to K+1 classes): as in Detectron2's
    Fast R-CNN head, the LAST column (index K) is background. Samples of a foreground class
    (label < K) get weight ``w = alpha``, background samples ``w = 1 - alpha``. A negative alpha
    disables the weighting (``w = 1``), so gamma=0 and alpha<0 give plain cross-entropy.

    Args:
        logits (Tensor): (N, K+1).
        labels (Tensor): (N,) int64 in [0, K].
        alpha (float): foreground weight in [0, 1], or negative for none.
        gamma (float): focusing exponent >= 0.

    Returns:
        (N,) for reduction "none", else a scalar.
    """
    if logits.dim() != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(
            f"softmax_focal_loss expects logits (N, K+1) and labels (N,), got "
            f"{tuple(logits.shape)} and {tuple(labels.shape)}"
        )
    labels = labels.long()
    log_p = F.log_softmax(logits, dim=1)
    log_p_t = log_p.gather(1, labels[:, None]).squeeze(1)
    p_t = log_p_t.exp()
    loss = -((1 - p_t) ** gamma) * log_p_t
    if alpha >= 0:
        background = logits.shape[1] - 1
        is_fg = (labels < background).to(loss.dtype)
        loss = loss * (alpha * is_fg + (1 - alpha) * (1 - is_fg))
    return _reduce(loss, reduction)


def dice_loss(
    logits: torch.Tensor, targets: torch.Tensor, reduction: str = "none", eps: float = 1.0
) -> torch.Tensor:
    """
    Soft Dice loss per instance over all its voxels:
    ``1 - (2 * sum(p * t) + eps) / (sum(p) + sum(t) + eps)`` with ``p = sigmoid(logits)``.

    Args:
        logits (Tensor): (N, *spatial) mask logits.
        targets (Tensor): (N, *spatial) in [0, 1].
        eps (float): smoothing; makes an empty prediction of an empty target cost 0.

    Returns:
        (N,) for reduction "none", else a scalar.
    """
    if logits.shape != targets.shape:
        raise ValueError(
            f"dice_loss: logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ"
        )
    p = torch.sigmoid(logits).flatten(1)
    t = targets.to(p.dtype).flatten(1)
    numerator = 2 * (p * t).sum(dim=1) + eps
    denominator = p.sum(dim=1) + t.sum(dim=1) + eps
    return _reduce(1 - numerator / denominator, reduction)


def classification_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    loss_type: str = "ce",
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduction: str = "none",
) -> torch.Tensor:
    """
    The classification loss a config's ``CLS_LOSS_TYPE`` names: cross-entropy (``"ce"``) or focal
    loss (``"focal"``), binary or multi-class according to the shapes:

    * ``targets`` of the shape of ``logits``, 1 for positives and 0 for negatives: binary,
      ``binary_cross_entropy_with_logits`` or :func:`sigmoid_focal_loss` (RPN objectness);
    * ``logits (N, K+1)`` (background last) and int64 ``labels (N,)``: multi-class,
      ``cross_entropy`` or :func:`softmax_focal_loss` (Fast R-CNN).

    Args:
        alpha, gamma: the focal loss's; ignored by "ce".

    Returns:
        the per-element loss for reduction "none", else a scalar.
    """
    if loss_type not in CLS_LOSS_TYPES:
        raise ValueError(f"Classification loss type {loss_type!r} is not one of {CLS_LOSS_TYPES}")
    if reduction == "mean" and targets.numel() == 0:
        return logits.sum() * 0.0  # torch's "mean" of nothing is NaN
    if targets.shape == logits.shape:
        if loss_type == "focal":
            return sigmoid_focal_loss(
                logits, targets, alpha=alpha, gamma=gamma, reduction=reduction
            )
        return F.binary_cross_entropy_with_logits(
            logits, targets.to(logits.dtype), reduction=reduction
        )
    if logits.dim() == 2 and targets.shape == logits.shape[:1]:
        if loss_type == "focal":
            return softmax_focal_loss(
                logits, targets, alpha=alpha, gamma=gamma, reduction=reduction
            )
        return F.cross_entropy(logits, targets, reduction=reduction)
    raise ValueError(
        f"classification_loss expects targets shaped like the logits (binary) or logits (N, K+1) "
        f"and labels (N,); got {tuple(logits.shape)} and {tuple(targets.shape)}"
    )
