"""Non-maximum suppression for 2D (N, 4) and 3D (N, 6) boxes, backed by det3d._C."""

import torch
from torch import Tensor

__all__ = ["nms", "batched_nms"]

# batched_nms runs one nms per class up to this many classes, then switches to offsetting the
# classes apart in coordinate space (one nms call, but boxes are promoted to float64 for it).
_MAX_CLASSES_FOR_LOOP = 16


def _ops():
    """torch.ops.det3d, after loading the compiled library that defines it and the fake,
    autograd and autocast registrations that let torch.compile trace it (op_registrations)."""
    try:
        import det3d.layers.op_registrations  # noqa: F401  (imports det3d._C first)
    except ImportError as e:
        raise ImportError(
            "det3d._C is not built; run `make build` (or `pip install -e . --no-build-isolation`)"
        ) from e
    return torch.ops.det3d


def _check_boxes_scores(boxes: Tensor, scores: Tensor) -> None:
    if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[1] not in (4, 6):
        shape = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes)
        raise ValueError(f"boxes must have shape (N, 4) or (N, 6), got {shape}")
    if not isinstance(scores, Tensor) or scores.dim() != 1 or len(scores) != len(boxes):
        shape = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores)
        raise ValueError(f"scores must have shape ({len(boxes)},) to match boxes, got {shape}")
    if boxes.device != scores.device:
        raise ValueError(
            f"boxes ({boxes.device}) and scores ({scores.device}) must be on the same device"
        )
    if not torch.isfinite(boxes).all():
        raise ValueError("boxes contains NaN or Inf coordinates")


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """
    Greedy non-maximum suppression.

    Args:
        boxes (Tensor): (N, 4) ``(x0, y0, x1, y1)`` or (N, 6) ``(x0, y0, z0, x1, y1, z1)``,
            float32 or float64 (also float16 on CUDA). Flipped or empty boxes have volume 0.
        scores (Tensor): (N,)
        iou_threshold (float): a box is dropped when its IoU with a kept box is > this.

    Returns:
        Tensor: int64 indices of the kept boxes, in decreasing score order (equal scores:
        lower index first).
    """
    _check_boxes_scores(boxes, scores)
    if boxes.device.type == "cpu" and boxes.dtype == torch.float16:
        boxes = boxes.float()
    return _ops().nms(boxes, scores, float(iou_threshold))


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """
    Non-maximum suppression within each category: boxes with different ``idxs`` never
    suppress each other.

    Args:
        boxes (Tensor): (N, 4) or (N, 6), see :func:`nms`.
        scores (Tensor): (N,)
        idxs (Tensor): (N,) integer category (or image, level...) of each box.
        iou_threshold (float): see :func:`nms`.

    Returns:
        Tensor: int64 indices of the kept boxes, in decreasing score order.
    """
    _check_boxes_scores(boxes, scores)
    if not isinstance(idxs, Tensor) or idxs.shape != scores.shape:
        shape = tuple(idxs.shape) if isinstance(idxs, Tensor) else type(idxs)
        raise ValueError(f"idxs must have shape ({len(boxes)},) to match boxes, got {shape}")
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    classes = torch.unique(idxs)
    if len(classes) == 1:
        return nms(boxes, scores, iou_threshold)
    if len(classes) > _MAX_CLASSES_FOR_LOOP:
        # Shift every class by a multiple of the coordinate span so classes never overlap.
        # float64 keeps the shifted coordinates (nearly always exactly) representable.
        boxes64 = boxes.double()
        span = boxes64.max() - boxes64.min() + 1
        offsets = (idxs.to(boxes64) - idxs.min().to(boxes64)) * span
        return nms(boxes64 + offsets[:, None], scores, iou_threshold)
    keep_mask = torch.zeros_like(scores, dtype=torch.bool)
    for c in classes:
        members = torch.nonzero(idxs == c).flatten()
        keep_mask[members[nms(boxes[members], scores[members], iou_threshold)]] = True
    keep = torch.nonzero(keep_mask).flatten()
    return keep[scores[keep].sort(descending=True, stable=True).indices]
