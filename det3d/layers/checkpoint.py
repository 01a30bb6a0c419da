"""
Activation checkpointing of a module: its activations are not kept for the backward pass but
recomputed then, trading about one more forward pass of the module for its activation memory.
Backbones use it for ``MODEL.BACKBONE.CHECKPOINT``.
"""

import contextlib
from typing import Iterator, List, Tuple

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["checkpoint_module"]


def _running_stat_norms(module: nn.Module) -> List[nn.modules.batchnorm._NormBase]:
    return [
        m
        for m in module.modules()
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.training and m.track_running_stats
    ]


@contextlib.contextmanager
def _keep_running_stats(module: nn.Module) -> Iterator[None]:
    """
    Restores the running statistics of ``module``'s batch norms on exit: the recomputation is
    the second forward pass of the same batch, and must not update them a second time (BN in
    training mode normalises with the batch's own statistics, so the recomputed activations are
    the same; only the running averages would drift).
    """
    norms = _running_stat_norms(module)
    saved = [
        (m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
        for m in norms
    ]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, (mean, var, count) in zip(norms, saved):
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(count)


def _contexts(module: nn.Module) -> Tuple[contextlib.AbstractContextManager, ...]:
    return contextlib.nullcontext(), _keep_running_stats(module)


def checkpoint_module(module: nn.Module, *inputs: torch.Tensor) -> torch.Tensor:
    """
    ``module(*inputs)`` whose activations are recomputed in the backward pass instead of stored
    (``torch.utils.checkpoint`` with ``use_reentrant=False``). Gradients, outputs and batch-norm
    running statistics are those of ``module(*inputs)``: the RNG state is restored for the
    recomputation (``preserve_rng_state``) and batch-norm statistics are not updated twice.
    Without autograd (``torch.no_grad``, or nothing that requires a gradient) it is a plain call.

    Args:
        module: any module; SyncBN inside it reduces again during the recomputation.
        inputs: its positional inputs.

    Returns:
        what ``module(*inputs)`` returns.
    """
    needs_grad = torch.is_grad_enabled() and (
        any(isinstance(x, torch.Tensor) and x.requires_grad for x in inputs)
        or any(p.requires_grad for p in module.parameters())
    )
    if not needs_grad:
        return module(*inputs)
    return checkpoint(
        module,
        *inputs,
        use_reentrant=False,
        preserve_rng_state=True,
        context_fn=lambda: _contexts(module),
    )
