"""
Run-length encoding (RLE) of N-D masks: the one place det3d converts masks to and from RLE.

Layout (fixed; dataset records and evaluators rely on it): a mask of spatial shape ``shape`` is
reshaped, in C order, to the 2D array ``(R, W) = (prod(shape[:-1]), shape[-1])``, which
pycocotools encodes column by column (its usual Fortran order), so voxel ``(r, x)`` of that view
is at position ``r + R * x`` of the run sequence. det3d stores ``{"size": list(shape), "counts":
str}`` with the *original* shape; :func:`rle_to_coco` gives the pycocotools object (``"size"`` =
the 2D view), so ``pycocotools.mask.iou`` / ``area`` / COCOeval work unchanged. Any bijective
reshape preserves areas and IoUs, so these are the true N-D values.

Example::

    rle = encode_rle(mask)                          # mask: bool (D, H, W)
    assert (decode_rle(rle) == mask).all()
    rles = label_volume_to_rles(labels)             # {id: rle}, one pass over the volume
    labels2 = paint_rles(list(rles.values()), labels.shape, list(rles))

Encoding many instances never builds one full-volume mask per instance:
:func:`label_volume_to_rles` walks the label volume once, and :func:`box_mask_to_rle` encodes a
mask known only inside its box.
"""

import warnings
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import pycocotools.mask as mask_util
import torch

from det3d.utils.axes import box_axis_to_array_axis

__all__ = [
    "RLE",
    "encode_rle",
    "decode_rle",
    "rle_area",
    "rle_areas",
    "rle_iou",
    "rle_to_bbox",
    "rle_to_coco",
    "rle_counts",
    "runs_to_rle",
    "label_volume_to_rles",
    "box_mask_to_rle",
    "paint_rles",
]

RLE = Dict[str, Any]


def _view_2d(shape: Sequence[int]) -> Tuple[int, int]:
    """The 2D shape ``(R, W)`` pycocotools sees for a mask of spatial ``shape``."""
    shape = tuple(int(s) for s in shape)
    if len(shape) < 1:
        raise ValueError("RLE: a mask needs at least one dimension")
    return int(np.prod(shape[:-1], dtype=np.int64)), shape[-1]


def _to_numpy(array: Union[np.ndarray, torch.Tensor]) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        return array.detach().cpu().numpy()
    return np.asarray(array)


def encode_rle(mask: Union[np.ndarray, torch.Tensor]) -> RLE:
    """
    Args:
        mask: bool (or 0/1) array of spatial shape, e.g. ``(D, H, W)``.

    Returns:
        ``{"size": list(mask.shape), "counts": str}`` (see the module docstring).
    """
    mask = _to_numpy(mask)
    h, w = _view_2d(mask.shape)
    m2d = np.asfortranarray(mask.reshape(h, w).astype(np.uint8, copy=False))
    rle = mask_util.encode(m2d)
    return {"size": list(mask.shape), "counts": rle["counts"].decode("ascii")}


