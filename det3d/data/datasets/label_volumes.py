"""
Datasets of paired image / instance-label volumes: ``image_dir/<name>.tif`` with
``label_dir/<name><label_suffix>.tif`` (or ``.tiff`` / ``.zarr``), the layout most microscopy
groups keep their ground truth in.

Records carry ``instance_label_file`` (and, where given, ``instance_classes``: instance id ->
category index; ids not in the map get category 0), not ``annotations``: label volumes are read
when a volume is used. :func:`label_volume_to_annotations` turns a label volume into COCO-style
annotations when those are wanted (COCO-3D export, evaluation).
"""

import logging
import os
from typing import Dict, List, Mapping, Optional, Sequence, Union

import numpy as np

from det3d.utils.file_io import read_json

from ..catalog import DatasetCatalog, MetadataCatalog
from ..io import check_spacing, read_spacing, volume_shape

__all__ = [
    "load_label_volume_dataset",
    "register_label_volume_dataset",
    "label_volume_to_annotations",
    "load_class_map",
    "list_volume_files",
]

logger = logging.getLogger(__name__)

VOLUME_EXTS = (".tif", ".tiff", ".zarr")

ClassMap = Union[None, str, Mapping]


def list_volume_files(folder: str) -> Dict[str, str]:
    """Returns ``{stem: path}`` of the TIFF files and zarr stores in ``folder`` (sorted)."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{folder}: no such directory")
    out = {}
    for fn in sorted(os.listdir(folder)):
        if fn.startswith("."):
            continue
        for ext in VOLUME_EXTS:
            if fn.lower().endswith(ext):
                stem = fn[: -len(ext)]
                if stem in out:
                    raise ValueError(f"{folder}: two volumes named {stem!r} ({out[stem]}, {fn})")
                out[stem] = os.path.join(folder, fn)
    return out


def load_class_map(
    class_map: ClassMap, thing_classes: Optional[Sequence[str]] = None, source: str = "class map"
) -> Optional[Dict[int, int]]:
    """
    Normalises an instance id -> category map: a dict or a JSON file (keys are instance ids as
    strings or ints; values category indices or class names from ``thing_classes``).
    """
    if class_map is None:
        return None
    if isinstance(class_map, (str, os.PathLike)):
        path = os.fspath(class_map)
        source = path if source == "class map" else f"{source} {path}"
        class_map = read_json(path, "class map")
        if not isinstance(class_map, dict):
            raise ValueError(f"{source}: a class map is a JSON object {{instance id: class}}")
    out = {}
    for k, v in class_map.items():
        try:
            inst = int(k)
        except (TypeError, ValueError):
            raise ValueError(f"{source}: instance id {k!r} is not an integer") from None
        if isinstance(v, str):
            if not thing_classes or v not in thing_classes:
                raise ValueError(f"{source}: class {v!r} (instance {k}) not in {thing_classes}")
            v = list(thing_classes).index(v)
        try:
            cat = int(v)
        except (TypeError, ValueError):
            raise ValueError(
                f"{source}: instance {k}: class {v!r} is not an index or name"
            ) from None
        if cat != v or cat < 0 or (thing_classes is not None and cat >= len(thing_classes)):
            known = f" (thing_classes {list(thing_classes)})" if thing_classes is not None else ""
            raise ValueError(
                f"{source}: instance {k}: category {v!r} is outside thing_classes"
                f"{known}: give an index 0..{len(thing_classes or []) - 1} or a class name"
            )
        out[inst] = cat
    return out


def load_label_volume_dataset(
    image_dir: str,
    label_dir: str,
    spacing: Optional[Sequence[float]] = None,
    class_map: ClassMap = None,
    label_suffix: str = "",
    thing_classes: Optional[Sequence[str]] = None,
    check_shapes: bool = True,
) -> List[dict]:
    """
    Pairs ``image_dir/<name>.<ext>`` with ``label_dir/<name><label_suffix>.<ext>``.

    Args:
        spacing: ``(z, y, x)`` µm for every volume; default: each image's metadata, else 1.
        class_map: instance id -> category, one for all volumes (dict or JSON file), or a
            folder of per-volume ``<name>.json`` maps. Default: every instance is category 0.
        label_suffix: e.g. ``"_labels"`` for ``a.tif`` / ``a_labels.tif``.
        thing_classes: class names, to resolve names used in class maps.
        check_shapes: compare image and label shapes from the file headers now.

    Returns:
        list[dict]: records (docs/conventions.md) with ``instance_label_file``
        [+ ``instance_classes``].

    Raises:
        FileNotFoundError: a folder is missing, or an image has no label volume (named).
        ValueError: image and labels differ in shape (both files named).
    """
    if spacing is not None:
        spacing = check_spacing(spacing, f"{image_dir} (spacing given)")
    images = list_volume_files(image_dir)
    labels = list_volume_files(label_dir)
    if not images:
        raise FileNotFoundError(f"{image_dir}: no .tif/.tiff/.zarr volumes")
    shared_map, map_dir = None, None
    if isinstance(class_map, (str, os.PathLike)) and os.path.isdir(class_map):
        map_dir = os.fspath(class_map)
    else:
        shared_map = load_class_map(class_map, thing_classes)
    records = []
    for image_id, (stem, image_file) in enumerate(images.items()):
        label_file = labels.get(stem + label_suffix)
        if label_file is None:
            raise FileNotFoundError(
                f"{image_file}: no label volume '{stem + label_suffix}.tif/.tiff/.zarr' in {label_dir}"
            )
        c, d, h, w = volume_shape(image_file)
        if check_shapes:
            lshape = volume_shape(label_file)
            if lshape[0] != 1 or tuple(lshape[1:]) != (d, h, w):
                raise ValueError(
                    f"Shape mismatch: image {image_file} is (C, D, H, W) = {(c, d, h, w)} but labels "
                    f"{label_file} are {tuple(lshape)}"
                )
        rec_spacing = (
            spacing if spacing is not None else (read_spacing(image_file) or (1.0, 1.0, 1.0))
        )
        record = {
            "file_name": image_file,
            "image_id": image_id,
            "depth": d,
            "height": h,
            "width": w,
            "spacing": tuple(float(s) for s in rec_spacing),
            "instance_label_file": label_file,
        }
        if map_dir is not None:
            path = os.path.join(map_dir, stem + ".json")
            if os.path.isfile(path):
                record["instance_classes"] = load_class_map(path, thing_classes)
        elif shared_map is not None:
            record["instance_classes"] = dict(shared_map)
        records.append(record)
    unused = set(labels) - {s + label_suffix for s in images}
    if unused:
        logger.warning(
            f"{label_dir}: {len(unused)} label volumes have no image, e.g. {sorted(unused)[:3]}"
        )
    return records


def register_label_volume_dataset(
    name: str,
    image_dir: str,
    label_dir: str,
    metadata: Optional[dict] = None,
    spacing: Optional[Sequence[float]] = None,
    class_map: ClassMap = None,
    label_suffix: str = "",
) -> None:
    """
    Registers ``name`` in :data:`DatasetCatalog` (loaded lazily) and sets its metadata
    (``thing_classes`` default ``["object"]``, ``evaluator_type`` "coco3d", dirs, spacing).
    """
    if spacing is not None:  # refused at registration, not at the first use
        spacing = check_spacing(spacing, f"dataset {name!r}")
    metadata = dict(metadata or {})
    metadata.setdefault("thing_classes", ["object"])
    thing_classes = metadata["thing_classes"]
    if class_map is not None and not (
        isinstance(class_map, (str, os.PathLike)) and os.path.isdir(class_map)
    ):  # a shared map is checked at registration, naming the instance and class at fault
        load_class_map(class_map, thing_classes, source=f"dataset {name!r} class map")
    DatasetCatalog.register(
        name,
        lambda: load_label_volume_dataset(
            image_dir,
            label_dir,
            spacing=spacing,
            class_map=class_map,
            label_suffix=label_suffix,
            thing_classes=thing_classes,
        ),
    )
    metadata.setdefault("evaluator_type", "coco3d")
    if spacing is not None:
        metadata.setdefault("spacing", tuple(float(s) for s in spacing))
    MetadataCatalog.get(name).set(image_dir=image_dir, label_dir=label_dir, **metadata)


def label_volume_to_annotations(
    labels: np.ndarray, class_map: Optional[Mapping[int, int]] = None
) -> List[dict]:
    """
    Turns an instance label volume into COCO-style annotations, in increasing id order.

    Args:
        labels: int ``(D, H, W)`` (or ``(H, W)``); 0 = background.
        class_map: instance id -> category index (missing ids: 0).

    Returns:
        list[dict]: ``bbox`` (``XYZXYZ_ABS``, tight: ``[x0, y0, z0, x1 + 1, y1 + 1, z1 + 1]``),
        ``bbox_mode``, ``category_id``, ``segmentation`` (RLE of the full-size instance mask,
        :func:`det3d.structures.rle.encode_rle`), ``area`` (voxels), ``iscrowd`` 0, ``id``
        (the label id in the volume).
    """
    from det3d.structures import BoxMode
    from det3d.structures.label_volume import label_objects
    from det3d.structures.rle import label_volume_to_rles

    labels = np.asarray(labels)
    mode = BoxMode.XYZXYZ_ABS if labels.ndim == 3 else BoxMode.XYXY_ABS
    class_map = class_map or {}
    objects = label_objects(labels)  # the one label -> box routine
    rles = label_volume_to_rles(labels, objects.ids)
    return [
        {
            "id": int(inst),
            "bbox": [float(v) for v in box],
            "bbox_mode": mode,
            "category_id": int(class_map.get(int(inst), 0)),
            "segmentation": rles[int(inst)],
            "area": int(size),
            "iscrowd": 0,
        }
        for inst, box, size in zip(objects.ids, objects.boxes, objects.sizes)
    ]
