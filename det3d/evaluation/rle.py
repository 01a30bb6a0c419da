"""
Run-length encodings of many instances at once, in the layout of ``det3d.structures.masks``.

A volume of shape ``(*lead, W)`` is run-length encoded by pycocotools as the 2D array
``(R, W) = (prod(lead), W)`` in Fortran (column-major) order, so the linear position of voxel
``(r, x)`` is ``r + R * x``. The functions here produce the same RLEs as ``encode_rle`` without
building one full-volume mask per instance: ``labels_to_rles`` walks the label volume once, and
``box_mask_to_rle`` encodes a mask known only inside its box.
"""
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import pycocotools.mask as mask_util

__all__ = [
    "labels_to_rles",
    "box_mask_to_rle",
    "runs_to_rle",
    "rle_to_2d",
    "rle_areas",
    "rle_counts",
    "paint_rles",
]


def _view_shape(shape: Sequence[int]) -> Tuple[int, int]:
    shape = tuple(int(s) for s in shape)
    return int(np.prod(shape[:-1], dtype=np.int64)), shape[-1]


def rle_to_2d(rle: dict) -> dict:
    """The pycocotools view of an N-D RLE: ``size`` becomes ``[prod(size[:-1]), size[-1]]``."""
    r, w = _view_shape(rle["size"])
    counts = rle["counts"]
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    return {"size": [r, w], "counts": counts}


def rle_areas(rles: List[dict]) -> np.ndarray:
    """Voxel counts of N-D RLEs, (N,) float64."""
    if not rles:
        return np.zeros(0)
    return mask_util.area([rle_to_2d(r) for r in rles]).astype(np.float64)


def runs_to_rle(starts: np.ndarray, ends: np.ndarray, shape: Sequence[int]) -> dict:
    """
    Encodes the voxels ``[starts[k], ends[k])`` (positions in the RLE order, sorted, disjoint,
    non-adjacent) of a volume of ``shape`` as ``{"size": list(shape), "counts": str}``.
    """
    return _encode_many([(starts, ends)], shape)[0]


def _encode_many(runs: Iterable[Tuple[np.ndarray, np.ndarray]], shape: Sequence[int]) -> List[dict]:
    r, w = _view_shape(shape)
    total = r * w
    uncompressed = []
    for starts, ends in runs:
        starts = np.asarray(starts, dtype=np.int64)
        ends = np.asarray(ends, dtype=np.int64)
        counts = np.empty(2 * starts.size + 1, dtype=np.int64)
        counts[0:-1:2] = starts - np.concatenate(([0], ends[:-1]))  # zeros before each run
        counts[1::2] = ends - starts
        counts[-1] = total - (ends[-1] if ends.size else 0)
        if counts[-1] == 0 and counts.size > 1:  # pycocotools ends on the last run
            counts = counts[:-1]
        uncompressed.append({"size": [r, w], "counts": counts.astype(np.uint32)})
    if not uncompressed:
        return []
    encoded = mask_util.frPyObjects(uncompressed, r, w)
    size = [int(s) for s in shape]
    return [{"size": list(size), "counts": e["counts"].decode("ascii")} for e in encoded]


def labels_to_rles(labels: np.ndarray, ids: Optional[Sequence[int]] = None) -> Dict[int, dict]:
    """
    Encodes every object of a label volume in one pass.

    Args:
        labels: integer array of any shape, 0 = background.
        ids: the ids to encode (absent ids get an empty RLE); default: every id present.

    Returns:
        dict id -> RLE (``{"size": list(labels.shape), "counts": str}``).
    """
    labels = np.asarray(labels)
    r, w = _view_shape(labels.shape)
    # The RLE order is the C order of the transposed (R, W) view.
    seq = np.ascontiguousarray(labels.reshape(r, w).T).reshape(-1)
    if seq.size:
        change = np.flatnonzero(seq[1:] != seq[:-1]) + 1
        starts = np.concatenate(([0], change))
        ends = np.concatenate((change, [seq.size]))
        values = seq[starts].astype(np.int64)
    else:
        starts = ends = values = np.zeros(0, dtype=np.int64)
    del seq
    fg = values != 0
    starts, ends, values = starts[fg], ends[fg], values[fg]
    order = np.argsort(values, kind="stable")  # keeps runs of one id in increasing position
    starts, ends, values = starts[order], ends[order], values[order]
    present, first = np.unique(values, return_index=True)
    bounds = np.append(first, values.size)
    wanted = present if ids is None else np.asarray(list(ids), dtype=np.int64)
    index = {int(v): k for k, v in enumerate(present)}
    runs = []
    for i in wanted:
        k = index.get(int(i))
        if k is None:
            runs.append((np.zeros(0, np.int64), np.zeros(0, np.int64)))
        else:
            runs.append((starts[bounds[k] : bounds[k + 1]], ends[bounds[k] : bounds[k + 1]]))
    return {int(i): rle for i, rle in zip(wanted, _encode_many(runs, labels.shape))}


