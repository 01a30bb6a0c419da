"""Dataset formats (label-volume folders, COCO-3D json, Cell Tracking Challenge) and builtins."""

from . import builtin as _builtin  # registers the builtin datasets
from .coco3d import convert_to_coco3d, load_coco3d_json, register_coco3d_instances
from .ctc import load_ctc_dataset, register_ctc_dataset
from .label_volumes import (
    label_volume_to_annotations,
    load_class_map,
    load_label_volume_dataset,
    register_label_volume_dataset,
)
from .specs import (
    dataset_folder_name,
    is_dataset_spec,
    register_dataset_spec,
    register_dataset_specs,
)

__all__ = [k for k in globals().keys() if not k.startswith("_")]
