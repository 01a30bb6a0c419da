"""Optimizers, gradient clipping and learning-rate schedules built from a config."""

from .build import (
    build_lr_scheduler,
    build_optimizer,
    get_default_optimizer_params,
    lr_first_decay,
    maybe_add_gradient_clipping,
)
from .lr_scheduler import LRMultiplier, WarmupParamScheduler

__all__ = [k for k in globals().keys() if not k.startswith("_")]
