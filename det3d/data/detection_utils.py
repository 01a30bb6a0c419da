"""
Helpers shared by the mapper, the loaders and the evaluators: the ground truth of a record as a
label volume (the one reader, :func:`load_record_labels`), and label volumes as :class:`Instances`.

Ground truth of a record comes from one of:

* ``instance_label_file`` (+ optional ``instance_classes`` id -> category index);
* ``annotations`` (RLE ``segmentation`` of each instance; ``iscrowd`` ones are left out and where
  two masks overlap the earlier annotation keeps the voxel, the rule of
  :func:`det3d.structures.rle.paint_rles` and of the predicted ``instance_labels``);
* ``seg_slices`` + ``seg_slice_files`` (sparse GT, e.g. CTC ``man_seg_TTT_ZZZ.tif``): only the
  listed z-slices are annotated. :func:`load_record_labels` returns a volume that is 0 outside
  them; use ``record["seg_slices"]`` to know which slices are ground truth.

Training targets (:func:`label_volume_to_instances`), the evaluators' ground truth
(``det3d.evaluation.ground_truth``) and the COCO-3D export all read it here, and take boxes from
:func:`det3d.structures.label_volume.label_objects`.
"""

import logging
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from det3d.structures.label_volume import compact_labels, label_objects

from .io import labels_to_int32, read_labels

__all__ = [
    "load_record_labels",
    "load_record_label_slices",
    "annotations_to_label_volume",
    "label_volume_to_instances",
    "record_has_instances",
    "is_sparse_record",
    "record_volume_shape",
]

logger = logging.getLogger(__name__)


def is_sparse_record(record: dict) -> bool:
    """True where only some z-slices are annotated (``seg_slices``)."""
    return record.get("seg_slices") is not None and record.get("instance_label_file") is None


def record_volume_shape(record: dict) -> Tuple[int, int, int]:
    """``(depth, height, width)`` of a record (a record without ``depth`` is 2D: depth 1)."""
    return (int(record.get("depth", 1)), int(record["height"]), int(record["width"]))


def annotations_to_label_volume(
    annotations: List[dict], shape: Sequence[int], name: str = "annotations"
) -> Tuple[np.ndarray, Dict[int, int]]:
    """
    Paints the RLE masks of non-crowd annotations into one int32 volume, id ``k + 1`` for the
    ``k``-th kept annotation; where masks overlap, the earlier annotation keeps the voxel.

    Returns:
        labels (int32 ``shape``), classes (id -> ``category_id``).
    """
    from det3d.structures.rle import paint_rles, rle_areas

    kept = [a for a in annotations if not a.get("iscrowd", 0)]
    rles = []
    for a in kept:
        if "segmentation" not in a:
            raise KeyError(f"{name}: an annotation has no 'segmentation' (RLE mask): {sorted(a)}")
        rle = a["segmentation"]
        size = [int(v) for v in rle.get("size", [])] if isinstance(rle, dict) else None
        if size != list(shape):
            # a 2D mask (H, W) of a (1, H, W) volume: the same RLE (docs/conventions.md)
            if size is None or not _same_but_singletons(size, shape):
                raise ValueError(
                    f"{name}: annotation mask has shape {size if size else type(rle).__name__}, "
                    f"the volume is {tuple(shape)}"
                )
            rle = dict(rle, size=list(shape))
        rles.append(rle)
    labels = paint_rles(rles, tuple(shape), range(1, len(rles) + 1))
    classes = {k + 1: int(a.get("category_id", 0)) for k, a in enumerate(kept)}
    if rles:
        overlap = int(rle_areas(rles).sum()) - int(np.count_nonzero(labels))
        if overlap:
            logger.warning(
                f"{name}: {overlap} voxels claimed by two annotations; the earlier one kept"
            )
    return labels, classes


def _same_but_singletons(a: Sequence[int], b: Sequence[int]) -> bool:
    """Shapes that differ only by size-1 axes, with the same last axis (same RLE layout)."""
    return [n for n in a if n != 1] == [n for n in b if n != 1] and a[-1:] == list(b)[-1:]


def load_record_labels(record: dict) -> Tuple[np.ndarray, Dict[int, int]]:
    """
    Ground truth of a record as an instance label volume: the one reader of ground truth, for
    training, evaluation and export.

    Returns:
        labels: int32 ``(depth, height, width)`` (0 = background, or unannotated for sparse
            records), classes: dict instance id -> category index (0 where not given).

    Raises:
        ValueError: the label volume's shape differs from the record's (files named), or the
            record has no ground truth.
    """
    shape = record_volume_shape(record)
    name = record.get("file_name", "record")
    if record.get("instance_label_file") is not None:
        path = record["instance_label_file"]
        labels = read_labels(path)
        if labels.shape != shape:
            raise ValueError(
                f"Shape mismatch: labels {path} are (D, H, W) = {labels.shape}, image {name} is {shape}"
            )
        cmap = record.get("instance_classes") or {}
        _, ids = compact_labels(labels)
        return labels, {int(i): int(cmap.get(int(i), 0)) for i in ids}
    if record.get("seg_slices") is not None:
        labels = np.zeros(shape, np.int32)
        for z, path in zip(record["seg_slices"], record["seg_slice_files"]):
            sl = read_labels(path)
            if sl.shape[0] != 1 or sl.shape[1:] != shape[1:]:
                raise ValueError(
                    f"Shape mismatch: slice labels {path} are {sl.shape}, image {name} slices are "
                    f"(H, W) = {shape[1:]}"
                )
            labels[int(z)] = sl[0]
        return labels, {int(i): 0 for i in compact_labels(labels)[1]}
    if "annotations" in record:
        return annotations_to_label_volume(record["annotations"], shape, name)
    raise ValueError(
        f"{name}: record has neither 'annotations', 'instance_label_file' nor 'seg_slices'"
    )


