"""
An exponential moving average of a model's weights, kept during training and used for
evaluation and inference (``MODEL_EMA.*``).

A model trained from scratch for a short CPU budget ends its run with weights that still move
from one batch to the next. Their running average is a better model than any single iterate of
the run's end, and it costs one ``lerp`` over the weights per iteration. At iteration ``t`` the
average moves towards the weights by ``1 - decay_t``, with::

    decay_t = min(DECAY, (1 + t) / (10 + t))

so the first iterations, whose weights are far from trained, are forgotten quickly (the warm-up
of TensorFlow's ``ExponentialMovingAverage`` with ``num_updates``).

Where the averaged weights go:

* evaluation during and after training (``EvalHook``) runs with them swapped into the model;
* every checkpoint holds them as ``"ema"`` beside the raw weights (``"model"``), so ``--resume``
  continues both;
* a checkpoint loaded as weights only (``MODEL.WEIGHTS`` in ``--eval-only``, ``det3d-predict``,
  ``DefaultPredictor``, fine-tuning) gives the model its ``"ema"`` entry where it has one
  (``DetectionCheckpointer``): the average is the trained model.
"""

import contextlib
from typing import Dict, Iterator

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .train_loop import HookBase

__all__ = ["ModelEMA", "EMAHook", "ema_decay_at"]


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def ema_decay_at(decay: float, iteration: int) -> float:
    """The decay used after iteration ``iteration`` (0-based): ``min(decay, (1+t)/(10+t))``."""
    return min(float(decay), (1.0 + iteration) / (10.0 + iteration))


class ModelEMA:
    """
    The averaged copy of a model's state dict: floating tensors (parameters and buffers such as
    BatchNorm's running statistics) are averaged, integer buffers (``num_batches_tracked``) copied.

    Its ``state_dict`` is a plain model state dict, so a checkpoint's ``"ema"`` entry loads into
    the model as it is.
    """

    def __init__(self, model: nn.Module):
        """
        Args:
            model: the model (unwrapped from DistributedDataParallel if wrapped); the average
                starts at its current weights.
        """
        self._weights: Dict[str, torch.Tensor] = {
            k: v.detach().clone() for k, v in _unwrap(model).state_dict().items()
        }
        # fixed by the model: found once, not in every iteration's update
        self._floats = [k for k, v in self._weights.items() if v.is_floating_point()]
        self._others = [k for k, v in self._weights.items() if not v.is_floating_point()]

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float) -> None:
        """``ema = decay * ema + (1 - decay) * weights`` for each floating tensor."""
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must lie in [0, 1], got {decay}")
        current = _unwrap(model).state_dict()
        if current.keys() != self._weights.keys():
            raise KeyError(
                "the model's state dict no longer has the keys the EMA was built with: "
                f"{sorted(current.keys() ^ self._weights.keys())[:5]}"
            )
        # state_dict() tensors are detached already
        torch._foreach_lerp_(
            [self._weights[k] for k in self._floats],
            [current[k] for k in self._floats],
            1.0 - decay,
        )
        for k in self._others:
            self._weights[k].copy_(current[k])

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return dict(self._weights)

    def load_state_dict(self, state_dict: Dict[str, torch.Tensor]) -> None:
        missing = self._weights.keys() - state_dict.keys()
        if missing:
            raise KeyError(
                f"the checkpoint's 'ema' lacks {len(missing)} tensors: {sorted(missing)[:5]}"
            )
        for k, v in self._weights.items():
            if state_dict[k].shape != v.shape:
                raise ValueError(
                    f"the checkpoint's 'ema' holds {k!r} of shape {tuple(state_dict[k].shape)}, "
                    f"the model {tuple(v.shape)}"
                )
            v.copy_(state_dict[k])

    @contextlib.contextmanager
    def swapped_into(self, model: nn.Module) -> Iterator[None]:
        """Within the block the model holds the averaged weights; its own come back after."""
        module = _unwrap(model)
        own = {k: v.detach().clone() for k, v in module.state_dict().items()}
        module.load_state_dict(self._weights)
        try:
            yield
        finally:
            module.load_state_dict(own)


class EMAHook(HookBase):
    """
    Updates a :class:`ModelEMA` from the trainer's model after every iteration, with the decay
    of :func:`ema_decay_at`. Register it before the hooks that checkpoint or evaluate, so they
    see the average of the iteration that has just finished.
    """

    def __init__(self, ema: ModelEMA, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"MODEL_EMA.DECAY must lie in (0, 1), got {decay}")
        self.ema = ema
        self.decay = float(decay)

    def after_step(self) -> None:
        self.ema.update(self.trainer.model, ema_decay_at(self.decay, self.trainer.iter))
