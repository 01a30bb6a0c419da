"""
Ground truth of a dataset record, in the two forms the evaluators need: a label volume (matching,
SEG) and COCO-style annotations (COCO3DEvaluator). Records hold either ``annotations`` or an
``instance_label_file`` (docs/conventions.md); both forms are derived from either, through the one
reader of ground truth, :func:`det3d.data.detection_utils.load_record_labels`, and the one label ->
box routine, :func:`det3d.structures.label_volume.label_objects`.
"""

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from det3d.structures.rle import rle_areas

__all__ = [
    "records_by_id",
    "gt_label_volume",
    "gt_coco_annotations",
    "labels_to_coco_annotations",
    "annotated_slices",
    "fit_shape",
    "SLICES_KEY",
]

# Record keys of CTC time points annotated on some z-slices only (det3d.data.datasets.ctc).
SLICES_KEY = "seg_slices"


def records_by_id(dataset_name: str) -> Dict[object, dict]:
    """``image_id -> record`` of a registered dataset (raises if two records share an id)."""
    from det3d.data import DatasetCatalog

    out: Dict[object, dict] = {}
    for record in DatasetCatalog.get(dataset_name):
        if "image_id" not in record:
            raise KeyError(
                f"Dataset {dataset_name!r}: a record has no 'image_id': {sorted(record)}"
            )
        if record["image_id"] in out:
            raise ValueError(
                f"Dataset {dataset_name!r}: image_id {record['image_id']!r} is repeated"
            )
        out[record["image_id"]] = record
    return out


def record_shape(record: dict) -> Tuple[int, ...]:
    """Spatial shape of a record: ``(depth, height, width)``, or ``(height, width)`` if no depth."""
    if "depth" in record:
        return (int(record["depth"]), int(record["height"]), int(record["width"]))
    return (int(record["height"]), int(record["width"]))


def fit_shape(labels: np.ndarray, shape: Sequence[int], what: str) -> np.ndarray:
    """Reshapes ``labels`` to ``shape`` when they differ only by singleton axes (a 2D volume is
    ``(1, H, W)`` on disk); raises otherwise, naming ``what``."""
    shape = tuple(int(s) for s in shape)
    if labels.shape == shape:
        return labels
    if [s for s in labels.shape if s != 1] == [s for s in shape if s != 1]:
        return labels.reshape(shape)
    raise ValueError(
        f"{what}: ground truth has shape {labels.shape} but the prediction has {shape}"
    )


def gt_label_volume(record: dict) -> np.ndarray:
    """
    The instance label volume of a record, int32, of the record's shape (``(H, W)`` for a record
    without depth): :func:`det3d.data.detection_utils.load_record_labels`, whose rules hold (from
    ``annotations``, non-crowd instances painted in order with ids ``1..N``, a voxel keeping the
    first instance that claims it; a record annotated on some z-slices only gives those slices
    and zeros elsewhere, and evaluators score the annotated slices only, see
    :func:`annotated_slices`).
    """
    from det3d.data.detection_utils import load_record_labels

    name = record.get("instance_label_file") or record.get("file_name", record.get("image_id"))
    return fit_shape(load_record_labels(record)[0], record_shape(record), str(name))


def annotated_slices(record: dict) -> Optional[List[int]]:
    """The z-slices that carry ground truth when only some do (CTC), else None (all of it)."""
    if record.get("instance_label_file") is not None or record.get(SLICES_KEY) is None:
        return None
    return [int(z) for z in record[SLICES_KEY]]


def _corner_size(box, mode, ndim: int) -> List[float]:
    from det3d.structures import BoxMode

    target = BoxMode.XYWH_ABS if ndim == 2 else BoxMode.XYZWHD_ABS
    return [float(v) for v in BoxMode.convert(list(box), BoxMode(mode), target)]


def gt_coco_annotations(
    record: dict, shape: Optional[Sequence[int]] = None
) -> Tuple[List[dict], Tuple[int, ...]]:
    """
    COCO-style ground truth of a record: dicts with ``category_id``, ``bbox`` (corner + size,
    ``[x, y, (z,) w, h, (d)]``), ``area`` (mask voxels, or box volume without a mask),
    ``iscrowd`` and ``segmentation`` (N-D RLE, or None without a mask).

    Args:
        shape: the prediction's spatial shape; a label volume is fitted to it (a 2D image is
            ``(1, H, W)`` on disk). Default: the record's.

    Returns:
        (annotations, spatial shape)
    """
    shape = tuple(shape) if shape is not None else record_shape(record)
    if record.get("instance_label_file") is not None:
        from det3d.data.detection_utils import load_record_labels

        labels, classes = load_record_labels(record)
        labels = fit_shape(labels, shape, record["instance_label_file"])
        return labels_to_coco_annotations(labels, classes), labels.shape
    if "annotations" not in record:
        raise KeyError(
            f"Record {record.get('file_name', record.get('image_id'))!r} has neither "
            f"'annotations' nor 'instance_label_file'"
        )
    out = []
    for a in record["annotations"]:
        seg = a.get("segmentation")
        if seg is not None and not isinstance(seg, dict):
            raise TypeError(
                f"Record {record.get('file_name')!r}: segmentation must be an RLE dict "
                f"(det3d.structures.rle.encode_rle), got {type(seg).__name__}"
            )
        ndim = len(a["bbox"]) // 2
        bbox = _corner_size(a["bbox"], a.get("bbox_mode", 0 if ndim == 2 else 10), ndim)
        if "area" in a:
            area = float(a["area"])
        elif seg is not None:
            area = float(rle_areas([seg])[0])
        else:
            area = float(np.prod(bbox[ndim:]))
        out.append(
            {
                "category_id": int(a["category_id"]),
                "bbox": bbox,
                "area": area,
                "iscrowd": int(a.get("iscrowd", 0)),
                "segmentation": seg,
            }
        )
    return out, shape


def labels_to_coco_annotations(
    labels: np.ndarray, instance_classes: Optional[dict] = None
) -> List[dict]:
    """
    Annotations (see :func:`gt_coco_annotations`: ``bbox`` corner + size) of every object of a
    label volume, with its ``instance_id``; built by
    :func:`det3d.data.datasets.label_volume_to_annotations`.
    """
    from det3d.data.datasets.label_volumes import label_volume_to_annotations

    classes = {int(k): int(v) for k, v in (instance_classes or {}).items()}
    ndim = labels.ndim
    out = []
    for a in label_volume_to_annotations(labels, classes):
        lo, hi = a["bbox"][:ndim], a["bbox"][ndim:]
        out.append(
            {
                "category_id": a["category_id"],
                "bbox": lo + [e - s for s, e in zip(lo, hi)],
                "area": float(a["area"]),
                "iscrowd": 0,
                "segmentation": a["segmentation"],
                "instance_id": a["id"],
            }
        )
    return out
