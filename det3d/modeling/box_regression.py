"""
Box <-> regression-target transforms and the dense box regression loss, for any number of spatial
dims. A box has ``2 * ndim`` coordinates, corners then ends (``(x0, y0, z0, x1, y1, z1)`` in 3D);
deltas are ordered the same way: ``(dx, dy, dz, dw, dh, dd)`` (centre shifts, then log size ratios).
"""

import math
from typing import List, Sequence, Tuple

import torch

from det3d.layers import cat, giou_loss, huber_soft_clip_loss, smooth_l1_loss
from det3d.structures import Boxes

__all__ = [
    "BOX_REG_LOSS_TYPES",
    "Box2BoxTransform",
    "box_reg_weights",
    "box_regression_loss",
    "_dense_box_regression_loss",
]

# Values of the config keys ``*.BBOX_REG_LOSS_TYPE`` (see :func:`box_regression_loss`).
BOX_REG_LOSS_TYPES = ("smooth_l1", "huber", "giou")

# Largest log size ratio that apply_deltas accepts: a box may grow at most 1000/16 times per side.
_DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)


def box_reg_weights(weights: Sequence[float], ndim: int) -> Tuple[float, ...]:
    """
    Regression weights for ``ndim`` spatial dims from a config value.

    Args:
        weights: ``(wx, wy[, wz], ww, wh[, wd])``, length ``2 * ndim``. In 2D a length-6 list
            (the 3D layout) is also accepted and its z entries (indices 2 and 5) are dropped, so one
            config serves both.
        ndim: 2 or 3.
    """
    weights = tuple(float(w) for w in weights)
    if len(weights) == 2 * ndim:
        return weights
    if ndim == 2 and len(weights) == 6:
        return (weights[0], weights[1], weights[3], weights[4])
    raise ValueError(
        f"Box regression weights {list(weights)} have length {len(weights)}; expected "
        f"{2 * ndim} (ndim={ndim})" + (" or 6 (z entries dropped)" if ndim == 2 else "")
    )


