"""
Datasets named by what they are, not registered in Python: a *dataset spec* is a string that can
stand wherever a dataset name stands (``DATASETS.TRAIN`` / ``DATASETS.TEST``, in a yaml file or
on the command line), and is registered under itself when a run starts
(:func:`register_dataset_specs`, called by ``default_setup``)::

    folder:images=DIR,labels=DIR[,spacing=Z:Y:X][,classes=NAME:NAME...][,class_map=FILE|DIR]
          [,label_suffix=SUFFIX][,pattern=GLOB]
    ctc:root=DIR[,sequences=01:02][,gt=SEG|ST][,spacing=Z:Y:X][,classes=NAME]
    coco3d:json=FILE,images=DIR[,spacing=Z:Y:X]

Items are ``key=value`` separated by commas; lists (spacing, class names, sequences) are
separated by colons. ``folder`` pairs ``images/<name>.tif`` with ``labels/<name><suffix>.tif``
(TIFF or zarr; :mod:`det3d.data.datasets.label_volumes`): ``classes`` names the classes (default
one class, ``object``), ``class_map`` maps instance ids to classes (a JSON file for all volumes or
a folder of ``<name>.json``, see :func:`load_class_map`), ``pattern`` keeps the images whose file
name matches a glob. ``spacing`` defaults to each file's metadata. ``ctc`` reads Cell Tracking
Challenge folders (:mod:`det3d.data.datasets.ctc`), ``coco3d`` a COCO-3D json (docs/coco3d.md).

Example::

    python tools/train_net.py --config-file configs/Base-RCNN-3D-FPN.yaml \\
        DATASETS.TRAIN folder:images=data/train/images,labels=data/train/labels,spacing=2:0.5:0.5

Every problem (unknown format or key, a missing folder, a pattern with no match, a class map that
does not parse, a dataset without objects) raises an error that names the spec and the culprit.
"""

import fnmatch
import os
import re
from typing import Dict, List, Optional, Sequence, Tuple

from ..catalog import DatasetCatalog, MetadataCatalog

__all__ = [
    "is_dataset_spec",
    "parse_dataset_spec",
    "register_dataset_spec",
    "register_dataset_specs",
    "dataset_folder_name",
]

_KEYS = {
    "folder": (
        {"images", "labels"},
        {"spacing", "classes", "class_map", "label_suffix", "pattern"},
    ),
    "ctc": ({"root"}, {"sequences", "gt", "spacing", "classes"}),
    "coco3d": ({"json", "images"}, {"spacing"}),
}
_SPEC_RE = re.compile(r"^(\w+):(.*=.*)$", re.S)


def is_dataset_spec(name: str) -> bool:
    """Whether ``name`` is written as a dataset spec (``format:key=value,...``)."""
    return isinstance(name, str) and bool(_SPEC_RE.match(name))


def parse_dataset_spec(spec: str) -> Tuple[str, Dict[str, str]]:
    """
    Returns:
        the format (``"folder"``, ``"ctc"``, ``"coco3d"``) and the ``{key: value}`` items.

    Raises:
        ValueError: naming the spec and what is wrong with it.
    """
    m = _SPEC_RE.match(spec)
    if not m:
        raise ValueError(f"Dataset spec {spec!r}: expected FORMAT:key=value,key=value,...")
    fmt, body = m.group(1), m.group(2)
    if fmt not in _KEYS:
        raise ValueError(f"Dataset spec {spec!r}: unknown format {fmt!r}; known: {sorted(_KEYS)}")
    items: Dict[str, str] = {}
    for part in body.split(","):
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise ValueError(f"Dataset spec {spec!r}: {part!r} is not key=value")
        if key in items:
            raise ValueError(f"Dataset spec {spec!r}: key {key!r} given twice")
        items[key] = value
    required, optional = _KEYS[fmt]
    unknown = set(items) - required - optional
    if unknown:
        raise ValueError(
            f"Dataset spec {spec!r}: unknown key(s) {sorted(unknown)} for format {fmt!r}; "
            f"known: {sorted(required | optional)}"
        )
    missing = required - set(items)
    if missing:
        raise ValueError(f"Dataset spec {spec!r}: missing key(s) {sorted(missing)}")
    return fmt, items


def _floats(spec: str, key: str, value: Optional[str], n: int = 3) -> Optional[Tuple[float, ...]]:
    if value is None:
        return None
    try:
        out = tuple(float(v) for v in value.split(":"))
    except ValueError:
        out = ()
    if len(out) != n or not all(v > 0 for v in out):
        raise ValueError(
            f"Dataset spec {spec!r}: {key}={value!r} must be {n} positive numbers Z:Y:X (µm)"
        )
    return out


