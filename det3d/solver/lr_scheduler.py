"""
Learning-rate schedules as fvcore ``ParamScheduler`` objects, applied to an optimizer by
``LRMultiplier``.

A schedule is a function of the training progress ``where = iteration / max_iter`` in ``[0, 1)``
that returns a multiplier of the base learning rate. ``WarmupParamScheduler`` ramps any schedule
up from ``warmup_factor`` over its first ``warmup_length`` of training.
"""

from typing import List

import torch
from fvcore.common.param_scheduler import (
    CompositeParamScheduler,
    ConstantParamScheduler,
    LinearParamScheduler,
    ParamScheduler,
)

__all__ = ["WarmupParamScheduler", "LRMultiplier"]


class WarmupParamScheduler(CompositeParamScheduler):
    """
    ``scheduler`` preceded by a warmup: over ``where`` in ``[0, warmup_length)`` the value goes
    from ``warmup_factor * scheduler(0)`` to ``scheduler(warmup_length)``, linearly
    (``"linear"``) or staying at the start value (``"constant"``).
    """

    def __init__(
        self,
        scheduler: ParamScheduler,
        warmup_factor: float,
        warmup_length: float,
        warmup_method: str = "linear",
        rescale_interval: bool = False,
    ):
        """
        Args:
            scheduler: the schedule after warmup.
            warmup_factor (float): multiplier of the first value.
            warmup_length (float): fraction of the whole run spent warming up, in ``[0, 1]``.
            warmup_method (str): ``"linear"`` or ``"constant"``.
            rescale_interval (bool): whether ``scheduler`` sees the post-warmup part of training
                as its own ``[0, 1)`` (True) or keeps the global progress (False, Detectron2).
        """
        if not 0.0 <= warmup_length <= 1.0:
            raise ValueError(f"warmup_length must be in [0, 1], got {warmup_length}")
        end_value = scheduler(warmup_length)  # the value where warmup hands over
        start_value = warmup_factor * scheduler(0.0)
        if warmup_method == "constant":
            warmup = ConstantParamScheduler(start_value)
        elif warmup_method == "linear":
            warmup = LinearParamScheduler(start_value, end_value)
        else:
            raise ValueError(f"Unknown warmup method {warmup_method!r}: use 'linear' or 'constant'")
        super().__init__(
            [warmup, scheduler],
            interval_scaling=["rescaled", "rescaled" if rescale_interval else "fixed"],
            lengths=[warmup_length, 1 - warmup_length],
        )


class LRMultiplier(torch.optim.lr_scheduler.LRScheduler):
    """
    Sets the learning rate of every param group to ``base_lr * multiplier(iter / max_iter)``, one
    ``step()`` per iteration.

    Its ``state_dict`` holds only plain data (``base_lrs``, ``last_epoch``), so checkpoints load
    with ``torch.load(weights_only=True)``; the multiplier comes from the config when rebuilt.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        multiplier: ParamScheduler,
        max_iter: int,
        last_iter: int = -1,
    ):
        """
        Args:
            multiplier: a ParamScheduler of the progress in ``[0, 1)``.
            max_iter (int): number of iterations of the run.
            last_iter (int): ``-1`` for a new run.
        """
        if not isinstance(multiplier, ParamScheduler):
            raise ValueError(
                f"LRMultiplier needs an fvcore ParamScheduler; got {type(multiplier).__name__}"
            )
        if max_iter <= 0:
            raise ValueError(f"max_iter must be positive, got {max_iter}")
        self._multiplier = multiplier
        self._max_iter = max_iter
        super().__init__(optimizer, last_epoch=last_iter)

    def set_max_iter(self, max_iter: int) -> None:
        """
        Moves the end of the run (e.g. to the iterations a time budget fits): the schedule
        stretches or shrinks with it, and the optimizer's lr is set for the current iteration.
        """
        if max_iter <= 0:
            raise ValueError(f"max_iter must be positive, got {max_iter}")
        if max_iter != self._max_iter:
            self._max_iter = max_iter
            self._set_lrs(self.get_lr())

    def state_dict(self) -> dict:
        return {"base_lrs": list(self.base_lrs), "last_epoch": self.last_epoch}

    def load_state_dict(self, state_dict: dict) -> None:
        self.base_lrs = list(state_dict["base_lrs"])
        self.last_epoch = int(state_dict["last_epoch"])
        # Bring the optimizer's lr in line with the restored iteration at once.
        self._set_lrs(self.get_lr())

    def _set_lrs(self, lrs: List[float]) -> None:
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr
        self._last_lr = list(lrs)

    def get_lr(self) -> List[float]:
        # A schedule is defined on [0, 1); the step after the last iteration keeps the last
        # iteration's value. (Clamping just below 1 is not enough: fvcore's index-based
        # schedules, e.g. StepWithFixedGamma, add an epsilon to the progress and overrun.)
        multiplier = self._multiplier(min(self.last_epoch, self._max_iter - 1) / self._max_iter)
        return [base_lr * multiplier for base_lr in self.base_lrs]
