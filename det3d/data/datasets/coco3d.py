"""
COCO-3D: COCO's instance json extended to volumes (format in ``docs/coco3d.md``).

* images: ``id``, ``file_name`` (relative to ``image_root``), ``depth``, ``height``, ``width``,
  ``spacing`` ``[z, y, x]`` µm;
* annotations: ``id``, ``image_id``, ``category_id``, ``bbox`` ``[x, y, z, w, h, d]``
  (``BoxMode.XYZWHD_ABS``), ``segmentation`` (RLE of the instance volume, ``size`` ``[D, H, W]``,
  :func:`det3d.structures.rle.encode_rle`), ``area`` (voxels), ``iscrowd``;
* categories: ``id``, ``name``.
"""

import logging
import os
from typing import Dict, List, Optional, Sequence

from ..catalog import DatasetCatalog, MetadataCatalog
from ..detection_utils import is_sparse_record, load_record_labels
from ..io import check_spacing
from .label_volumes import ClassMap, label_volume_to_annotations, load_label_volume_dataset

__all__ = ["load_coco3d_json", "register_coco3d_instances", "convert_to_coco3d"]

logger = logging.getLogger(__name__)


def load_coco3d_json(
    json_file: str, image_root: str, dataset_name: Optional[str] = None
) -> List[dict]:
    """
    Reads a COCO-3D json file into records (docs/conventions.md). ``category_id`` of the records is
    the contiguous index into the categories sorted by id; the mapping is stored in the metadata of
    ``dataset_name`` (``thing_dataset_id_to_contiguous_id``) with ``thing_classes``.

    Raises:
        FileNotFoundError / ValueError naming ``json_file`` for a missing, unparsable or
        inconsistent file (unknown image or category id, mask size != [D, H, W]).
    """
    from det3d.structures import BoxMode
    from det3d.utils.file_io import read_json

    data = read_json(json_file, "COCO-3D json")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise ValueError(f"{json_file}: missing the {key!r} list of a COCO-3D file")
    cats = sorted(data["categories"], key=lambda c: c["id"])
    id_map = {c["id"]: i for i, c in enumerate(cats)}
    thing_classes = [c["name"] for c in cats]
    if dataset_name is not None:
        MetadataCatalog.get(dataset_name).set(
            thing_classes=thing_classes,
            thing_dataset_id_to_contiguous_id=id_map,
            json_file=json_file,
            image_root=image_root,
            evaluator_type="coco3d",
        )
    records: Dict[int, dict] = {}
    for img in data["images"]:
        d = int(img.get("depth", 1))
        records[img["id"]] = {
            "file_name": os.path.join(image_root, img["file_name"]),
            "image_id": img["id"],
            "depth": d,
            "height": int(img["height"]),
            "width": int(img["width"]),
            "spacing": check_spacing(
                img.get("spacing", (1.0, 1.0, 1.0)), f"{json_file}: image {img.get('id')!r}"
            ),
            "annotations": [],
        }
    for ann in data["annotations"]:
        rec = records.get(ann["image_id"])
        if rec is None:
            raise ValueError(
                f"{json_file}: annotation {ann.get('id')} names unknown image {ann['image_id']}"
            )
        if ann["category_id"] not in id_map:
            raise ValueError(
                f"{json_file}: annotation {ann.get('id')} has unknown category {ann['category_id']}"
            )
        seg = ann["segmentation"]
        shape = [rec["depth"], rec["height"], rec["width"]]
        if not isinstance(seg, dict) or list(seg.get("size", [])) != shape:
            raise ValueError(
                f"{json_file}: annotation {ann.get('id')} segmentation must be an RLE of size "
                f"{shape} (image {rec['file_name']}), got {seg.get('size') if isinstance(seg, dict) else type(seg).__name__}"
            )
        bbox = [float(v) for v in ann["bbox"]]
        if len(bbox) != 6:
            raise ValueError(
                f"{json_file}: annotation {ann.get('id')} bbox must be [x, y, z, w, h, d]"
            )
        anno = {
            "bbox": bbox,
            "bbox_mode": BoxMode.XYZWHD_ABS,
            "category_id": id_map[ann["category_id"]],
            "segmentation": seg,
            "iscrowd": int(ann.get("iscrowd", 0)),
        }
        for k in ("area", "id"):
            if k in ann:
                anno[k] = ann[k]
        rec["annotations"].append(anno)
    return list(records.values())


