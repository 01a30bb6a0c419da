"""
The objects of an instance label volume (0 = background, every other id one object): the one
routine that turns a label volume into ids, tight boxes and sizes, used by the training targets,
the evaluators' ground truth and the COCO-3D export.

Work is proportional to the volume and the number of objects present, never to the largest id:
a label volume whose ids come from another tool (e.g. ``2**31 - 1``) is relabelled first.
"""

from typing import NamedTuple, Tuple

import numpy as np
from scipy import ndimage

__all__ = ["LabelObjects", "compact_labels", "label_objects"]

# Largest id for which presence is looked up in a dense table; larger ids are relabelled by sorting.
_DENSE_ID_LIMIT = 1 << 24


class LabelObjects(NamedTuple):
    """
    Attributes:
        ids (ndarray): (N,) int64 ids present, increasing, without 0.
        boxes (ndarray): (N, 2*ndim) float32 tight boxes in box order (x0, y0[, z0], x1, y1[, z1]);
            voxels ``a..b`` give ``[a, b + 1)`` (docs/conventions.md).
        sizes (ndarray): (N,) int64 voxels per object.
    """

    ids: np.ndarray
    boxes: np.ndarray
    sizes: np.ndarray


def compact_labels(labels: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """
    Relabels ``labels`` to ``1..N`` in increasing id order (0 stays background).

    Args:
        labels: non-negative integer array, any shape.

    Returns:
        (compact int32 array of ``labels.shape``, ids (N,) int64: compact ``k`` was ``ids[k-1]``).
    """
    labels = np.asarray(labels)
    if labels.size == 0:
        return labels.astype(np.int32), np.zeros(0, np.int64)
    top = int(labels.max())
    if top <= _DENSE_ID_LIMIT:
        present = np.zeros(top + 1, dtype=bool)
        present[labels.reshape(-1)] = True
        present[0] = False
        ids = np.flatnonzero(present).astype(np.int64)
        if ids.size == top:  # already 1..N
            return labels.astype(np.int32, copy=False), ids
        lut = np.zeros(top + 1, dtype=np.int32)
        lut[ids] = np.arange(1, ids.size + 1, dtype=np.int32)
        return lut[labels], ids
    # huge ids: a sort-based relabelling, never a table as long as the largest id
    uniq, inverse = np.unique(labels.reshape(-1), return_inverse=True)
    compact = inverse.reshape(labels.shape).astype(np.int32)
    if uniq[0] == 0:
        uniq = uniq[1:]
    else:
        compact += 1
    return compact, uniq.astype(np.int64)


def label_objects(labels: np.ndarray) -> LabelObjects:
    """
    Ids, tight boxes and voxel counts of every object of a label volume.

    Args:
        labels: non-negative integer ``(*spatial)`` array (``(D, H, W)`` or ``(H, W)``).

    Returns:
        LabelObjects, objects in increasing id order.
    """
    compact, ids = compact_labels(labels)
    ndim = compact.ndim
    boxes = np.zeros((ids.size, 2 * ndim), np.float32)
    regions = ndimage.find_objects(compact, max_label=int(ids.size)) if ids.size else []
    for k, sl in enumerate(regions):
        boxes[k, :ndim] = [s.start for s in reversed(sl)]  # array order -> box order
        boxes[k, ndim:] = [s.stop for s in reversed(sl)]
    sizes = np.bincount(compact.reshape(-1), minlength=ids.size + 1)[1:].astype(np.int64)
    return LabelObjects(ids, boxes, sizes)
