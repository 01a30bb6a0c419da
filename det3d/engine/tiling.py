"""
Tiled inference for volumes of any size, shared by every meta-architecture.

A volume is covered by equal, overlapping tiles (:class:`TileGrid`). The tiles' *cores* partition
the volume: the boundary between two neighbours lies in the middle of their overlap. A tile runs
through the model like a whole volume (any meta-architecture that returns ``"instance_labels"``);
then :func:`select_owned` keeps the objects whose centroid lies in the tile's core, so each object
is kept by the one tile that sees it whole, and :class:`TileStitcher` paints the kept objects into
the output label volume, in tile order, with ids unique over the volume.

Two tiles may compute slightly different centroids for an object near their common core
boundary (their masks differ by the context each tile sees). So that such an object is neither
lost nor kept twice, a tile accepts centroids up to ``tolerance`` voxels beyond its core and the
stitcher leaves out an object whose voxels are already claimed for more than half (the rule the
models use for duplicates within a volume, ``MODEL.ROI_HEADS.LABELS_OVERLAP_THRESH_TEST``).

An object whose centroid is in the core but that reaches the tile's face (where the face is not
the volume's border) is cut by the tile: it is larger than the margin between core and face
(about half the overlap). ``cut_objects="error"`` refuses it, naming ``TEST.TILE.OVERLAP``.
"""

import math
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from scipy import ndimage

__all__ = [
    "Tile",
    "TileGrid",
    "TileResult",
    "TileStitcher",
    "ObjectRecord",
    "CutObjectError",
    "axis_tiles",
    "select_owned",
    "tile_size_divisibility",
    "tolerance_for",
]

AXIS_NAMES = ("z", "y", "x")
CUT_OBJECT_POLICIES = ("error", "keep")


class CutObjectError(RuntimeError):
    """An object reaches a tile's face: the overlap is too small for it (names the keys)."""


@dataclass(frozen=True)
class Tile:
    """
    One tile of a :class:`TileGrid`, in voxels of the volume, array order ``(D, H, W)``.

    Attributes:
        index: position in the grid's order (C order over the per-axis tiles).
        start, stop: the tile's extent, ``[start, stop)`` per axis.
        core_start, core_stop: the tile's core, inside the extent; cores partition the volume.
        interior_lo, interior_hi: per axis, whether the low / high face lies inside the volume
            (a neighbour tile continues there).
    """

    index: int
    start: Tuple[int, ...]
    stop: Tuple[int, ...]
    core_start: Tuple[int, ...]
    core_stop: Tuple[int, ...]
    interior_lo: Tuple[bool, ...]
    interior_hi: Tuple[bool, ...]

    @property
    def slices(self) -> Tuple[slice, ...]:
        return tuple(slice(a, b) for a, b in zip(self.start, self.stop))

    @property
    def shape(self) -> Tuple[int, ...]:
        return tuple(b - a for a, b in zip(self.start, self.stop))


