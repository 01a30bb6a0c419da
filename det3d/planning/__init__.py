"""
Dataset planning: a dataset's fingerprint decides its config (docs/conventions.md, "Planned
configs"), as nnU-Net and nnDetection plan theirs. ``tools/plan.py`` is the command line.
"""

from .fingerprint import dataset_fingerprint
from .plan_dataset import DEFAULT_BASE, plan_dataset
from .planner import Plan, anchor_coverage, plan_config, plan_model_size
from .probe import measure_inference_time, measure_iteration_time
from .write import planned_config_text, write_planned_config

__all__ = [k for k in globals().keys() if not k.startswith("_")]
