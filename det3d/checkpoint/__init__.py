"""Checkpointing: atomic saves, safe loads, resume."""

from fvcore.common.checkpoint import PeriodicCheckpointer

from .detection_checkpoint import (
    CheckpointError,
    DetectionCheckpointer,
    atomic_write,
    last_checkpoint_file,
)
from .inflate import inflate_state_dict, load_2d_pretrained, read_state_dict

__all__ = [
    "DetectionCheckpointer",
    "PeriodicCheckpointer",
    "CheckpointError",
    "atomic_write",
    "last_checkpoint_file",
    "inflate_state_dict",
    "load_2d_pretrained",
    "read_state_dict",
]
