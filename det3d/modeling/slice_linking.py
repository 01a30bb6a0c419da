"""
Linking per-slice 2D instances into 3D objects (the last step of 2.5D instance segmentation).

:func:`link_slice_instances` takes a stack of per-slice 2D instance label images, in which ids
need not agree between slices, and returns one 3D label volume. It walks the slices in order and
matches the instances of each slice to the objects seen in the slices above it by mask IoU, with
an optimal one-to-one assignment (``scipy.optimize.linear_sum_assignment``):

* a pair may match only when its IoU is at least ``iou_threshold``;
* an object that is missing in up to ``max_gap`` slices may still be continued below the gap (it
  is matched against its last slice, after the objects of the adjacent slice had their turn);
* an object that splits continues as the child it overlaps best and the other child starts a new
  object; objects that merge continue as the one that overlaps the merged instance best, the
  other ends (the assignment is one-to-one);
* objects present in fewer than ``min_depth`` slices are removed (their voxels become 0).

Memory: the output volume plus two slices at a time (the current slice and, for each gap length,
one earlier slice of the output) and small per-slice tables; it does not grow with the number of
objects times the volume.
"""

from typing import List, Optional, Tuple, Union

import numpy as np
from scipy.optimize import linear_sum_assignment

__all__ = ["link_slice_instances", "SliceLinks"]


class SliceLinks:
    """
    Where each 2D instance went: ``ids[z]`` (int64 array) are the 2D ids present in slice ``z``
    (sorted) and ``objects[z]`` the 3D id each became (0 if its object was removed for being
    shallower than ``min_depth``).
    """

    def __init__(self, ids: List[np.ndarray], objects: List[np.ndarray]):
        self.ids = ids
        self.objects = objects

    def object_of(self, z: int, slice_id: int) -> int:
        """The 3D id of 2D instance ``slice_id`` of slice ``z`` (0 if none)."""
        k = np.searchsorted(self.ids[z], slice_id)
        if k < len(self.ids[z]) and self.ids[z][k] == slice_id:
            return int(self.objects[z][k])
        return 0