def axis_tiles(length: int, size: int, overlap: int) -> List[Tuple[int, int, int, int]]:
    """
    Tiles along one axis: ``(start, stop, core_start, core_stop)`` each.

    A length up to ``size`` is one tile. Otherwise ``n = ceil((length - overlap) / (size -
    overlap))`` tiles of exactly ``size`` voxels, spread evenly from 0 to ``length`` (so
    neighbours overlap by at least ``overlap``); core boundaries lie in the middle of each overlap.
    """
    if length <= size:
        return [(0, length, 0, length)]
    n = math.ceil((length - overlap) / (size - overlap))
    starts = [i * (length - size) // (n - 1) for i in range(n)]
    stops = [s + size for s in starts]
    bounds = [0] + [(starts[i + 1] + stops[i]) // 2 for i in range(n - 1)] + [length]
    return [(starts[i], stops[i], bounds[i], bounds[i + 1]) for i in range(n)]


class TileGrid:
    """
    Overlapping tiles covering a volume of ``shape`` (array order), in C order.

    Args:
        shape: ``(D, H, W)`` of the volume.
        size: tile size per axis (a tile is smaller only where the volume is).
        overlap: overlap per axis; each must be smaller than the size.
    """

    def __init__(self, shape: Sequence[int], size: Sequence[int], overlap: Sequence[int]):
        self.shape = tuple(int(s) for s in shape)
        self.size = tuple(int(s) for s in size)
        self.overlap = tuple(int(o) for o in overlap)
        if not len(self.shape) == len(self.size) == len(self.overlap):
            raise ValueError(
                f"TileGrid: shape {shape}, size {size} and overlap {overlap} differ in length"
            )
        for a, (s, o) in enumerate(zip(self.size, self.overlap)):
            if s < 1 or o < 0 or o >= s:
                raise ValueError(
                    f"TileGrid: on axis {AXIS_NAMES[a]} the overlap {o} must be >= 0 and smaller "
                    f"than the tile size {s}"
                )
        per_axis = [axis_tiles(n, s, o) for n, s, o in zip(self.shape, self.size, self.overlap)]
        self.counts = tuple(len(p) for p in per_axis)
        self.tiles: List[Tile] = []
        for index, combo in enumerate(np.ndindex(*self.counts)):
            parts = [per_axis[a][i] for a, i in enumerate(combo)]
            self.tiles.append(
                Tile(
                    index=index,
                    start=tuple(p[0] for p in parts),
                    stop=tuple(p[1] for p in parts),
                    core_start=tuple(p[2] for p in parts),
                    core_stop=tuple(p[3] for p in parts),
                    interior_lo=tuple(p[0] > 0 for p in parts),
                    interior_hi=tuple(p[1] < n for p, n in zip(parts, self.shape)),
                )
            )

    def __len__(self) -> int:
        return len(self.tiles)

    def __iter__(self):
        return iter(self.tiles)

    def __getitem__(self, i: int) -> Tile:
        return self.tiles[i]


def tile_size_divisibility(model, ndim: int = 3) -> Tuple[int, ...]:
    """
    The per-axis size divisibility a model pads its inputs to (``model.backbone.size_divisibility``
    or ``model.size_divisibility``; 1 where it has none). A 2D value (a 2.5D model's slice
    backbone) applies to ``(H, W)``; ``D`` then needs 1.
    """
    value = getattr(getattr(model, "backbone", None), "size_divisibility", None)
    if value is None:
        value = getattr(model, "size_divisibility", 0)
    if isinstance(value, (list, tuple)):
        value = tuple(int(v) for v in value)
        value = (1,) * (ndim - len(value)) + value
    else:
        value = (int(value),) * ndim
    return tuple(max(v, 1) for v in value)


# ------------------------------------------------------------------------------------------- #
# Ownership
# ------------------------------------------------------------------------------------------- #
@dataclass
class TileResult:
    """
    What one tile contributes: its owned objects, as a label volume over the tile's extent.

    Attributes:
        index: the tile's index.
        labels: int32 ``tile.shape``, owned objects as ``1..K``, everything else 0 (None when
            the tile was skipped as background).
        scores, classes: per owned object ``k`` (label ``k + 1``), its score and class index.
        skipped: True when the tile held no foreground and did not run.
    """

    index: int
    labels: Optional[np.ndarray] = None
    scores: List[float] = field(default_factory=list)
    classes: List[int] = field(default_factory=list)
    skipped: bool = False


def select_owned(
    output: dict,
    tile: Tile,
    tolerance: Sequence[float],
    cut_objects: str = "error",
) -> TileResult:
    """
    Keeps the objects of one tile's model output whose centroid lies in the tile's core.

    Args:
        output: the model's output for the tile: ``"instance_labels"`` int (``tile.shape``), where
            label ``i + 1`` is row ``i`` of ``"instances"`` (``scores``, ``pred_classes``; both
            optional).
        tile: the tile.
        tolerance: per axis, how far (voxels) beyond an interior core boundary a centroid may lie.
        cut_objects: ``"error"`` (raise :class:`CutObjectError` for a kept object that reaches an
            interior face of the tile) or ``"keep"``.

    Returns:
        TileResult with the kept objects relabelled ``1..K`` in increasing original label.
    """
    if cut_objects not in CUT_OBJECT_POLICIES:
        raise ValueError(
            f"TEST.TILE.CUT_OBJECTS must be one of {CUT_OBJECT_POLICIES}, got {cut_objects!r}"
        )
    labels = output["instance_labels"]
    if tuple(labels.shape) != tile.shape:
        raise ValueError(
            f"tile {tile.index}: the model returned instance_labels of shape "
            f"{tuple(labels.shape)} for a tile of shape {tile.shape}"
        )
    flat = labels.reshape(-1).long()
    num = int(flat.max()) + 1 if flat.numel() else 1
    counts = torch.bincount(flat, minlength=num).double()
    present = torch.nonzero(counts[1:] > 0).flatten() + 1
    if len(present) == 0:
        return TileResult(tile.index, np.zeros(tile.shape, np.int32))
    keep = torch.ones(len(present), dtype=torch.bool, device=labels.device)
    for axis in range(labels.dim()):
        view = [1] * labels.dim()
        view[axis] = -1
        coord = torch.arange(tile.shape[axis], dtype=torch.float64, device=labels.device)
        coord = coord.view(view).expand(tile.shape).reshape(-1)
        centroid = torch.bincount(flat, weights=coord, minlength=num)[present] / counts[present]
        centroid = centroid + tile.start[axis]  # volume coordinates (mean voxel index)
        if tile.interior_lo[axis]:
            keep &= centroid >= tile.core_start[axis] - 0.5 - tolerance[axis]
        if tile.interior_hi[axis]:
            keep &= centroid < tile.core_stop[axis] - 0.5 + tolerance[axis]
    owned = present[keep]
    if cut_objects == "error":
        _check_not_cut(labels, owned, tile)
    lut = torch.zeros(num, dtype=torch.int32, device=labels.device)
    lut[owned] = torch.arange(1, len(owned) + 1, dtype=torch.int32, device=labels.device)
    local = lut[labels.long()].cpu().numpy()
    instances = output.get("instances")
    rows = (owned - 1).cpu()
    scores = _field(instances, "scores", rows, 1.0)
    classes = _field(instances, "pred_classes", rows, 0)
    return TileResult(tile.index, local, [float(s) for s in scores], [int(c) for c in classes])


def _field(instances, name: str, rows: torch.Tensor, default) -> list:
    if instances is None or not instances.has(name):
        return [default] * len(rows)
    return instances.get(name).detach().cpu()[rows].tolist()


def _check_not_cut(labels: torch.Tensor, owned: torch.Tensor, tile: Tile) -> None:
    if len(owned) == 0:
        return
    for axis in range(labels.dim()):
        for interior, index in ((tile.interior_lo[axis], 0), (tile.interior_hi[axis], -1)):
            if not interior:
                continue
            face = torch.unique(labels.select(axis, index))
            cut = face[torch.isin(face, owned)]
            if len(cut):
                raise CutObjectError(
                    f"tile {tile.index} (voxels {_fmt_extent(tile)}): object {int(cut[0])} of this "
                    f"tile lies in its core but reaches its {'low' if index == 0 else 'high'} "
                    f"{AXIS_NAMES[axis]} face, so the tile cuts it: objects must fit within about "
                    f"half the overlap around the core. Raise TEST.TILE.OVERLAP (and "
                    f"TEST.TILE.SIZE) on axis {AXIS_NAMES[axis]}, or set TEST.TILE.CUT_OBJECTS "
                    f"keep to keep cut objects"
                )


def _fmt_extent(tile: Tile) -> str:
    return ", ".join(f"{n} {a}:{b}" for n, a, b in zip(AXIS_NAMES, tile.start, tile.stop))


# ------------------------------------------------------------------------------------------- #
# Stitching
# ------------------------------------------------------------------------------------------- #
@dataclass
class ObjectRecord:
    """One object as painted into the output: ``bbox`` ``[start, stop)`` per axis (D, H, W),
    ``centroid`` mean voxel index per axis, ``voxels`` its voxel count."""

    label: int
    class_id: int
    score: float
    bbox: Tuple[int, ...]
    centroid: Tuple[float, ...]
    voxels: int


class TileStitcher:
    """
    Paints tiles' owned objects into an output label array, one tile at a time, in tile order.

    An object is painted into the voxels that are still free (0); one whose voxels are claimed for
    more than ``overlap_threshold`` of its size is left out (a duplicate from a neighbour tile).
    Painted voxels never change afterwards, so each object's record (computed from the voxels it
    got) stays true for the finished volume.

    Resumable: ``next_id`` is the first id not yet committed; ids at or above it found in a
    tile's region are leftovers of an interrupted attempt at that tile and are cleared first.

    Args:
        output: array-like ``(D, H, W)`` int32 supporting slice reads and writes (a zarr array).
        next_id: the first free id (1 for a fresh volume).
        overlap_threshold: see above.
    """

    def __init__(self, output, next_id: int = 1, overlap_threshold: float = 0.5):
        self.output = output
        self.next_id = int(next_id)
        self.overlap_threshold = float(overlap_threshold)

    def paint(self, tile: Tile, result: TileResult) -> List[ObjectRecord]:
        """Paints ``result`` (of ``tile``); returns the records of the objects painted."""
        if result.skipped or result.labels is None:
            return []
        local = result.labels
        region = np.asarray(self.output[tile.slices])
        stale = region >= self.next_id
        if stale.any():
            region[stale] = 0
        num = len(result.scores)
        order = sorted(range(num), key=lambda k: (-result.scores[k], k))
        boxes = ndimage.find_objects(local, max_label=num)
        records = []
        for k in order:
            if boxes[k] is None:
                continue
            box = boxes[k]
            mine = local[box] == k + 1
            sub = region[box]  # a view: painting it paints region
            size = int(mine.sum())
            free = mine & (sub == 0)
            nfree = int(free.sum())
            if nfree == 0 or size - nfree > self.overlap_threshold * size:
                continue
            label = self.next_id
            self.next_id += 1
            sub[free] = label
            idx = np.nonzero(free)
            start = [s.start + t for s, t in zip(box, tile.start)]
            records.append(
                ObjectRecord(
                    label=label,
                    class_id=int(result.classes[k]),
                    score=float(result.scores[k]),
                    bbox=tuple(int(i.min()) + s for i, s in zip(idx, start))
                    + tuple(int(i.max()) + 1 + s for i, s in zip(idx, start)),
                    centroid=tuple(float(i.mean()) + s for i, s in zip(idx, start)),
                    voxels=nfree,
                )
            )
        self.output[tile.slices] = region
        return records


def tolerance_for(overlap: Sequence[int]) -> Tuple[float, ...]:
    """How far beyond its core a tile accepts centroids: an eighth of the overlap per axis."""
    return tuple(o / 8.0 for o in overlap)