def load_record_label_slices(
    record: dict, zs: Sequence[int]
) -> Tuple[np.ndarray, Dict[int, int]]:
    """
    The ground truth of z-slices ``zs`` of a record, reading only those slices where the format
    allows: a label file is memory-mapped (uncompressed TIFF) or read by chunks (zarr), sparse
    records read only the listed slice files; ``annotations`` (RLE of the whole volume) are
    decoded whole.

    Returns:
        labels: int32 ``(len(zs), height, width)``; classes: id -> category index for the ids
        present in them.

    Raises:
        ValueError: a shape mismatch (files named), or a slice that a sparse record does not
            annotate.
    """
    zs = [int(z) for z in zs]
    shape = tuple(int(record[k]) for k in ("depth", "height", "width"))
    name = record.get("file_name", "record")
    for z in zs:
        if not 0 <= z < shape[0]:
            raise IndexError(f"{name}: slice {z} is outside the volume's {shape[0]} slices")
    if record.get("instance_label_file") is not None:
        from .io import read_slices, read_volume

        path = record["instance_label_file"]
        vol = read_volume(path)
        if vol.shape[0] != 1 or tuple(vol.shape[1:]) != shape:
            raise ValueError(
                f"Shape mismatch: labels {path} are (C, D, H, W) = {tuple(vol.shape)}, image "
                f"{name} is {shape}"
            )
        labels = labels_to_int32(read_slices(vol, zs)[0], path)
        cmap = record.get("instance_classes") or {}
        return labels, {int(i): int(cmap.get(int(i), 0)) for i in np.unique(labels) if i != 0}
    if record.get("seg_slices") is not None:
        files = dict(zip((int(z) for z in record["seg_slices"]), record["seg_slice_files"]))
        labels = np.zeros((len(zs),) + shape[1:], np.int32)
        for k, z in enumerate(zs):
            if z not in files:
                raise ValueError(
                    f"{name}: slice {z} is not annotated (seg_slices {sorted(files)})"
                )
            sl = read_labels(files[z])
            if sl.shape[0] != 1 or sl.shape[1:] != shape[1:]:
                raise ValueError(
                    f"Shape mismatch: slice labels {files[z]} are {sl.shape}, image {name} "
                    f"slices are (H, W) = {shape[1:]}"
                )
            labels[k] = sl[0]
        return labels, {int(i): 0 for i in np.unique(labels) if i != 0}
    labels, classes = load_record_labels(record)
    labels = labels[zs]
    present = set(np.unique(labels).tolist())
    return labels, {i: c for i, c in classes.items() if i in present}


def record_has_instances(record: dict) -> bool:
    """Whether a record's ground truth holds at least one (non-crowd) instance."""
    if record.get("instance_label_file") is not None:
        from .io import read_volume

        return bool(np.any(np.asarray(read_volume(record["instance_label_file"]))))
    if "annotations" in record:
        return any(not a.get("iscrowd", 0) for a in record["annotations"])
    if record.get("seg_slices") is not None:
        return bool(np.any(load_record_labels(record)[0]))
    return False


def label_volume_to_instances(
    labels: np.ndarray, classes: Dict[int, int], image_size: Optional[Sequence[int]] = None
):
    """
    Turns a label volume into training targets.

    Args:
        labels: int ``(*spatial)``; every nonzero id present is one instance.
        classes: id -> category index (missing ids: 0).

    Returns:
        Instances with ``gt_boxes`` (Boxes, tight around each mask: voxels ``a..b`` give
        ``[a, b + 1)``), ``gt_classes`` (int64), ``gt_masks`` (BitMasks ``(N, *spatial)``),
        instances in increasing id order.
    """
    from det3d.structures import Boxes, Instances
    from det3d.structures.masks import BitMasks

    labels = labels_to_int32(np.asarray(labels))
    ndim = labels.ndim
    objects = label_objects(labels)
    ids_arr = objects.ids.astype(np.int32)
    masks = labels[None] == ids_arr.reshape((-1,) + (1,) * ndim)
    inst = Instances(tuple(image_size) if image_size is not None else labels.shape)
    inst.gt_boxes = Boxes(torch.from_numpy(objects.boxes).reshape(-1, 2 * ndim))
    inst.gt_classes = torch.tensor(
        [int(classes.get(int(i), 0)) for i in objects.ids], dtype=torch.int64
    )
    inst.gt_masks = BitMasks(torch.from_numpy(masks))
    return inst
