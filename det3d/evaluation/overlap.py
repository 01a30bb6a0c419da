"""
Sparse overlap between two label volumes: the one primitive behind instance matching and CTC SEG.

Nothing here builds a per-object mask of the volume or loops over voxels in Python: the volumes are
walked once, in chunks, with ``np.bincount`` on compact ``(gt, pred)`` pair keys.
"""

from typing import Callable, NamedTuple, Tuple

import numpy as np
from scipy import sparse

__all__ = ["LabelOverlap", "label_overlap", "check_label_pair", "touching_objects"]

# Voxels handled per step: bounds the int64 temporaries of np.bincount (~64 MB each).
_CHUNK = 1 << 23
# Largest id for which per-id counts are taken with a dense bincount; larger ids are relabelled.
_DENSE_ID_LIMIT = 1 << 24
# Largest number of (gt, pred) bins counted densely; beyond it, pairs are counted with np.unique.
_DENSE_PAIR_LIMIT = 1 << 25


class LabelOverlap(NamedTuple):
    """
    Overlap of two label volumes. Index ``i`` of the gt side is object ``gt_ids[i]``.

    Attributes:
        gt_ids (ndarray): (G,) int64 ids present in the ground truth, increasing, without 0.
        pred_ids (ndarray): (P,) int64 ids present in the prediction.
        overlap (scipy.sparse.csr_matrix): (G, P) int64, voxels shared by each pair; only pairs
            that touch are stored.
        gt_sizes (ndarray): (G,) int64 voxels per gt object.
        pred_sizes (ndarray): (P,) int64 voxels per predicted object.
    """

    gt_ids: np.ndarray
    pred_ids: np.ndarray
    overlap: sparse.csr_matrix
    gt_sizes: np.ndarray
    pred_sizes: np.ndarray

    def pairs(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """
        Returns:
            (gi, pj, inter, iou): the touching pairs as indices into the gt / pred sides, their
            shared voxel count (int64) and their IoU (float64).
        """
        coo = self.overlap.tocoo()
        gi, pj, inter = coo.row.astype(np.int64), coo.col.astype(np.int64), coo.data
        union = self.gt_sizes[gi] + self.pred_sizes[pj] - inter
        return gi, pj, inter, inter / union


def check_label_pair(gt: np.ndarray, pred: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """
    Validates a ``(gt, pred)`` label pair (same shape, integer or bool, no negative ids) and
    returns them as numpy arrays (torch tensors are accepted).
    """
    arrays = []
    for name, arr in (("gt_labels", gt), ("pred_labels", pred)):
        if hasattr(arr, "detach"):
            arr = arr.detach().cpu().numpy()
        arr = np.asarray(arr)
        if arr.dtype == np.bool_:
            arr = arr.view(np.uint8)
        elif arr.dtype == np.uint64:  # np.bincount cannot take uint64
            if arr.size and arr.max() > np.iinfo(np.int64).max:
                raise ValueError(f"{name} holds ids beyond int64")
            arr = arr.astype(np.int64)
        if not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(f"{name} must hold integer instance ids, got dtype {arr.dtype}")
        arrays.append(arr)
    gt, pred = arrays
    if gt.shape != pred.shape:
        raise ValueError(f"gt_labels and pred_labels differ in shape: {gt.shape} vs {pred.shape}")
    for name, arr in (("gt_labels", gt), ("pred_labels", pred)):
        if arr.size and np.issubdtype(arr.dtype, np.signedinteger) and arr.min() < 0:
            raise ValueError(f"{name} holds negative ids (min {arr.min()}); 0 is background")
    return gt, pred


def _compact(flat: np.ndarray) -> Tuple[np.ndarray, np.ndarray, Callable[[int, int], np.ndarray]]:
    """
    Returns ``(ids, sizes, chunk)`` of a flat label array; ``chunk(s, e)`` gives voxels ``s:e``
    relabelled to 1-based compact indices (0 stays background).
    """
    top = int(flat.max()) if flat.size else 0
    if top <= _DENSE_ID_LIMIT:
        counts = np.zeros(top + 1, dtype=np.int64)
        for s in range(0, flat.size, _CHUNK):
            counts += np.bincount(flat[s : s + _CHUNK], minlength=top + 1)
        counts[0] = 0
        ids = np.flatnonzero(counts)
        sizes = counts[ids]
        if ids.size == top:  # already 1..n: no lookup needed
            return ids.astype(np.int64), sizes, lambda s, e: flat[s:e]
        lut = np.zeros(top + 1, dtype=np.int32)
        lut[ids] = np.arange(1, ids.size + 1, dtype=np.int32)
        return ids.astype(np.int64), sizes, lambda s, e: lut[flat[s:e]]
    # Huge ids: a sort-based relabelling (slower, but never a table as long as the largest id).
    uniq, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1).astype(np.int32)
    if uniq[0] == 0:
        uniq, counts = uniq[1:], counts[1:]
    else:
        inverse += 1
    return uniq.astype(np.int64), counts.astype(np.int64), lambda s, e: inverse[s:e]


def label_overlap(gt: np.ndarray, pred: np.ndarray) -> LabelOverlap:
    """
    Counts the voxels shared by every touching pair of gt and predicted objects.

    Args:
        gt, pred: label arrays of the same shape (any ndim), integer ids, 0 = background.

    Returns:
        LabelOverlap: ids, sparse ``(G, P)`` overlap counts and object sizes.
    """
    gt, pred = check_label_pair(gt, pred)
    gflat, pflat = gt.reshape(-1), pred.reshape(-1)
    gt_ids, gt_sizes, gt_chunk = _compact(gflat)
    pred_ids, pred_sizes, pred_chunk = _compact(pflat)
    n_g, n_p = gt_ids.size, pred_ids.size
    stride = n_p + 1
    nbins = (n_g + 1) * stride
    key_dtype = np.int32 if nbins < np.iinfo(np.int32).max else np.int64
    dense = nbins <= _DENSE_PAIR_LIMIT
    counts = np.zeros(nbins if dense else 0, dtype=np.int64)
    keys_parts, counts_parts = [], []
    if n_g and n_p:
        for s in range(0, gflat.size, _CHUNK):
            e = min(s + _CHUNK, gflat.size)
            g, p = gt_chunk(s, e), pred_chunk(s, e)
            both = (g != 0) & (p != 0)
            key = g[both].astype(key_dtype) * stride + p[both].astype(key_dtype)
            if dense:
                counts += np.bincount(key, minlength=nbins)
            else:
                k, c = np.unique(key, return_counts=True)
                keys_parts.append(k.astype(np.int64))
                counts_parts.append(c)
    if dense:
        keys = np.flatnonzero(counts)
        vals = counts[keys]
    elif keys_parts:
        keys, inverse = np.unique(np.concatenate(keys_parts), return_inverse=True)
        vals = np.bincount(inverse.reshape(-1), weights=np.concatenate(counts_parts))
        vals = vals.astype(np.int64)
    else:
        keys = vals = np.zeros(0, dtype=np.int64)
    rows, cols = keys // stride - 1, keys % stride - 1
    overlap = sparse.csr_matrix((vals, (rows, cols)), shape=(n_g, n_p), dtype=np.int64)
    return LabelOverlap(gt_ids, pred_ids, overlap, gt_sizes, pred_sizes)


def touching_objects(labels: np.ndarray) -> np.ndarray:
    """
    Ids of the objects that share a face with another object (6-connectivity in 3D, 4 in 2D).

    Args:
        labels: int ``(D, H, W)`` (or ``(H, W)``) instance labels, 0 = background.

    Returns:
        sorted int64 array of ids.
    """
    labels = np.asarray(labels)
    found = []
    for axis in range(labels.ndim):
        a = np.moveaxis(labels, axis, 0)
        x, y = a[1:], a[:-1]
        hit = (x != y) & (x > 0) & (y > 0)
        found += [x[hit], y[hit]]
    return np.unique(np.concatenate(found)).astype(np.int64) if found else np.zeros(0, np.int64)