def rle_to_coco(rle: RLE) -> RLE:
    """det3d RLE -> pycocotools RLE (``"size"`` = the 2D view, ``"counts"`` bytes)."""
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise ValueError(f"Not an RLE dict with 'size' and 'counts': {type(rle).__name__}")
    counts = rle["counts"]
    if isinstance(counts, list):
        raise ValueError("Uncompressed RLE (counts as a list) is not a det3d RLE; use encode_rle")
    h, w = _view_2d(rle["size"])
    return {"size": [h, w], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def decode_rle(rle: RLE) -> np.ndarray:
    """Inverse of :func:`encode_rle`: bool array of shape ``rle["size"]``."""
    with warnings.catch_warnings():
        # pycocotools' decode trips numpy 2's copy-keyword DeprecationWarning; harmless.
        warnings.simplefilter("ignore", DeprecationWarning)
        flat = mask_util.decode(rle_to_coco(rle))
    return flat.reshape(tuple(rle["size"])).astype(bool)


def rle_area(rle: RLE) -> int:
    """Number of foreground voxels."""
    return int(mask_util.area(rle_to_coco(rle)))


def rle_areas(rles: Sequence[RLE]) -> np.ndarray:
    """Voxel counts of many RLEs in one pycocotools call, (N,) float64."""
    if not rles:
        return np.zeros(0)
    return mask_util.area([rle_to_coco(r) for r in rles]).astype(np.float64)


def rle_iou(dt_rles: List[RLE], gt_rles: List[RLE], iscrowd: Sequence[bool]) -> np.ndarray:
    """
    IoU of every detection with every ground truth (pycocotools' ``mask.iou``: for a crowd
    ground truth the union is the detection's area).

    Returns:
        float64 array (len(dt_rles), len(gt_rles)).
    """
    if len(iscrowd) != len(gt_rles):
        raise ValueError(f"rle_iou: {len(iscrowd)} iscrowd flags for {len(gt_rles)} gt RLEs")
    if len(dt_rles) == 0 or len(gt_rles) == 0:
        return np.zeros((len(dt_rles), len(gt_rles)), dtype=np.float64)
    sizes = {tuple(r["size"]) for r in list(dt_rles) + list(gt_rles)}
    if len(sizes) != 1:
        raise ValueError(f"rle_iou: RLEs of different shapes {sorted(sizes)}")
    dt = [rle_to_coco(r) for r in dt_rles]
    gt = [rle_to_coco(r) for r in gt_rles]
    return np.asarray(mask_util.iou(dt, gt, [int(bool(c)) for c in iscrowd]), dtype=np.float64)


def rle_to_bbox(rle: RLE) -> List[float]:
    """
    Tight box of the mask, ``[x0, y0, x1, y1]`` / ``[x0, y0, z0, x1, y1, z1]`` with ends
    exclusive (``[a, b+1)``); all zeros for an empty mask. Decodes the mask (O(volume)).
    """
    mask = decode_rle(rle)
    d = mask.ndim
    lo, hi = [0.0] * d, [0.0] * d
    if not mask.any():
        return lo + hi
    for k in range(d):
        axis = box_axis_to_array_axis(k, d)
        proj = mask.any(axis=tuple(a for a in range(d) if a != axis))
        nz = np.flatnonzero(proj)
        lo[k], hi[k] = float(nz[0]), float(nz[-1] + 1)
    return lo + hi


def rle_counts(rle: RLE) -> np.ndarray:
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


def runs_to_rle(starts: np.ndarray, ends: np.ndarray, shape: Sequence[int]) -> RLE:
    """
    Encodes the voxels ``[starts[k], ends[k])`` (positions in the RLE order, sorted, disjoint,
    non-adjacent) of a volume of ``shape`` as ``{"size": list(shape), "counts": str}``.
    """
    return _encode_many([(starts, ends)], shape)[0]


def _encode_many(runs: Iterable[Tuple[np.ndarray, np.ndarray]], shape: Sequence[int]) -> List[RLE]:
    """:func:`runs_to_rle` of many masks of one shape, with a single pycocotools call."""
    r, w = _view_2d(shape)
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


def label_volume_to_rles(
    labels: Union[np.ndarray, torch.Tensor], ids: Optional[Sequence[int]] = None
) -> Dict[int, RLE]:
    """
    RLE of every instance of a label volume, in one pass: the volume is read in RLE order once,
    its runs of equal value are found, and each id's runs become its RLE. Cost: O(volume) time
    and one copy of the volume (in its dtype) in memory, plus O(number of runs); no per-id
    full-volume boolean is built.

    Args:
        labels: int array of spatial shape; 0 = background.
        ids: ids to encode, in this order; default the nonzero ids present, increasing. Absent
            ids get an empty RLE.

    Returns:
        dict id -> RLE, equal to ``encode_rle(labels == id)``.
    """
    labels = _to_numpy(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"label_volume_to_rles: labels must be integers, got {labels.dtype}")
    r, w = _view_2d(labels.shape)
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


def box_mask_to_rle(local: np.ndarray, offset: Sequence[int], shape: Sequence[int]) -> RLE:
    """
    Encodes a mask given only inside a region of the volume, in O(voxels of the region).

    Args:
        local: bool array, the mask inside the region.
        offset: array index of the region's first voxel, one per axis.
        shape: the full volume's shape.

    Returns:
        The RLE of the full-size mask, equal to :func:`encode_rle` of it.
    """
    local = np.asarray(local, dtype=bool)
    shape = tuple(int(s) for s in shape)
    if local.ndim != len(shape) or len(offset) != len(shape):
        raise ValueError(f"box_mask_to_rle: mask {local.shape}, offset {offset}, shape {shape}")
    r, _ = _view_2d(shape)
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


def paint_rles(rles: Sequence[RLE], shape: Sequence[int], values: Sequence[int]) -> np.ndarray:
    """
    Paints RLE masks into an int32 label volume; a voxel keeps the first mask that claims it.

    Args:
        rles: N-D RLEs of ``shape``.
        shape: spatial shape of the volume.
        values: the label of each RLE.

    Returns:
        int32 array of ``shape``, 0 where no mask claims the voxel.
    """
    r, w = _view_2d(shape)
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