def _overlap_iou(prev: np.ndarray, prev_ids: np.ndarray, cur_index: np.ndarray, n_cur: int):
    """
    IoU between every object id in ``prev_ids`` (as painted in ``prev``; other ids count as
    background) and every 2D instance of the current slice (``cur_index``: 0 = background,
    ``1..n_cur`` = instance index): (P, n_cur) float64, from one pass over the two slices.
    """
    lut_p = np.zeros(int(prev.max()) + 1, np.int64)
    lut_p[prev_ids] = np.arange(1, len(prev_ids) + 1)
    n_p, n_c = len(prev_ids) + 1, n_cur + 1
    joint = np.bincount((lut_p[prev] * n_c + cur_index).ravel(), minlength=n_p * n_c)
    joint = joint.reshape(n_p, n_c)
    inter = joint[1:, 1:].astype(np.float64)
    area_p = joint[1:, :].sum(axis=1).astype(np.float64)
    area_c = joint[:, 1:].sum(axis=0).astype(np.float64)
    union = area_p[:, None] + area_c[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _assign(iou: np.ndarray, threshold: float) -> List[Tuple[int, int]]:
    """Optimal one-to-one pairs (maximum total IoU) among pairs with IoU >= threshold."""
    if iou.size == 0:
        return []
    allowed = iou >= threshold
    if not allowed.any():
        return []
    # pairs below the threshold cost as much as no match, so the assignment never prefers them
    cost = np.where(allowed, -iou, 0.0)
    rows, cols = linear_sum_assignment(cost)
    return [(int(r), int(c)) for r, c in zip(rows, cols) if allowed[r, c]]


def link_slice_instances(
    slice_labels: np.ndarray,
    iou_threshold: float = 0.1,
    max_gap: int = 0,
    min_depth: int = 1,
    return_links: bool = False,
) -> Union[np.ndarray, Tuple[np.ndarray, SliceLinks]]:
    """
    Links per-slice 2D instances into 3D objects (see the module docstring for the rule).

    Args:
        slice_labels: int ``(D, H, W)`` array (numpy or torch); slice ``z`` holds its own 2D
            instance ids (0 = background); ids need not agree between slices.
        iou_threshold: the least mask IoU for two instances of nearby slices to be one object
            (``MODEL.SLICE_FUSION.LINK_IOU``).
        max_gap: how many consecutive slices an object may be missing from and still be
            continued (``MODEL.SLICE_FUSION.LINK_MAX_GAP``); 0 = objects must be in adjacent slices.
        min_depth: objects present in fewer slices are removed
            (``MODEL.SLICE_FUSION.LINK_MIN_DEPTH``).
        return_links: also return a :class:`SliceLinks` (which 3D object each 2D instance became).

    Returns:
        int32 ``(D, H, W)`` label volume, objects numbered ``1..K`` in the order they first appear
        (by slice, then by 2D id); with ``return_links``, also the :class:`SliceLinks`.
    """
    if hasattr(slice_labels, "detach"):
        slice_labels = slice_labels.detach().cpu().numpy()
    slice_labels = np.asarray(slice_labels)
    if slice_labels.ndim != 3:
        raise ValueError(
            f"link_slice_instances: slice_labels must be (D, H, W), got shape {slice_labels.shape}"
        )
    if not np.issubdtype(slice_labels.dtype, np.integer):
        raise ValueError(
            f"link_slice_instances: slice_labels must hold integer ids, got {slice_labels.dtype}"
        )
    if slice_labels.size and slice_labels.min() < 0:
        raise ValueError("link_slice_instances: slice_labels holds negative ids")
    if max_gap < 0 or min_depth < 1 or not 0.0 < iou_threshold <= 1.0:
        raise ValueError(
            f"link_slice_instances: need max_gap >= 0 (got {max_gap}), min_depth >= 1 (got "
            f"{min_depth}) and 0 < iou_threshold <= 1 (got {iou_threshold})"
        )
    depth = slice_labels.shape[0]
    out = np.zeros(slice_labels.shape, np.int32)  # track ids
    last_z: List[int] = [-1]  # per track id (index), the last slice it was seen in
    n_slices: List[int] = [0]  # per track id, the number of slices it occupies
    ids_per_slice, tracks_per_slice = [], []
    for z in range(depth):
        # compact indices of the slice's ids (whatever their values): 0 = background
        cur_ids, cur_index = np.unique(slice_labels[z], return_inverse=True)
        cur_index = cur_index.reshape(slice_labels.shape[1:])
        if len(cur_ids) and cur_ids[0] == 0:
            cur_ids = cur_ids[1:]
        else:
            cur_index = cur_index + 1
        cur_ids = cur_ids.astype(np.int64)
        track_of = np.zeros(len(cur_ids), np.int64)
        free = np.ones(len(cur_ids), bool)
        for gap in range(max_gap + 1):
            zp = z - 1 - gap
            if zp < 0 or not free.any():
                break
            prev = out[zp]
            # only objects whose last slice is zp: the others went on below it or ended earlier
            prev_ids = np.array([t for t in np.unique(prev) if t > 0 and last_z[t] == zp], np.int64)
            if len(prev_ids) == 0:
                continue
            free_idx = np.flatnonzero(free)
            iou = _overlap_iou(prev, prev_ids, cur_index, len(cur_ids))[:, free_idx]
            for r, c in _assign(iou, iou_threshold):
                track_of[free_idx[c]] = prev_ids[r]
                free[free_idx[c]] = False
        for k in np.flatnonzero(free):
            track_of[k] = len(last_z)
            last_z.append(-1)
            n_slices.append(0)
        for t in track_of:
            last_z[t] = z
            n_slices[t] += 1
        out[z] = np.concatenate([[0], track_of]).astype(np.int32)[cur_index]
        ids_per_slice.append(cur_ids)
        tracks_per_slice.append(track_of)

    # drop shallow objects and number the rest 1..K in order of first appearance
    keep = np.asarray(n_slices) >= min_depth
    keep[0] = False
    final = np.zeros(len(n_slices), np.int32)
    final[keep] = np.arange(1, int(keep.sum()) + 1)
    labels = final[out]
    if not return_links:
        return labels
    return labels, SliceLinks(ids_per_slice, [final[t] for t in tracks_per_slice])
