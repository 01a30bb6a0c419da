"""
Metrics storage during training (``EventStorage``) and the writers that report it
(``CommonMetricPrinter``, ``JSONWriter``, ``TensorboardXWriter``).

The trainer opens one ``EventStorage`` for the whole run; any code that runs inside the training
loop can record a scalar with ``get_event_storage().put_scalar(name, value)``. Writers, run by
the ``PeriodicWriter`` hook, read the latest values from it. Where detectron2 is importable, the
storage open may be Detectron2's (its trainer running a det3d model): both have ``put_scalar``,
``put_scalars``, ``iter`` and ``name_scope``, which is all det3d's model parts use.
"""

import datetime
import json
import logging
import os
import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Dict, List, Optional, Tuple

import torch
from fvcore.common.history_buffer import HistoryBuffer

from det3d.bridge.detectron2 import event_storage_stack

__all__ = [
    "get_event_storage",
    "current_event_storage",
    "EventStorage",
    "EventWriter",
    "JSONWriter",
    "TensorboardXWriter",
    "CommonMetricPrinter",
]

# The open storages, innermost last. Shared with Detectron2 where it is importable, so statistics
# put by det3d's model parts reach Detectron2's trainer and the other way round.
_CURRENT_STORAGE_STACK: List["EventStorage"] = event_storage_stack()


def get_event_storage() -> "EventStorage":
    """
    Returns:
        The ``EventStorage`` currently open (the innermost ``with EventStorage():`` block).
        Raises if none is open.
    """
    assert len(
        _CURRENT_STORAGE_STACK
    ), "get_event_storage() has to be called inside a 'with EventStorage(...)' context!"
    return _CURRENT_STORAGE_STACK[-1]


def current_event_storage() -> Optional["EventStorage"]:
    """
    The open ``EventStorage``, or None outside a training loop (tests, notebooks, inference).
    Code that reports training statistics asks this first, and skips computing them on None.
    """
    return _CURRENT_STORAGE_STACK[-1] if _CURRENT_STORAGE_STACK else None


