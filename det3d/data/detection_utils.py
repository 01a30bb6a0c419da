"""
Helpers shared by the mapper, the loaders and the evaluators: ground truth of a record as a label
volume, and label volumes as :class:`Instances`.

Ground truth of a record comes from one of:

* ``instance_label_file`` (+ optional ``instance_classes`` id -> category index);
* ``annotations`` (RLE ``segmentation`` of each instance; ``iscrowd`` ones are left out and where
  two masks overlap the later annotation wins);
* ``seg_slices`` + ``seg_slice_files`` (sparse GT, e.g. CTC ``man_seg_TTT_ZZZ.tif``): only the
  listed z-slices are annotated. :func:`load_record_labels` returns a volume that is 0 outside
  them; use ``record["seg_slices"]`` to know which slices are ground truth.
"""

import logging
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from scipy import ndimage

from .io import labels_to_int32, read_labels

__all__ = [
    "load_record_labels",
    "load_record_label_slices",
    "annotations_to_label_volume",
    "label_volume_to_instances",
    "record_has_instances",
    "is_sparse_record",
]

logger = logging.getLogger(__name__)


def is_sparse_record(record: dict) -> bool:
    """True where only some z-slices are annotated (``seg_slices``)."""
    return record.get("seg_slices") is not None and record.get("instance_label_file") is None


def annotations_to_label_volume(
    annotations: List[dict], shape: Sequence[int], name: str = "annotations"
) -> Tuple[np.ndarray, Dict[int, int]]:
    """
    Paints the RLE masks of non-crowd annotations into one int32 volume, id ``k + 1`` for the
    ``k``-th kept annotation; later annotations win where masks overlap.

    Returns:
        labels (int32 ``shape``), classes (id -> ``category_id``).
    """
    from det3d.structures.rle import decode_rle

    labels = np.zeros(tuple(shape), np.int32)
    classes: Dict[int, int] = {}
    overlap = 0
    for anno in annotations:
        if anno.get("iscrowd", 0):
            continue
        mask = decode_rle(anno["segmentation"]).astype(bool)
        if mask.shape != tuple(shape):
            raise ValueError(
                f"{name}: annotation mask has shape {mask.shape}, the volume is {tuple(shape)}"
            )
        inst = len(classes) + 1
        overlap += int(np.count_nonzero(labels[mask]))
        labels[mask] = inst
        classes[inst] = int(anno.get("category_id", 0))
    if overlap:
        logger.warning(f"{name}: {overlap} voxels claimed by two annotations; the later one kept")
    return labels, classes


def load_record_labels(record: dict) -> Tuple[np.ndarray, Dict[int, int]]:
    """
    Ground truth of a record as an instance label volume.

    Returns:
        labels: int32 ``(depth, height, width)`` (0 = background, or unannotated for sparse
            records), classes: dict instance id -> category index (0 where not given).

    Raises:
        ValueError: the label volume's shape differs from the record's (files named), or the
            record has no ground truth.
    """
    shape = tuple(int(record[k]) for k in ("depth", "height", "width"))
    name = record.get("file_name", "record")
    if record.get("instance_label_file") is not None:
        path = record["instance_label_file"]
        labels = read_labels(path)
        if labels.shape != shape:
            raise ValueError(
                f"Shape mismatch: labels {path} are (D, H, W) = {labels.shape}, image {name} is {shape}"
            )
        cmap = record.get("instance_classes") or {}
        ids = np.unique(labels)
        classes = {int(i): int(cmap.get(int(i), 0)) for i in ids if i != 0}
        return labels, classes
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
        return labels, {int(i): 0 for i in np.unique(labels) if i != 0}
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
    objects = ndimage.find_objects(labels)
    ids = [i + 1 for i, sl in enumerate(objects) if sl is not None]
    boxes = np.zeros((len(ids), 2 * ndim), np.float32)
    for k, inst in enumerate(ids):
        sl = objects[inst - 1]
        boxes[k, :ndim] = [s.start for s in sl][::-1]
        boxes[k, ndim:] = [s.stop for s in sl][::-1]
    ids_arr = np.asarray(ids, np.int32)
    masks = labels[None] == ids_arr.reshape((-1,) + (1,) * ndim)
    inst = Instances(tuple(image_size) if image_size is not None else labels.shape)
    inst.gt_boxes = Boxes(torch.from_numpy(boxes).reshape(-1, 2 * ndim))
    inst.gt_classes = torch.tensor([int(classes.get(i, 0)) for i in ids], dtype=torch.int64)
    inst.gt_masks = BitMasks(torch.from_numpy(masks))
    return inst
