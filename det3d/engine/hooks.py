"""
Hooks that ``DefaultTrainer`` registers: timing, LR scheduling, checkpointing (periodic and
best-so-far), evaluation and metric writing. See ``HookBase`` for the order of calls.
"""

import datetime
import logging
import math
import time
from typing import Callable, Dict, List, Optional

import torch
from fvcore.common.checkpoint import PeriodicCheckpointer as _PeriodicCheckpointer
from fvcore.common.param_scheduler import ParamScheduler
from fvcore.common.timer import Timer

from det3d.solver import LRMultiplier
from det3d.utils import comm
from det3d.utils.events import EventWriter

from .train_loop import HookBase

__all__ = [
    "CallbackHook",
    "IterationTimer",
    "PeriodicWriter",
    "PeriodicCheckpointer",
    "BestCheckpointer",
    "LRScheduler",
    "EvalHook",
    "TimeBudget",
]

logger = logging.getLogger(__name__)


class CallbackHook(HookBase):
    """A hook made of plain functions, each called with the trainer."""

    def __init__(self, *, before_train=None, after_train=None, before_step=None, after_step=None):
        self._before_train = before_train
        self._after_train = after_train
        self._before_step = before_step
        self._after_step = after_step

    def before_train(self) -> None:
        if self._before_train:
            self._before_train(self.trainer)

    def after_train(self) -> None:
        if self._after_train:
            self._after_train(self.trainer)
        # The functions may hold references to the trainer or model: let them go.
        del self._before_train, self._after_train
        del self._before_step, self._after_step

    def before_step(self) -> None:
        if self._before_step:
            self._before_step(self.trainer)

    def after_step(self) -> None:
        if self._after_step:
            self._after_step(self.trainer)


class IterationTimer(HookBase):
    """
    Records the time of each iteration (``time`` in the storage, hooks registered after this one
    included) and logs the total training time at the end. The first ``warmup_iter`` iterations
    are left out of the reported speed (they include start-up costs).

    Register it first, so that it times the other hooks too.
    """

    def __init__(self, warmup_iter: int = 3):
        self._warmup_iter = warmup_iter
        self._step_timer = Timer()
        self._start_time = time.perf_counter()
        self._total_timer = Timer()

    def before_train(self) -> None:
        self._start_time = time.perf_counter()
        self._total_timer.reset()
        self._total_timer.pause()

    def after_train(self) -> None:
        total_time = time.perf_counter() - self._start_time
        total_time_minus_hooks = self._total_timer.seconds()
        hook_time = total_time - total_time_minus_hooks
        num_iter = self.trainer.iter - self.trainer.start_iter - self._warmup_iter
        if num_iter > 0 and total_time_minus_hooks > 0:
            logger.info(
                "Overall training speed: {} iterations in {} ({:.4f} s / it)".format(
                    num_iter,
                    str(datetime.timedelta(seconds=int(total_time_minus_hooks))),
                    total_time_minus_hooks / num_iter,
                )
            )
        logger.info(
            "Total training time: {} ({} on hooks)".format(
                str(datetime.timedelta(seconds=int(total_time))),
                str(datetime.timedelta(seconds=int(hook_time))),
            )
        )

    def before_step(self) -> None:
        self._step_timer.reset()
        self._total_timer.resume()

    def after_step(self) -> None:
        # +1: the current iteration has finished
        iter_done = self.trainer.storage.iter - self.trainer.start_iter + 1
        if iter_done >= self._warmup_iter:
            sec = self._step_timer.seconds()
            self.trainer.storage.put_scalars(time=sec)
        else:
            self._start_time = time.perf_counter()
            self._total_timer.reset()
        self._total_timer.pause()


class PeriodicWriter(HookBase):
    """Runs ``writers`` every ``period`` iterations and after the last one, then closes them."""

    def __init__(self, writers: List[EventWriter], period: int = 20):
        for w in writers:
            if not isinstance(w, EventWriter):
                raise TypeError(f"{type(w).__name__} is not an EventWriter")
        self._writers = writers
        self._period = period

    def after_step(self) -> None:
        it = self.trainer.iter
        if (it + 1) % self._period == 0 or it == self.trainer.max_iter - 1:
            for writer in self._writers:
                writer.write()

    def after_train(self) -> None:
        for writer in self._writers:
            # Metrics put after the last after_step (e.g. the final evaluation) are written too.
            writer.write()
            writer.close()


