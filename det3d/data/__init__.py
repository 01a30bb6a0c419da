"""
det3d.data: dataset catalogs, volume I/O, dataset formats, synthetic data, the dataset mapper and
the data loaders. Importing it registers the builtin datasets (``synthetic_train``, ...).
"""

from . import transforms
from .build import (
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from .catalog import DatasetCatalog, Metadata, MetadataCatalog
from .dataset_mapper import DATASET_MAPPER_REGISTRY, DatasetMapper3D
from .datasets import (
    convert_to_coco3d,
    label_volume_to_annotations,
    load_coco3d_json,
    load_ctc_dataset,
    load_label_volume_dataset,
    register_coco3d_instances,
    register_ctc_dataset,
    register_dataset_spec,
    register_dataset_specs,
    register_label_volume_dataset,
)
from .datasets.builtin import register_all_synthetic, set_synthetic_root
from .detection_utils import (
    label_volume_to_instances,
    load_record_label_slices,
    load_record_labels,
)
from .io import read_labels, read_spacing, read_volume, volume_shape, write_volume
from .samplers import InferenceSampler, TrainingSampler
from .slice_mapper import SliceDatasetMapper
from .synthetic import make_synthetic_dataset, make_synthetic_volume

register_all_synthetic()

__all__ = [k for k in globals().keys() if not k.startswith("_")]