def _existing_dir(spec: str, key: str, path: str) -> str:
    if not os.path.isdir(path):
        raise FileNotFoundError(f"Dataset spec {spec!r}: {key}={path!r} is not a folder")
    return path


def _folder_records(spec: str, items: Dict[str, str], thing_classes: List[str]) -> List[dict]:
    from .label_volumes import list_volume_files, load_label_volume_dataset

    image_dir = _existing_dir(spec, "images", items["images"])
    label_dir = _existing_dir(spec, "labels", items["labels"])
    class_map = items.get("class_map")
    if class_map is not None and not os.path.exists(class_map):
        raise FileNotFoundError(f"Dataset spec {spec!r}: class_map={class_map!r} does not exist")
    try:
        records = load_label_volume_dataset(
            image_dir,
            label_dir,
            spacing=_floats(spec, "spacing", items.get("spacing")),
            class_map=class_map,
            label_suffix=items.get("label_suffix", ""),
            thing_classes=thing_classes,
        )
    except (OSError, ValueError) as e:
        raise type(e)(f"Dataset spec {spec!r}: {e}") from e
    pattern = items.get("pattern")
    if pattern is not None:
        records = [r for r in records if fnmatch.fnmatch(os.path.basename(r["file_name"]), pattern)]
        if not records:
            names = sorted(os.path.basename(p) for p in list_volume_files(image_dir).values())
            raise FileNotFoundError(
                f"Dataset spec {spec!r}: no image in {image_dir} matches pattern={pattern!r} "
                f"(there are {names[:5]}{' ...' if len(names) > 5 else ''})"
            )
        for i, r in enumerate(records):
            r["image_id"] = i
    return records


def _ctc_records(spec: str, items: Dict[str, str]) -> List[dict]:
    from .ctc import load_ctc_dataset

    root = _existing_dir(spec, "root", items["root"])
    records: List[dict] = []
    for seq in items.get("sequences", "01:02").split(":"):
        records.extend(
            load_ctc_dataset(
                root,
                seq,
                _floats(spec, "spacing", items.get("spacing")),
                gt=items.get("gt", "SEG"),
                image_id_offset=len(records),
            )
        )
    return records


def register_dataset_spec(spec: str) -> str:
    """
    Registers ``spec`` in :data:`DatasetCatalog` and :data:`MetadataCatalog` under the spec
    string itself (nothing is read until records are asked for) and returns that name; a spec
    registered already is left as it is.
    """
    if spec in DatasetCatalog:
        return spec
    fmt, items = parse_dataset_spec(spec)
    meta = MetadataCatalog.get(spec)
    spacing = _floats(spec, "spacing", items.get("spacing"))
    if spacing is not None:
        meta.set(spacing=spacing)
    if fmt == "folder":
        classes = items.get("classes", "object").split(":")
        _existing_dir(spec, "images", items["images"])
        _existing_dir(spec, "labels", items["labels"])
        DatasetCatalog.register(spec, lambda: _folder_records(spec, items, classes))
        meta.set(
            thing_classes=classes,
            evaluator_type="coco3d",
            image_dir=items["images"],
            label_dir=items["labels"],
        )
    elif fmt == "ctc":
        _existing_dir(spec, "root", items["root"])
        DatasetCatalog.register(spec, lambda: _ctc_records(spec, items))
        meta.set(thing_classes=items.get("classes", "cell").split(":"), evaluator_type="ctc")
    else:
        from .coco3d import load_coco3d_json

        if not os.path.isfile(items["json"]):
            raise FileNotFoundError(f"Dataset spec {spec!r}: json={items['json']!r} is not a file")
        _existing_dir(spec, "images", items["images"])

        def load():
            records = load_coco3d_json(items["json"], items["images"], spec)
            if spacing is not None:
                for r in records:
                    r["spacing"] = spacing
            return records

        DatasetCatalog.register(spec, load)
        meta.set(json_file=items["json"], image_root=items["images"], evaluator_type="coco3d")
    return spec


def register_dataset_specs(names: Sequence[str]) -> List[str]:
    """Registers every entry of ``names`` that is a dataset spec; returns those entries."""
    return [register_dataset_spec(n) for n in names if is_dataset_spec(n)]


def dataset_folder_name(name: str) -> str:
    """
    A file-system-safe folder name for a dataset name (a spec holds slashes and colons): the
    name itself when it is safe, else its safe characters plus a short hash of the whole.
    """
    if re.fullmatch(r"[\w.-]{1,100}", name):
        return name
    import hashlib

    safe = re.sub(r"[^\w.-]+", "_", name).strip("_")[:60]
    return f"{safe}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"