class EventStorage:
    """
    Per-iteration storage of scalars (and their history), keyed by name.

    .. code-block:: python

        with EventStorage(start_iter=0) as storage:
            for storage.iter in range(10):
                storage.put_scalar("loss", 0.1)
                storage.step()   # optional: marks the end of the iteration
    """

    def __init__(self, start_iter: int = 0):
        self._history: Dict[str, HistoryBuffer] = defaultdict(HistoryBuffer)
        self._smoothing_hints: Dict[str, bool] = {}
        self._latest_scalars: Dict[str, Tuple[float, int]] = {}
        self._iter = start_iter
        self._current_prefix = ""

    def put_scalar(
        self, name: str, value, smoothing_hint: bool = True, cur_iter: Optional[int] = None
    ) -> None:
        """
        Records ``value`` for ``name`` at the current (or given) iteration.

        Args:
            smoothing_hint (bool): whether writers should report a smoothed (median over a window)
                value. Fixed at the first ``put_scalar`` of a name.
        """
        name = self._current_prefix + name
        cur_iter = self._iter if cur_iter is None else cur_iter
        if isinstance(value, torch.Tensor):
            value = value.detach().item()
        value = float(value)
        self._history[name].update(value, cur_iter)
        self._latest_scalars[name] = (value, cur_iter)
        existing_hint = self._smoothing_hints.get(name)
        if existing_hint is not None:
            assert (
                existing_hint == smoothing_hint
            ), f"Scalar {name} was put with a different smoothing_hint!"
        else:
            self._smoothing_hints[name] = smoothing_hint

    def put_scalars(self, *, smoothing_hint: bool = True, cur_iter: Optional[int] = None, **kwargs):
        """``put_scalar`` for every keyword argument."""
        for k, v in kwargs.items():
            self.put_scalar(k, v, smoothing_hint=smoothing_hint, cur_iter=cur_iter)

    def history(self, name: str) -> HistoryBuffer:
        """The ``HistoryBuffer`` of ``name``; raises ``KeyError`` naming it if never put."""
        ret = self._history.get(name, None)
        if ret is None:
            raise KeyError(f"No history metric available for {name!r}")
        return ret

    def histories(self) -> Dict[str, HistoryBuffer]:
        return dict(self._history)

    def latest(self) -> Dict[str, Tuple[float, int]]:
        """
        Returns:
            dict[str, (float, int)]: name -> (latest value, iteration it was put at).
        """
        return dict(self._latest_scalars)

    def latest_with_smoothing_hint(self, window_size: int = 20) -> Dict[str, Tuple[float, int]]:
        """
        Like ``latest``, but scalars put with ``smoothing_hint=True`` are replaced by their median
        over the last ``window_size`` values.
        """
        result = {}
        for k, (v, itr) in self._latest_scalars.items():
            if self._smoothing_hints[k]:
                v = self._history[k].median(window_size)
            result[k] = (v, itr)
        return result

    def smoothing_hints(self) -> Dict[str, bool]:
        return dict(self._smoothing_hints)

    def count_samples(self, name: str, window_size: int = 20) -> int:
        """
        Number of values of ``name`` put within the last ``window_size`` iterations, so that the
        median of a metric put less often than every iteration covers the same span.
        """
        data = self.history(name).values()
        last_iter = data[-1][1]
        samples = 0
        for _, itr in reversed(data):
            if itr <= last_iter - window_size:
                break
            samples += 1
        return max(samples, 1)

    def step(self) -> None:
        """Advances the iteration counter by one. The trainer sets ``iter`` directly instead."""
        self._iter += 1

    @property
    def iter(self) -> int:
        """The current iteration; set by the trainer at the start of each step."""
        return self._iter

    @iter.setter
    def iter(self, val: int) -> None:
        self._iter = int(val)

    @property
    def iteration(self) -> int:  # Detectron2's older name
        return self._iter

    def __enter__(self) -> "EventStorage":
        _CURRENT_STORAGE_STACK.append(self)
        return self

    def __exit__(self, exc_type, exc_val, exc_tb) -> None:
        assert _CURRENT_STORAGE_STACK[-1] is self
        _CURRENT_STORAGE_STACK.pop()

    @contextmanager
    def name_scope(self, name: str):
        """Scalars put inside this block get the prefix ``name/``."""
        old_prefix = self._current_prefix
        self._current_prefix = name.rstrip("/") + "/"
        try:
            yield
        finally:
            self._current_prefix = old_prefix