class PeriodicCheckpointer(_PeriodicCheckpointer, HookBase):
    """
    fvcore's ``PeriodicCheckpointer`` as a hook: saves ``model_<iter>.pth`` every ``period``
    iterations and ``model_final.pth`` after the last one, each holding ``iteration``.
    """

    def before_train(self) -> None:
        self.max_iter = self.trainer.max_iter

    def after_step(self) -> None:
        # The trainer's max_iter may have moved (TimeBudget): model_final goes at the real end.
        self.max_iter = self.trainer.max_iter
        # No checkpoint at iteration 0 etc.: step() saves when (iter + 1) % period == 0.
        self.step(self.trainer.iter)


class BestCheckpointer(HookBase):
    """
    Saves ``<file_prefix>.pth`` whenever the evaluation metric ``val_metric`` (a key of the
    storage, e.g. ``"segm/AP50"``) improves. Register it after the ``EvalHook`` whose results it
    reads, with the same ``eval_period``.

    The file is not tagged in ``last_checkpoint``: ``--resume`` continues from the latest
    checkpoint, not from the best one.
    """

    def __init__(
        self,
        eval_period: int,
        checkpointer,
        val_metric: str,
        mode: str = "max",
        file_prefix: str = "model_best",
    ):
        """
        Args:
            eval_period (int): iterations between evaluations (``TEST.EVAL_PERIOD``).
            checkpointer: a ``DetectionCheckpointer``.
            val_metric (str): name of the metric in the storage.
            mode (str): ``"max"`` or ``"min"``: whether larger or smaller values are better.
        """
        if mode not in ("max", "min"):
            raise ValueError(f"BestCheckpointer mode must be 'max' or 'min', got {mode!r}")
        self._period = eval_period
        self._val_metric = val_metric
        self._mode = mode
        self._compare = (lambda a, b: a > b) if mode == "max" else (lambda a, b: a < b)
        self._checkpointer = checkpointer
        self._file_prefix = file_prefix
        self.best_metric: Optional[float] = None
        self.best_iter: Optional[int] = None
        self._last_checked_iter = -1

    def _best_checking(self) -> None:
        metric_tuple = self.trainer.storage.latest().get(self._val_metric)
        if metric_tuple is None:
            logger.warning(
                f"BestCheckpointer: metric {self._val_metric!r} was not found in the storage; "
                f"check SOLVER.BEST_CHECKPOINT_METRIC. Known metrics: "
                f"{sorted(self.trainer.storage.latest().keys())}"
            )
            return
        value, metric_iter = metric_tuple
        if metric_iter <= self._last_checked_iter:
            return  # no new evaluation since the last check
        self._last_checked_iter = metric_iter
        if not math.isfinite(value):
            logger.warning(f"BestCheckpointer: {self._val_metric} = {value} at {metric_iter}")
            return
        if self.best_metric is None or self._compare(value, self.best_metric):
            previous = self.best_metric
            self.best_metric, self.best_iter = value, metric_iter
            save_kwargs = {"iteration": metric_iter, "best_metric": value}
            try:
                self._checkpointer.save(self._file_prefix, tag_last=False, **save_kwargs)
            except TypeError:  # an fvcore Checkpointer without tag_last
                self._checkpointer.save(self._file_prefix, **save_kwargs)
            logger.info(
                f"Saved best model: {self._val_metric} = {value:.5g} at iteration {metric_iter} "
                f"(previous best: {previous})"
            )

    def after_step(self) -> None:
        next_iter = self.trainer.iter + 1
        is_eval_iter = self._period > 0 and next_iter % self._period == 0
        if is_eval_iter and next_iter != self.trainer.max_iter:
            self._best_checking()

    def after_train(self) -> None:
        if self.trainer.iter + 1 >= self.trainer.max_iter:
            self._best_checking()

    def state_dict(self) -> dict:
        if self.best_metric is None:
            return {}
        return {"best_metric": self.best_metric, "best_iter": self.best_iter}

    def load_state_dict(self, state_dict: dict) -> None:
        self.best_metric = state_dict.get("best_metric")
        self.best_iter = state_dict.get("best_iter")
        if self.best_iter is not None:
            self._last_checked_iter = self.best_iter


