"""Measures what a planned config costs on this machine: seconds per training iteration."""

import time

import torch

__all__ = ["measure_iteration_time"]


def measure_iteration_time(cfg, warmup: int = 3, iters: int = 6) -> float:
    """
    Trains the model of ``cfg`` for ``warmup + iters`` iterations on batches of its training data
    and returns the median seconds of the last ``iters``: loading a batch (in this process, so
    the figure is an upper bound for training with loader workers), forward, backward and
    optimizer step. Nothing is written; the process's torch random state is restored afterwards.

    Args:
        cfg: a det3d config with ``DATASETS.TRAIN``.
    """
    from det3d.data import build_detection_train_loader
    from det3d.modeling import build_model
    from det3d.solver import build_optimizer

    rng_state = torch.get_rng_state()
    cfg = cfg.clone()
    cfg.defrost()
    cfg.DATALOADER.NUM_WORKERS = 0  # one process: the probe must not fork a loader pool
    model = build_model(cfg)
    model.train()
    optimizer = build_optimizer(cfg, model)
    loader = iter(build_detection_train_loader(cfg))
    times = []
    try:
        for i in range(warmup + iters):
            start = time.perf_counter()
            data = next(loader)
            losses = model(data)
            loss = sum(losses.values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if i >= warmup:
                times.append(time.perf_counter() - start)
    finally:
        torch.set_rng_state(rng_state)
    times.sort()
    return times[len(times) // 2]