def box_mask_to_rle(local: np.ndarray, offset: Sequence[int], shape: Sequence[int]) -> dict:
    """
    Encodes a mask given only inside a region of the volume, in O(voxels of the region).

    Args:
        local: bool array, the mask inside the region.
        offset: array index of the region's first voxel, one per axis.
        shape: the full volume's shape.
    """
    local = np.asarray(local, dtype=bool)
    shape = tuple(int(s) for s in shape)
    if local.ndim != len(shape) or len(offset) != len(shape):
        raise ValueError(f"box_mask_to_rle: mask {local.shape}, offset {offset}, shape {shape}")
    r, _ = _view_shape(shape)
    coords = np.nonzero(local)
    coords = [c.astype(np.int64) + int(o) for c, o in zip(coords, offset)]
    if len(shape) == 1:
        row = np.zeros_like(coords[-1])
    else:
        row = np.ravel_multi_index(coords[:-1], shape[:-1])
    pos = np.sort(row + r * coords[-1])
    if pos.size == 0:
        return runs_to_rle(pos, pos, shape)
    brk = np.flatnonzero(np.diff(pos) != 1) + 1
    starts = pos[np.concatenate(([0], brk))]
    ends = pos[np.concatenate((brk - 1, [pos.size - 1]))] + 1
    return runs_to_rle(starts, ends, shape)


def rle_counts(rle: dict) -> np.ndarray:
    """Run lengths of an RLE (alternating background / foreground, background first), int64."""
    counts = rle["counts"]
    if isinstance(counts, (list, np.ndarray)):
        return np.asarray(counts, dtype=np.int64)
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    # COCO's compressed string: 5 bits per character (offset 48), 0x20 = more, sign in the last
    # group's 0x10; from the third count on, values are stored as differences to counts[k-2].
    out: List[int] = []
    p, n = 0, len(counts)
    while p < n:
        x, k, more = 0, 0, True
        while more:
            c = counts[p] - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(out) > 2:
            x += out[-2]
        out.append(x)
    return np.asarray(out, dtype=np.int64)


def paint_rles(rles: Sequence[dict], shape: Sequence[int], values: Sequence[int]) -> np.ndarray:
    """
    Paints RLE masks into an int32 label volume; a voxel keeps the first mask that claims it.

    Args:
        rles: N-D RLEs of ``shape``.
        values: the label of each RLE.
    """
    r, w = _view_shape(shape)
    flat = np.zeros(r * w, dtype=np.int32)  # in RLE order
    for rle, value in zip(rles, values):
        if [int(s) for s in rle["size"]] != [int(s) for s in shape]:
            raise ValueError(
                f"RLE of size {rle['size']} does not fit a volume of shape {tuple(shape)}"
            )
        counts = rle_counts(rle)
        bounds = np.cumsum(counts)
        starts, ends = bounds[0::2][: counts[1::2].size], bounds[1::2]
        if starts.size == 0:
            continue
        lengths = ends - starts
        idx = np.repeat(starts - np.concatenate(([0], np.cumsum(lengths)[:-1])), lengths)
        idx += np.arange(idx.size, dtype=np.int64)
        free = idx[flat[idx] == 0]
        flat[free] = value
    return np.ascontiguousarray(flat.reshape(w, r).T).reshape(tuple(int(s) for s in shape))
