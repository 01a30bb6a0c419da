"""
The training loop: ``TrainerBase`` runs hooks around an abstract ``run_step``; ``SimpleTrainer``
is the usual forward / backward / optimizer step; ``AMPTrainer`` adds mixed precision (CUDA
float16/bfloat16, CPU bfloat16).
"""

import logging
import time
import weakref
from typing import Any, Dict, Iterable, List, Mapping, Optional, Union

import numpy as np
import torch
from torch.nn.parallel import DataParallel, DistributedDataParallel

from det3d.utils import comm
from det3d.utils.amp import resolve_amp_dtype
from det3d.utils.events import EventStorage, get_event_storage

__all__ = ["HookBase", "TrainerBase", "SimpleTrainer", "AMPTrainer"]

logger = logging.getLogger(__name__)


class HookBase:
    """
    Base class of hooks that a ``TrainerBase`` calls around each step. The trainer runs:

    .. code-block:: python

        hook.before_train()
        iter = start_iter
        while iter < max_iter:          # a hook may change max_iter (see hooks.TimeBudget)
            hook.before_step()
            trainer.run_step()          # forward, backward: hook.after_backward(); optimizer step
            hook.after_step()
            iter += 1
        hook.after_train()              # also after an exception; iter tells how far it got

    Hooks run in the order they were registered, for every method. Conventions:

    * A hook reaches the trainer (model, optimizer, iteration, storage) through ``self.trainer``,
      a weak reference set by ``register_hooks``.
    * ``before_step`` should take negligible time. A hook that does real work (evaluation,
      checkpointing, logging) does it in ``after_step`` or ``after_train``.
    * In ``after_step``, ``self.trainer.iter`` is the iteration that just finished; in
      ``after_train`` it equals ``max_iter`` when training completed and is smaller when it was
      stopped by an exception.
    * A hook with state to keep across ``--resume`` implements ``state_dict`` /
      ``load_state_dict``; the trainer saves them with its own state.
    """

    trainer: "TrainerBase" = None

    def before_train(self) -> None:
        """Called once, before the first iteration."""

    def after_train(self) -> None:
        """Called once, after the last iteration (or after an exception)."""

    def before_step(self) -> None:
        """Called before each iteration."""

    def after_backward(self) -> None:
        """Called after the backward pass of each iteration, before the optimizer step."""

    def after_step(self) -> None:
        """Called after each iteration."""

    def state_dict(self) -> dict:
        """State to save in checkpoints; empty for stateless hooks."""
        return {}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restores what ``state_dict`` returned."""


class TrainerBase:
    """
    A loop over iterations that calls registered hooks (see ``HookBase``) around ``run_step``.

    Attributes:
        iter (int): the current iteration.
        start_iter (int): first iteration of this run (> 0 after ``--resume``).
        max_iter (int): training stops before this iteration; a hook may change it during the run
            (hooks read it when they need it, never keep a copy).
        storage (EventStorage): metrics of this run, open during ``train``.
        train_completed (bool): set when the last iteration finished; hooks' ``after_train``
            reads it (a run failing in its last iteration is not complete).
    """

    def __init__(self) -> None:
        self._hooks: List[HookBase] = []
        self.iter: int = 0
        self.start_iter: int = 0
        self.max_iter: int = 0
        self.storage: EventStorage = None
        self.train_completed: bool = False

    def register_hooks(self, hooks: List[Optional[HookBase]]) -> None:
        """Appends ``hooks`` (None entries are skipped); they run in the order registered."""
        hooks = [h for h in hooks if h is not None]
        for h in hooks:
            if not isinstance(h, HookBase):
                raise TypeError(f"{type(h).__name__} is not a HookBase")
            # A weak reference avoids a trainer <-> hook cycle that would keep both alive.
            h.trainer = weakref.proxy(self)
        self._hooks.extend(hooks)

    def train(self, start_iter: int, max_iter: int) -> None:
        """Runs iterations ``start_iter`` .. ``self.max_iter - 1`` (``max_iter``, or where a hook
        moved it)."""
        logger.info(f"Starting training from iteration {start_iter}")
        self.iter = self.start_iter = start_iter
        self.max_iter = max_iter
        self.train_completed = False
        with EventStorage(start_iter) as self.storage:
            try:
                self.before_train()
                # A while loop, not range(): a hook may move max_iter during the run (TimeBudget).
                while self.iter < self.max_iter:
                    self.before_step()
                    self.run_step()
                    self.after_step()
                    self.iter += 1
                # after_train tells a completed run (iter == max_iter) from a failed one. Also
                # when there was nothing left to do (resumed from the final checkpoint).
                self.train_completed = True
            except Exception:
                logger.exception(f"Exception during training (iteration {self.iter}):")
                raise
            finally:
                self._after_train_keeping_the_error()

    def _after_train_keeping_the_error(self) -> None:
        """Runs ``after_train``; when training failed, an error of a hook is logged, so that the
        training error (e.g. in the last iteration) is the one the run reports."""
        if self.train_completed:
            self.after_train()
            return
        try:
            self.after_train()
        except Exception:
            logger.exception("A hook failed in after_train, after training had failed:")

    def before_train(self) -> None:
        for h in self._hooks:
            h.before_train()

    def after_train(self) -> None:
        self.storage.iter = self.iter
        for h in self._hooks:
            h.after_train()

    def before_step(self) -> None:
        # storage.iter is the iteration that scalars put during this step are recorded at.
        self.storage.iter = self.iter
        for h in self._hooks:
            h.before_step()

    def after_backward(self) -> None:
        for h in self._hooks:
            h.after_backward()

    def after_step(self) -> None:
        for h in self._hooks:
            h.after_step()

    def run_step(self) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict:
        ret: Dict[str, Any] = {"iteration": self.iter}
        hooks_state = {}
        for h in self._hooks:
            sd = h.state_dict()
            if sd:
                name = type(h).__qualname__
                if name in hooks_state:
                    # Two hooks of one type cannot be told apart in a checkpoint.
                    continue
                hooks_state[name] = sd
        if hooks_state:
            ret["hooks"] = hooks_state
        return ret

    def load_state_dict(self, state_dict: dict) -> None:
        logger.info(f"Loading trainer state from iteration {state_dict['iteration']}")
        self.iter = state_dict["iteration"]
        for key, value in state_dict.get("hooks", {}).items():
            for h in self._hooks:
                if type(h).__qualname__ == key:
                    h.load_state_dict(value)
                    break
            else:
                logger.warning(f"Cannot find the hook '{key}', its state_dict is ignored.")


class SimpleTrainer(TrainerBase):
    """
    One iteration = next batch, forward, backward, optimizer step:

    .. code-block:: python

        losses = sum(model(data).values())
        optimizer.zero_grad(); losses.backward(); optimizer.step()

    ``model(data)`` must return a dict of scalar losses (or one scalar tensor). Losses are
    recorded in the event storage (averaged over ranks). A non-finite loss raises
    ``FloatingPointError`` naming the iteration and the losses, before the optimizer step, so
    the weights stay finite.

    Anything more elaborate (several optimizers, custom loss combinations) belongs in a
    subclass or a hook.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        data_loader: Iterable,
        optimizer: torch.optim.Optimizer,
        gather_metric_period: int = 1,
        zero_grad_before_forward: bool = False,
    ):
        """
        Args:
            model: a module taking a batch from ``data_loader`` and returning a dict of losses.
            data_loader: an iterable of batches; iterated for as long as training runs.
            optimizer: a torch optimizer over the model's parameters.
            gather_metric_period (int): record (and check the finiteness of) losses every this
                many iterations; >1 saves a little time in DDP.
            zero_grad_before_forward (bool): zero gradients before the forward pass instead of
                after it (for models whose forward itself accumulates gradients).
        """
        super().__init__()
        model.train()
        self.model = model
        self.data_loader = data_loader
        self._data_loader_iter_obj = None
        self.optimizer = optimizer
        self.gather_metric_period = int(gather_metric_period)
        self.zero_grad_before_forward = zero_grad_before_forward

    @property
    def _data_loader_iter(self):
        # Created on first use, so that building a trainer does not start loader workers.
        if self._data_loader_iter_obj is None:
            self._data_loader_iter_obj = iter(self.data_loader)
        return self._data_loader_iter_obj

    def run_step(self) -> None:
        assert self.model.training, "[SimpleTrainer] the model was switched to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start

        if self.zero_grad_before_forward:
            self.optimizer.zero_grad()
        loss_dict = self.model(data)
        losses, loss_dict = _total_loss(loss_dict)
        if not self.zero_grad_before_forward:
            self.optimizer.zero_grad()
        losses.backward()
        self.after_backward()
        self._write_metrics(loss_dict, data_time)
        self.optimizer.step()

    def _write_metrics(
        self, loss_dict: Mapping[str, torch.Tensor], data_time: float, prefix: str = ""
    ) -> None:
        if (self.iter + 1) % self.gather_metric_period != 0:
            return
        SimpleTrainer.write_metrics(loss_dict, data_time, self.iter, prefix)

    @staticmethod
    def write_metrics(
        loss_dict: Mapping[str, torch.Tensor], data_time: float, cur_iter: int, prefix: str = ""
    ) -> None:
        """
        Checks that every loss is finite (raises ``FloatingPointError`` otherwise) and records
        the losses, averaged over ranks, with ``data_time`` (max over ranks) in the storage.
        """
        metrics_dict = {k: v.detach().cpu().item() for k, v in loss_dict.items()}
        if not all(np.isfinite(v) for v in metrics_dict.values()):
            raise FloatingPointError(
                f"Loss became infinite or NaN at iteration={cur_iter}!\nloss_dict = {metrics_dict}"
            )
        metrics_dict["data_time"] = data_time
        all_metrics = comm.gather(metrics_dict)
        if not comm.is_main_process():
            return
        storage = get_event_storage()
        # data_time of the slowest rank tells whether the loader holds training back.
        data_time = np.max([m.pop("data_time") for m in all_metrics])
        storage.put_scalar("data_time", data_time, cur_iter=cur_iter)
        averaged = {k: float(np.mean([m[k] for m in all_metrics])) for k in all_metrics[0].keys()}
        total_losses_reduced = sum(averaged.values())
        storage.put_scalar(f"{prefix}total_loss", total_losses_reduced, cur_iter=cur_iter)
        if len(averaged) > 1:
            storage.put_scalars(cur_iter=cur_iter, **averaged)

    def state_dict(self) -> dict:
        ret = super().state_dict()
        ret["optimizer"] = self.optimizer.state_dict()
        return ret

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self.optimizer.load_state_dict(state_dict["optimizer"])


