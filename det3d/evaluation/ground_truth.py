"""
Ground truth of a dataset record, in the two forms the evaluators need: a label volume (matching,
SEG) and COCO-style annotations (COCO3DEvaluator). Records hold either ``annotations`` or an
``instance_label_file`` (DESIGN.md); both forms are derived from either.
"""

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from det3d.structures.rle import label_volume_to_rles, paint_rles, rle_areas

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


def _read_labels(record: dict) -> np.ndarray:
    from det3d.data.io import read_labels

    return read_labels(record["instance_label_file"])


def gt_label_volume(record: dict) -> np.ndarray:
    """
    The instance label volume of a record, int32. From ``annotations``, non-crowd instances are
    painted in order with ids ``1..N`` (a voxel keeps the first instance that claims it); crowd
    regions are left as background. A record annotated on some z-slices only (CTC,
    ``record["seg_slices"]`` and ``record["seg_slice_files"]``) gives those slices and zeros
    elsewhere; evaluators then score the annotated slices only (see :func:`annotated_slices`).
    """
    if record.get("instance_label_file") is not None:
        return fit_shape(_read_labels(record), record_shape(record), record["instance_label_file"])
    if record.get(SLICES_KEY) is not None:
        from det3d.data.io import read_labels

        labels = np.zeros(record_shape(record), np.int32)
        for z, path in zip(record[SLICES_KEY], record["seg_slice_files"]):
            labels[int(z)] = fit_shape(read_labels(path), labels.shape[1:], path)
        return labels
    if "annotations" not in record:
        raise KeyError(
            f"Record {record.get('file_name', record.get('image_id'))!r} has neither "
            f"'annotations' nor 'instance_label_file'"
        )
    anns = [a for a in record["annotations"] if not a.get("iscrowd", 0)]
    for a in anns:
        if "segmentation" not in a:
            raise KeyError(
                f"Record {record.get('file_name')!r}: an annotation has no 'segmentation'; "
                f"instance matching and SEG need masks"
            )
    rles = [a["segmentation"] for a in anns]
    return paint_rles(rles, record_shape(record), range(1, len(anns) + 1))


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
        labels = fit_shape(_read_labels(record), shape, record["instance_label_file"])
        return labels_to_coco_annotations(labels, record.get("instance_classes")), labels.shape
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
    """Annotations (see :func:`gt_coco_annotations`) of every object of a label volume."""
    classes = {int(k): int(v) for k, v in (instance_classes or {}).items()}
    sizes = np.bincount(labels.reshape(-1)) if labels.size else np.zeros(1, np.int64)
    ids = np.flatnonzero(sizes[1:]) + 1
    rles = label_volume_to_rles(labels, ids)
    regions = ndimage.find_objects(labels, max_label=int(ids[-1]) if ids.size else 0)
    out = []
    for i in ids:
        sl = regions[i - 1]
        corner = [float(s.start) for s in reversed(sl)]
        size = [float(s.stop - s.start) for s in reversed(sl)]
        out.append(
            {
                "category_id": classes.get(int(i), 0),
                "bbox": corner + size,
                "area": float(sizes[i]),
                "iscrowd": 0,
                "segmentation": rles[int(i)],
                "instance_id": int(i),
            }
        )
    return out
