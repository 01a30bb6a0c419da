"""Training: the loop and its hooks, the default trainer and set-up, and multi-process launch."""

from .ema import EMAHook, ModelEMA
from .launch import launch
from .train_loop import AMPTrainer, HookBase, SimpleTrainer, TrainerBase

from . import hooks  # isort: skip
from .defaults import (  # isort: skip
    DefaultTrainer,
    check_no_earlier_run,
    create_ddp_model,
    default_argument_parser,
    default_setup,
    default_writers,
    prepare_run,
)

__all__ = [k for k in globals().keys() if not k.startswith("_")]