class LRScheduler(HookBase):
    """
    Records the learning rate (``lr``) and steps the LR scheduler after every iteration. The
    scheduler's state is saved with the trainer's, so ``--resume`` continues the schedule.
    """

    def __init__(self, optimizer: Optional[torch.optim.Optimizer] = None, scheduler=None):
        """
        Args:
            optimizer: default: the trainer's.
            scheduler: a torch LR scheduler, or an fvcore ``ParamScheduler`` (wrapped in an
                ``LRMultiplier`` at ``before_train``); default: the trainer's ``scheduler``.
        """
        self._optimizer = optimizer
        self._scheduler = scheduler

    def before_train(self) -> None:
        self._optimizer = self._optimizer or self.trainer.optimizer
        if isinstance(self.scheduler, ParamScheduler):
            self._scheduler = LRMultiplier(
                self._optimizer,
                self.scheduler,
                self.trainer.max_iter,
                last_iter=self.trainer.iter - 1,
            )
        self._best_param_group_id = LRScheduler.get_best_param_group_id(self._optimizer)
        self._follow_max_iter()

    def _follow_max_iter(self) -> None:
        # An LRMultiplier's schedule is a function of iteration / max_iter: it stretches with a
        # run whose length a hook re-fits (TimeBudget), and after --resume it takes the saved one.
        if isinstance(self.scheduler, LRMultiplier):
            self.scheduler.set_max_iter(self.trainer.max_iter)

    @staticmethod
    def get_best_param_group_id(optimizer: torch.optim.Optimizer) -> int:
        """The param group whose lr is reported: the largest one (biases may have their own)."""
        largest_group = max(len(g["params"]) for g in optimizer.param_groups)
        for i, g in enumerate(optimizer.param_groups):
            if len(g["params"]) == largest_group:
                return i
        return 0

    def after_step(self) -> None:
        lr = self._optimizer.param_groups[self._best_param_group_id]["lr"]
        self.trainer.storage.put_scalar("lr", lr, smoothing_hint=False)
        self._follow_max_iter()
        self.scheduler.step()

    @property
    def scheduler(self):
        return self._scheduler or self.trainer.scheduler

    def state_dict(self) -> dict:
        if isinstance(self.scheduler, torch.optim.lr_scheduler.LRScheduler):
            return self.scheduler.state_dict()
        return {}

    def load_state_dict(self, state_dict: dict) -> None:
        if isinstance(self.scheduler, torch.optim.lr_scheduler.LRScheduler):
            logger.info("Loading scheduler from state_dict ...")
            self.scheduler.load_state_dict(state_dict)


class EvalHook(HookBase):
    """
    Runs ``eval_function`` every ``eval_period`` iterations and after the last one, and puts its
    results (a nested dict of numbers, as evaluators return) into the storage as flat keys
    ``"<task>/<metric>"`` (e.g. ``"segm/AP50"``), so that writers and ``BestCheckpointer`` see them.

    Every rank must run this hook: evaluation itself is distributed.
    """

    def __init__(
        self, eval_period: int, eval_function: Callable[[], Dict], eval_after_train: bool = True
    ):
        """
        Args:
            eval_period (int): 0 or less: evaluate only after training (if ``eval_after_train``).
            eval_function: called with no arguments; returns the results (or None / {}).
        """
        self._period = eval_period
        self._func = eval_function
        self._eval_after_train = eval_after_train
        self.last_results: Optional[Dict] = None

    def _do_eval(self) -> None:
        results = self._func()
        self.last_results = results
        if results:
            if not isinstance(results, dict):
                raise TypeError(f"Eval function must return a dict, got {type(results).__name__}")
            from det3d.evaluation.testing import flatten_results_dict

            flattened = flatten_results_dict(results)
            for k, v in flattened.items():
                try:
                    flattened[k] = float(v)
                except (TypeError, ValueError) as e:
                    raise ValueError(
                        f"[EvalHook] eval_function should return a nested dict of float; got "
                        f"{k!r}: {v!r}"
                    ) from e
            self.trainer.storage.put_scalars(**flattened, smoothing_hint=False)
        # Evaluation may take different time on different ranks; keep them in step.
        comm.synchronize()

    def after_step(self) -> None:
        next_iter = self.trainer.iter + 1
        if self._period > 0 and next_iter % self._period == 0:
            # The last iteration is evaluated in after_train.
            if next_iter != self.trainer.max_iter:
                self._do_eval()

    def after_train(self) -> None:
        # A failed run (also one failing in its last iteration) is not evaluated: that would
        # waste time, and an evaluation error would hide the training error.
        completed = getattr(
            self.trainer, "train_completed", self.trainer.iter >= self.trainer.max_iter
        )
        if self._eval_after_train and completed:
            self._do_eval()
        # The function may hold the model and data: let them go.
        del self._func