def register_coco3d_instances(
    name: str, metadata: Optional[dict], json_file: str, image_root: str
) -> None:
    """Registers a COCO-3D json file as ``name`` (loaded lazily); ``metadata`` is added."""
    DatasetCatalog.register(name, lambda: load_coco3d_json(json_file, image_root, name))
    MetadataCatalog.get(name).set(
        json_file=json_file, image_root=image_root, evaluator_type="coco3d", **(metadata or {})
    )


def convert_to_coco3d(
    records: Optional[List[dict]] = None,
    *,
    image_dir: Optional[str] = None,
    label_dir: Optional[str] = None,
    spacing: Optional[Sequence[float]] = None,
    class_map: ClassMap = None,
    label_suffix: str = "",
    thing_classes: Optional[Sequence[str]] = None,
    image_root: Optional[str] = None,
) -> dict:
    """
    Builds a COCO-3D dict from records (with ``annotations`` or ``instance_label_file``), or from
    label-volume folders (``image_dir`` / ``label_dir``, see
    :func:`~det3d.data.datasets.label_volumes.load_label_volume_dataset`).

    Args:
        thing_classes: category names (default: ``object``, or ``class_k`` for every index seen).
        image_root: image ``file_name`` entries are written relative to it (default
            ``image_dir`` when converting folders; else as in the records).

    Returns:
        dict with ``info``, ``images``, ``annotations``, ``categories`` (category id = index + 1).
    """
    from det3d.structures import BoxMode

    if records is None:
        if image_dir is None or label_dir is None:
            raise ValueError("convert_to_coco3d: give records, or image_dir and label_dir")
        records = load_label_volume_dataset(
            image_dir,
            label_dir,
            spacing=spacing,
            class_map=class_map,
            label_suffix=label_suffix,
            thing_classes=thing_classes,
        )
        image_root = image_dir if image_root is None else image_root
    images, annotations = [], []
    max_cat = -1
    for k, rec in enumerate(records):
        if is_sparse_record(rec):
            raise ValueError(
                f"{rec['file_name']}: ground truth covers only z-slices {rec['seg_slices']}; "
                f"COCO-3D holds whole instance volumes"
            )
        image_id = rec.get("image_id", k)
        if not isinstance(image_id, int):
            image_id = k
        fn = rec["file_name"]
        if image_root is not None:
            fn = os.path.relpath(fn, image_root)
        images.append(
            {
                "id": image_id,
                "file_name": fn,
                "depth": int(rec["depth"]),
                "height": int(rec["height"]),
                "width": int(rec["width"]),
                "spacing": [float(s) for s in rec.get("spacing", (1.0, 1.0, 1.0))],
            }
        )
        if "annotations" in rec:
            annos = rec["annotations"]
        else:
            labels, classes = load_record_labels(rec)
            annos = label_volume_to_annotations(labels, classes)
        for a in annos:
            box = BoxMode.convert([float(v) for v in a["bbox"]], a["bbox_mode"], BoxMode.XYZWHD_ABS)
            box = [float(v) for v in box]
            area = a.get("area")
            if area is None:
                from det3d.structures.rle import rle_area

                area = int(rle_area(a["segmentation"]))
            ann = {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": int(a["category_id"]) + 1,
                "bbox": box,
                "segmentation": a["segmentation"],
                "area": int(area),
                "iscrowd": int(a.get("iscrowd", 0)),
            }
            if "id" in a and "annotations" not in rec:
                ann["instance_label"] = int(a["id"])  # the id in the source label volume
            annotations.append(ann)
            max_cat = max(max_cat, int(a["category_id"]))
    if thing_classes is None:
        thing_classes = ["object"] if max_cat <= 0 else [f"class_{i}" for i in range(max_cat + 1)]
    if max_cat >= len(thing_classes):
        raise ValueError(
            f"convert_to_coco3d: category index {max_cat} but only {len(thing_classes)} classes"
        )
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(thing_classes)]
    return {
        "info": {
            "description": "COCO-3D instances written by det3d",
            "format": "coco3d",
            "version": 1,
        },
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