def _total_loss(loss_dict):
    """The sum of a model's losses, and the losses as a dict (a bare tensor becomes total_loss)."""
    if isinstance(loss_dict, torch.Tensor):
        return loss_dict, {"total_loss": loss_dict}
    if not isinstance(loss_dict, Mapping) or not loss_dict:
        raise TypeError(
            "In training the model must return a non-empty dict of scalar losses (or one scalar "
            f"loss tensor); got {type(loss_dict).__name__}"
        )
    return sum(loss_dict.values()), dict(loss_dict)


class AMPTrainer(SimpleTrainer):
    """
    ``SimpleTrainer`` with automatic mixed precision: the forward pass (and the losses) run under
    ``torch.autocast(device, dtype=precision)``; the backward pass follows the forward's dtypes.

    * **CUDA**: float16 (default) with a ``GradScaler`` that scales the loss, or bfloat16 (no
      scaler needed: it has float32's range).
    * **CPU**: bfloat16 autocast (convolutions and linear layers in bfloat16, which halves their
      saved activations); float16 on CPU raises a ``ValueError``.

    det3d's compiled ops (``roi_align``, ``nms``) compute in float32 under autocast, and the
    heads return float32 predictions, so losses, box decoding and NMS keep float32 precision.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        data_loader: Iterable,
        optimizer: torch.optim.Optimizer,
        gather_metric_period: int = 1,
        zero_grad_before_forward: bool = False,
        grad_scaler: Optional["torch.amp.GradScaler"] = None,
        precision: Union[None, str, torch.dtype] = None,
        log_grad_scaler: bool = False,
    ):
        """
        Args:
            grad_scaler: a ``torch.amp.GradScaler``; default: a new one (CUDA float16 only).
            precision: autocast dtype, ``torch.float16`` or ``torch.bfloat16`` or their names;
                None or "" = float16 on CUDA, bfloat16 on CPU (``SOLVER.AMP.DTYPE``).
            log_grad_scaler (bool): record the scaler's scale in the storage each iteration.
            Others: as ``SimpleTrainer``.
        """
        unsupported = "AMPTrainer does not support single-process multi-device training!"
        if isinstance(model, DistributedDataParallel):
            assert not (model.device_ids and len(model.device_ids) > 1), unsupported
        assert not isinstance(model, DataParallel), unsupported
        super().__init__(
            model, data_loader, optimizer, gather_metric_period, zero_grad_before_forward
        )

        self.device_type = "cuda" if _on_cuda(model) else "cpu"
        self.precision = resolve_amp_dtype(precision or "", self.device_type)
        self.amp_enabled = True
        if grad_scaler is None:
            grad_scaler = torch.amp.GradScaler(
                "cuda", enabled=self.device_type == "cuda" and self.precision == torch.float16
            )
        self.grad_scaler = grad_scaler
        self.log_grad_scaler = log_grad_scaler

    def run_step(self) -> None:
        assert self.model.training, "[AMPTrainer] the model was switched to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start

        if self.zero_grad_before_forward:
            self.optimizer.zero_grad()
        with torch.autocast(self.device_type, dtype=self.precision):
            loss_dict = self.model(data)
            losses, loss_dict = _total_loss(loss_dict)
        if not self.zero_grad_before_forward:
            self.optimizer.zero_grad()
        self.grad_scaler.scale(losses).backward()
        if self.log_grad_scaler and comm.is_main_process():
            get_event_storage().put_scalar("[metric]grad_scaler", self.grad_scaler.get_scale())
        self.after_backward()
        self._write_metrics(loss_dict, data_time)
        # step() unscales first, so gradient clipping inside optimizer.step sees true gradients.
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()

    def state_dict(self) -> dict:
        ret = super().state_dict()
        ret["grad_scaler"] = self.grad_scaler.state_dict()
        return ret

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        if state_dict.get("grad_scaler"):  # empty when saved by a run without a CUDA scaler
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])


def _on_cuda(model: torch.nn.Module) -> bool:
    for p in model.parameters():
        return p.device.type == "cuda"
    return torch.cuda.is_available()