class TimeBudget(HookBase):
    """
    Fits the run's length to a wall-clock budget (``SOLVER.TIME_BUDGET_MINUTES``): from the time
    the iterations so far took (data loading, hooks and periodic evaluations included), it sets
    ``trainer.max_iter`` to the iteration at which training reaches ``minutes``. The configured
    ``MAX_ITER`` is then only the first estimate, e.g. a planner's probe of a few steps, which
    can be off by a fifth; the run still fills its budget and ends on time.

    * The first ``skip`` iterations (start-up: loader workers, allocator warm-up) are not in
      the speed, but their time is spent from the budget.
    * It re-fits every ``period`` iterations. While the run is in the first ``refit_until`` of
      its iterations the fit may lengthen or shorten it; ``LRMultiplier`` schedules are
      functions of iteration / max_iter, so they stretch with it (``LRScheduler`` follows
      ``trainer.max_iter``). Later it only shortens the run, so the LR never returns to a phase
      it has left; set ``refit_until`` below the schedule's first decay.
    * Register it after ``IterationTimer`` and before ``LRScheduler``, so that the next LR is
      that of the new length.
    * Its state (seconds spent, max_iter) is saved with the trainer: a run resumed with
      ``--resume`` spends what is left of the budget.
    * On several ranks, each fits from its own clock and all take the smallest fit.
    * Each new length is put in the storage as ``max_iter`` (``metrics.json``; the printer's ETA).
    """

    def __init__(
        self,
        minutes: float,
        skip: int = 10,
        period: int = 20,
        refit_until: float = 0.75,
        clock: Callable[[], float] = time.perf_counter,
    ):
        """
        Args:
            minutes (float): training time to fill (``SOLVER.TIME_BUDGET_MINUTES``), > 0.
            skip (int): first iterations of the run left out of the speed.
            period (int): iterations between fits.
            refit_until (float): fraction of the run after which the fit only shortens it.
            clock: seconds (for tests); default ``time.perf_counter``.
        """
        if not (math.isfinite(minutes) and minutes > 0):
            raise ValueError(
                f"SOLVER.TIME_BUDGET_MINUTES must be a positive number of minutes (0 = off), "
                f"got {minutes}"
            )
        if skip < 1 or period < 1 or not 0 < refit_until <= 1:
            raise ValueError(
                f"TimeBudget needs skip >= 1, period >= 1 and 0 < refit_until <= 1; got skip "
                f"{skip}, period {period}, refit_until {refit_until}"
            )
        self._seconds = 60.0 * minutes
        self._skip, self._period, self._refit_until = skip, period, refit_until
        self._clock = clock
        self._spent_before = 0.0  # seconds of earlier runs of this training (--resume)
        self._saved_max_iter: Optional[int] = None
        self._start = 0.0
        self._reference: Optional[tuple] = None  # (clock, iterations done) where timing starts
        self._planned = self._logged = 0

    def _spent(self) -> float:
        return self._spent_before + self._clock() - self._start

    def before_train(self) -> None:
        self._start = self._clock()
        self._reference = None
        self._planned = self._logged = self.trainer.max_iter
        if self._saved_max_iter is not None:
            self.trainer.max_iter = self._saved_max_iter

    def after_step(self) -> None:
        trainer = self.trainer
        done = trainer.iter + 1  # iterations finished, this one included
        if done - trainer.start_iter == self._skip:
            self._reference = (self._clock(), done)
        if self._reference is None or done == self._reference[1]:
            return
        if (done - self._reference[1]) % self._period:
            return
        seconds_per_iter = (self._clock() - self._reference[0]) / (done - self._reference[1])
        left = self._seconds - self._spent()
        fit = done + max(int(left / seconds_per_iter), 0)
        fit = min(comm.all_gather(fit))  # every rank must stop at the same iteration
        if done >= self._refit_until * trainer.max_iter:
            fit = min(fit, trainer.max_iter)
        if fit == trainer.max_iter:
            return
        if abs(fit - self._logged) >= 0.02 * self._logged or fit == done:
            self._logged = fit
            logger.info(
                f"Time budget: {seconds_per_iter:.3f} s per iteration, {left / 60:.1f} of "
                f"{self._seconds / 60:g} min left: the run is {fit} iterations long "
                f"(was {trainer.max_iter})"
            )
        trainer.max_iter = fit
        trainer.storage.put_scalar("max_iter", fit, smoothing_hint=False)

    def after_train(self) -> None:
        logger.info(
            f"Time budget: {self.trainer.iter} iterations in {self._spent() / 60:.1f} of "
            f"{self._seconds / 60:g} min (the config's estimate was {self._planned})"
        )

    def state_dict(self) -> dict:
        return {"seconds_spent": self._spent(), "max_iter": int(self.trainer.max_iter)}

    def load_state_dict(self, state_dict: dict) -> None:
        self._spent_before = float(state_dict["seconds_spent"])
        self._saved_max_iter = int(state_dict["max_iter"])