class EventWriter:
    """Base class of writers that report what an ``EventStorage`` holds."""

    def write(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class JSONWriter(EventWriter):
    """
    Appends the scalars of each iteration to a file, one JSON object per line:

    .. code-block:: none

        {"data_time": 0.008, "iteration": 19, "loss_cls": 0.2, "lr": 0.0002, "total_loss": 1.3}
        {"data_time": 0.007, "iteration": 39, "loss_cls": 0.1, "lr": 0.0004, "total_loss": 1.1}

    As in Detectron2, a scalar put with ``smoothing_hint=True`` (losses) is written as its median
    over the last ``window_size`` values; each (scalar, iteration) is written once.
    """

    def __init__(self, json_file: str, window_size: int = 20):
        """
        Args:
            json_file (str): path of the file; appended to if it exists (as when resuming).
            window_size (int): window of the median for scalars with ``smoothing_hint``.
        """
        self._file_handle = open(json_file, "a")
        self._window_size = window_size
        self._last_write = -1

    def write(self) -> None:
        storage = get_event_storage()
        to_save: Dict[int, Dict[str, float]] = defaultdict(dict)
        for k, (v, itr) in storage.latest_with_smoothing_hint(self._window_size).items():
            if itr <= self._last_write:  # already written
                continue
            to_save[itr][k] = v
        if len(to_save):
            self._last_write = max(to_save.keys())
        for itr, scalars_per_iter in sorted(to_save.items()):
            scalars_per_iter["iteration"] = itr
            self._file_handle.write(json.dumps(scalars_per_iter, sort_keys=True) + "\n")
        self._file_handle.flush()
        try:
            os.fsync(self._file_handle.fileno())
        except (AttributeError, OSError):
            pass

    def close(self) -> None:
        self._file_handle.close()


class TensorboardXWriter(EventWriter):
    """
    Writes scalars to TensorBoard event files, through ``torch.utils.tensorboard``. When the
    ``tensorboard`` package is not installed, it logs a note once and writes nothing.
    """

    def __init__(self, log_dir: str, window_size: int = 20, **kwargs):
        self._window_size = window_size
        self._last_write = -1
        self._writer = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            logging.getLogger(__name__).info(
                "tensorboard is not installed: TensorboardXWriter writes nothing to %s", log_dir
            )
            return
        self._writer = SummaryWriter(log_dir, **kwargs)

    @property
    def enabled(self) -> bool:
        return self._writer is not None

    def write(self) -> None:
        if self._writer is None:
            return
        storage = get_event_storage()
        new_last_write = self._last_write
        for k, (v, itr) in storage.latest_with_smoothing_hint(self._window_size).items():
            if itr > self._last_write:
                self._writer.add_scalar(k, v, itr)
                new_last_write = max(new_last_write, itr)
        self._last_write = new_last_write

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


class CommonMetricPrinter(EventWriter):
    """
    Logs the common metrics of training to the terminal: iteration, ETA, losses, time per
    iteration, data time, learning rate and (on CUDA) peak memory. Losses are scalars whose name
    contains ``"loss"``; they are smoothed over ``window_size`` iterations.
    """

    def __init__(self, max_iter: Optional[int] = None, window_size: int = 20):
        """
        Args:
            max_iter (int): number of iterations of the run, to estimate the ETA; None: no ETA.
                A ``max_iter`` scalar in the storage (a re-fitted run length) replaces it.
        """
        self.logger = logging.getLogger("det3d.utils.events")
        self._max_iter = max_iter
        self._window_size = window_size
        self._last_write: Optional[Tuple[int, float]] = None  # (iteration, wall time)

    def _get_eta(self, storage: EventStorage) -> Optional[str]:
        if self._max_iter is None:
            return ""
        iteration = storage.iter
        try:
            eta_seconds = storage.history("time").median(1000) * (self._max_iter - iteration - 1)
            storage.put_scalar("eta_seconds", eta_seconds, smoothing_hint=False)
            return str(datetime.timedelta(seconds=int(eta_seconds)))
        except KeyError:
            # No "time" yet (IterationTimer not used): estimate from the wall time between writes.
            eta_string = None
            if self._last_write is not None:
                estimate_iter_time = (time.perf_counter() - self._last_write[1]) / (
                    iteration - self._last_write[0] if iteration > self._last_write[0] else 1
                )
                eta_seconds = estimate_iter_time * (self._max_iter - iteration - 1)
                eta_string = str(datetime.timedelta(seconds=int(eta_seconds)))
            self._last_write = (iteration, time.perf_counter())
            return eta_string

    def _follow_max_iter(self, storage: EventStorage) -> None:
        # A run whose length a hook re-fits (engine.hooks.TimeBudget) records it as "max_iter".
        latest = storage.latest().get("max_iter")
        if latest is not None and self._max_iter is not None:
            self._max_iter = int(latest[0])

    def write(self) -> None:
        storage = get_event_storage()
        iteration = storage.iter
        self._follow_max_iter(storage)
        if self._max_iter is not None and iteration == self._max_iter:
            # The trainer's after_train writes once more after the last step; nothing new then.
            return

        def _median(name: str) -> Optional[float]:
            try:
                return storage.history(name).median(storage.count_samples(name, self._window_size))
            except KeyError:
                return None

        data_time = _median("data_time")
        iter_time = _median("time")
        try:
            lr = "{:.5g}".format(storage.history("lr").latest())
        except KeyError:
            lr = "N/A"
        eta_string = self._get_eta(storage)

        max_mem = ""
        if torch.cuda.is_available():
            max_mem = "max_mem: {:.0f}M".format(torch.cuda.max_memory_allocated() / 1024.0 / 1024.0)

        losses = "  ".join(
            "{}: {:.4g}".format(k, v.median(storage.count_samples(k, self._window_size)))
            for k, v in storage.histories().items()
            if "loss" in k
        )
        parts = [
            f"eta: {eta_string}" if eta_string else "",
            f"iter: {iteration}",
            losses,
            f"time: {iter_time:.4f}" if iter_time is not None else "",
            f"data_time: {data_time:.4f}" if data_time is not None else "",
            f"lr: {lr}",
            max_mem,
        ]
        self.logger.info("  ".join(p for p in parts if p))