class Box2BoxTransform:
    """
    The R-CNN box transform: a source box is mapped to a target box by the shift of its centre in
    units of its size and the log ratio of the sizes, each multiplied by a weight:

        d_ctr_k = w_k * (t_ctr_k - s_ctr_k) / s_size_k,   d_size_k = w'_k * log(t_size_k / s_size_k)

    for box coordinate ``k`` (x, y[, z]). The number of spatial dims is ``len(weights) // 2``.
    """

    def __init__(self, weights: Sequence[float], scale_clamp: float = _DEFAULT_SCALE_CLAMP):
        """
        Args:
            weights: ``2 * ndim`` weights ``(wx, wy[, wz], ww, wh[, wd])``.
            scale_clamp: log size deltas are clamped to at most this before ``exp``.
        """
        if len(weights) not in (4, 6):
            raise ValueError(f"Box2BoxTransform: weights {list(weights)} must have length 4 or 6")
        self.weights = tuple(float(w) for w in weights)
        self.ndim = len(self.weights) // 2
        self.scale_clamp = scale_clamp

    def _centers_and_sizes(self, boxes: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        d = self.ndim
        sizes = boxes[:, d:] - boxes[:, :d]
        return boxes[:, :d] + 0.5 * sizes, sizes

    def get_deltas(self, src_boxes: torch.Tensor, target_boxes: torch.Tensor) -> torch.Tensor:
        """
        Args:
            src_boxes, target_boxes (Tensor): (N, 2*ndim); source boxes must have positive sizes.

        Returns:
            Tensor: (N, 2*ndim) deltas with which ``apply_deltas`` turns ``src_boxes`` into
            ``target_boxes``.
        """
        if isinstance(src_boxes, Boxes):
            src_boxes = src_boxes.tensor
        if isinstance(target_boxes, Boxes):
            target_boxes = target_boxes.tensor
        box_dim = 2 * self.ndim
        if (
            src_boxes.dim() != 2
            or src_boxes.shape[1] != box_dim
            or target_boxes.shape != src_boxes.shape
        ):
            raise ValueError(
                f"get_deltas expects src and target boxes of shape (N, {box_dim}); got "
                f"{tuple(src_boxes.shape)} and {tuple(target_boxes.shape)}"
            )
        src_ctr, src_size = self._centers_and_sizes(src_boxes)
        tgt_ctr, tgt_size = self._centers_and_sizes(target_boxes)
        w = src_boxes.new_tensor(self.weights)
        d = self.ndim
        d_ctr = w[:d] * (tgt_ctr - src_ctr) / src_size
        d_size = w[d:] * torch.log(tgt_size / src_size)
        return torch.cat([d_ctr, d_size], dim=1)

    def apply_deltas(self, deltas: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """
        Args:
            deltas (Tensor): (N, k * 2*ndim); k = 1 for class-agnostic, k = #classes for
                class-specific regression (deltas of class j at columns
                ``j*2*ndim : (j+1)*2*ndim``).
            boxes (Tensor): (N, 2*ndim) boxes to transform.

        Returns:
            Tensor: (N, k * 2*ndim) transformed boxes, same layout as ``deltas``.
        """
        if isinstance(boxes, Boxes):
            boxes = boxes.tensor
        box_dim = 2 * self.ndim
        if (
            deltas.dim() != 2
            or deltas.shape[1] % box_dim != 0
            or boxes.shape != (deltas.shape[0], box_dim)
        ):
            raise ValueError(
                f"apply_deltas expects deltas (N, k*{box_dim}) and boxes (N, {box_dim}); got "
                f"{tuple(deltas.shape)} and {tuple(boxes.shape)}"
            )
        d = self.ndim
        if deltas.dtype in (torch.float16, torch.bfloat16):
            # Decoded coordinates need float32: bfloat16 steps by 0.5 voxel above 64 (autocast).
            deltas = deltas.float()
        boxes = boxes.to(deltas.dtype)
        ctr, size = self._centers_and_sizes(boxes)
        w = deltas.new_tensor(self.weights)
        n, k = deltas.shape[0], deltas.shape[1] // box_dim  # explicit k: N may be 0
        deltas = deltas.view(n, k, box_dim)
        d_ctr = deltas[..., :d] / w[:d]
        # Clamp before exp: an untrained head must not produce inf-sized boxes.
        d_size = (deltas[..., d:] / w[d:]).clamp(max=self.scale_clamp)
        pred_ctr = d_ctr * size[:, None, :] + ctr[:, None, :]
        pred_size = torch.exp(d_size) * size[:, None, :]
        pred = torch.cat([pred_ctr - 0.5 * pred_size, pred_ctr + 0.5 * pred_size], dim=2)
        return pred.reshape(n, k * box_dim)


def box_regression_loss(
    box2box_transform: Box2BoxTransform,
    pred_deltas: torch.Tensor,
    src_boxes: torch.Tensor,
    gt_boxes: torch.Tensor,
    loss_type: str = "smooth_l1",
    smooth_l1_beta: float = 0.0,
    huber_clip: float = 3.0,
    huber_delta: float = 1.0,
) -> torch.Tensor:
    """
    The box regression loss a config's ``BBOX_REG_LOSS_TYPE`` names, over matched rows: row ``i``
    predicts ``pred_deltas[i]`` relative to ``src_boxes[i]`` for the target ``gt_boxes[i]``.

    Args:
        box2box_transform: the transform the deltas are in.
        pred_deltas, src_boxes, gt_boxes (Tensor): (K, 2*ndim); the source boxes are the anchors
            or proposals.
        loss_type: ``"smooth_l1"`` (``smooth_l1_beta``) or ``"huber"`` (Huber(``huber_delta``)
            after soft clipping ``huber_clip * tanh(x / huber_clip)`` of the predicted deltas) on
            the encoded deltas, or ``"giou"`` on the decoded boxes.

    Returns:
        Tensor: scalar, the sum (not the mean) over rows and coordinates.
    """
    if loss_type == "giou":
        pred_boxes = box2box_transform.apply_deltas(pred_deltas, src_boxes)
        return giou_loss(pred_boxes, gt_boxes, reduction="sum")
    if loss_type not in BOX_REG_LOSS_TYPES:
        raise ValueError(
            f"Unknown box regression loss type {loss_type!r}; expected 'smooth_l1', 'huber' "
            "or 'giou'"
        )
    gt_deltas = box2box_transform.get_deltas(src_boxes, gt_boxes)
    if loss_type == "smooth_l1":
        return smooth_l1_loss(pred_deltas, gt_deltas, beta=smooth_l1_beta, reduction="sum")
    return huber_soft_clip_loss(
        pred_deltas, gt_deltas, clip=huber_clip, delta=huber_delta, reduction="sum"
    )


def _dense_box_regression_loss(
    anchors: List[Boxes],
    box2box_transform: Box2BoxTransform,
    pred_anchor_deltas: List[torch.Tensor],
    gt_boxes: List[torch.Tensor],
    fg_mask: torch.Tensor,
    box_reg_loss_type: str = "smooth_l1",
    smooth_l1_beta: float = 0.0,
    huber_clip: float = 3.0,
    huber_delta: float = 1.0,
) -> torch.Tensor:
    """
    Box regression loss of dense detectors (RPN, RetinaNet), summed over foreground anchors.

    Args:
        anchors: one ``Boxes`` per level, ``(R_l, 2*ndim)``; the same for every image.
        box2box_transform: the transform the deltas are in.
        pred_anchor_deltas: one ``(N, R_l, 2*ndim)`` tensor per level.
        gt_boxes: one ``(R, 2*ndim)`` tensor per image: the box matched to each anchor,
            ``R = sum(R_l)``.
        fg_mask (Tensor): (N, R) bool, the anchors that regress.
        box_reg_loss_type, smooth_l1_beta, huber_clip, huber_delta: see
            :func:`box_regression_loss`.

    Returns:
        Tensor: scalar, the sum (not the mean) over foreground anchors and coordinates.
    """
    anchors = type(anchors[0]).cat(anchors).tensor  # (R, 2*ndim)
    pred = cat(pred_anchor_deltas, dim=1)  # (N, R, 2*ndim)
    fg_anchors = anchors.expand(pred.shape[0], -1, -1)[fg_mask]
    return box_regression_loss(
        box2box_transform,
        pred[fg_mask],
        fg_anchors,
        torch.stack(gt_boxes)[fg_mask],
        loss_type=box_reg_loss_type,
        smooth_l1_beta=smooth_l1_beta,
        huber_clip=huber_clip,
        huber_delta=huber_delta,
    )
