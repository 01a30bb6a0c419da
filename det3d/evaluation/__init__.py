"""
Evaluation: the evaluator protocol, the inference loop, and det3d's metrics:

* :class:`COCO3DEvaluator`: COCO box / mask AP in 2D or 3D (``"bbox"``, ``"segm"``; 0-100).
* :class:`InstanceMatchingEvaluator` / :func:`matching_metrics`: one-to-one IoU matching of label
  volumes at several thresholds (precision, recall, F1, accuracy, panoptic quality; 0-1).
* :class:`SEGEvaluator` / :func:`seg_score`: the Cell Tracking Challenge SEG measure (0-1).

:func:`build_evaluator` builds those named in ``TEST.EVALUATORS`` from :data:`EVALUATOR_REGISTRY`.
"""

from .build import EVALUATOR_ALIASES, EVALUATOR_REGISTRY, build_evaluator
from .coco3d_evaluation import COCO3DEvaluator, instances_to_coco3d_json
from .cocoeval3d import COCOeval3D, box_iou_coco, default_area_ranges
from .evaluator import (
    DatasetEvaluator,
    DatasetEvaluators,
    gather_on_main_process,
    inference_context,
    inference_on_dataset,
)
from .matching import (
    DEFAULT_THRESHOLDS,
    InstanceMatchingEvaluator,
    matching_counts,
    matching_metrics,
    metrics_from_counts,
)
from .overlap import LabelOverlap, label_overlap, touching_objects
from .seg import SEGEvaluator, SEGJaccard, seg_jaccard, seg_score
from .testing import flatten_results_dict, print_csv_format, verify_results

__all__ = [
    "EVALUATOR_ALIASES",
    "EVALUATOR_REGISTRY",
    "build_evaluator",
    "COCO3DEvaluator",
    "COCOeval3D",
    "DEFAULT_THRESHOLDS",
    "DatasetEvaluator",
    "DatasetEvaluators",
    "InstanceMatchingEvaluator",
    "LabelOverlap",
    "SEGEvaluator",
    "SEGJaccard",
    "box_iou_coco",
    "default_area_ranges",
    "flatten_results_dict",
    "gather_on_main_process",
    "inference_context",
    "inference_on_dataset",
    "instances_to_coco3d_json",
    "label_overlap",
    "matching_counts",
    "matching_metrics",
    "metrics_from_counts",
    "print_csv_format",
    "seg_jaccard",
    "seg_score",
    "verify_results",
]
