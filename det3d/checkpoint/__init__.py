"""Checkpointing: atomic saves, safe loads, resume."""

from fvcore.common.checkpoint import PeriodicCheckpointer

from .detection_checkpoint import (
    CheckpointError,
    DetectionCheckpointer,
    atomic_write,
    last_checkpoint_file,
)

__all__ = [
    "DetectionCheckpointer",
    "PeriodicCheckpointer",
    "CheckpointError",
    "atomic_write",
    "last_checkpoint_file",
]
