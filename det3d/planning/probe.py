"""Measures what a planned config costs on this machine: seconds per training iteration, and
seconds per volume at inference in float32 and under autocast."""

import time
from typing import Callable

import torch

__all__ = ["measure_iteration_time", "measure_inference_time"]


def _steady_state_proposals(module, args, kwargs):
    """
    A forward pre-hook on the ROI heads: adds 16 jittered copies of every gt box to the
    proposals, so the heads sample as many foreground RoIs as a trained RPN gives them. An
    untrained RPN's proposals are mostly background, and a probe on them would underestimate
    the mask branch, which runs on foreground RoIs only.
    """
    from det3d.structures import Boxes, Instances

    images, features, proposals, targets = (list(args) + [None] * 4)[:4]
    targets = kwargs.get("targets", targets)
    proposals = kwargs.get("proposals", proposals)
    if targets is None:
        return None
    g = torch.Generator().manual_seed(0)
    out = []
    for p, t in zip(proposals, targets):
        gt = t.gt_boxes.tensor.repeat(16, 1)
        ndim = gt.shape[1] // 2
        size = (gt[:, ndim:] - gt[:, :ndim]).repeat(1, 2)
        jitter = gt + size * 0.05 * torch.randn(gt.shape, generator=g)
        extra = Instances(
            p.image_size,
            proposal_boxes=Boxes(jitter.to(p.proposal_boxes.tensor)),
            objectness_logits=torch.zeros(len(jitter)).to(p.objectness_logits),
        )
        out.append(Instances.cat([p, extra]))
    new_args = list(args)
    if len(new_args) > 2:
        new_args[2] = out
    else:
        kwargs["proposals"] = out
    return tuple(new_args), kwargs


def _median_seconds(step: Callable[[], object], warmup: int, iters: int) -> float:
    """Runs ``step`` ``warmup + iters`` times; the median seconds of the last ``iters``."""
    times = []
    for i in range(warmup + iters):
        start = time.perf_counter()
        step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]


def measure_iteration_time(cfg, warmup: int = 3, iters: int = 6) -> float:
    """
    Trains the model of ``cfg`` for ``warmup + iters`` iterations on batches of its training data
    and returns the median seconds of the last ``iters``: loading a batch (in this process, so
    the figure is an upper bound for training with loader workers), forward, backward and
    optimizer step. The ROI heads get as many foreground RoIs as a trained RPN would give them
    (see ``_steady_state_proposals``). With ``SOLVER.AMP.ENABLED`` the forward pass runs under
    autocast, as ``AMPTrainer`` runs it. Nothing is written; the process's torch random state is
    restored afterwards.

    Args:
        cfg: a det3d config with ``DATASETS.TRAIN``.
    """
    from det3d.data import build_detection_train_loader
    from det3d.modeling import build_model
    from det3d.solver import build_optimizer
    from det3d.utils.amp import resolve_amp_dtype

    rng_state = torch.get_rng_state()
    cfg = cfg.clone()
    cfg.defrost()
    cfg.DATALOADER.NUM_WORKERS = 0  # one process: the probe must not fork a loader pool
    model = build_model(cfg)
    model.train()
    heads = getattr(model, "roi_heads", None)
    if heads is not None:
        heads.register_forward_pre_hook(_steady_state_proposals, with_kwargs=True)
    optimizer = build_optimizer(cfg, model)
    loader = iter(build_detection_train_loader(cfg))
    device = next(model.parameters()).device.type
    amp = cfg.SOLVER.AMP.ENABLED
    dtype = resolve_amp_dtype(cfg.SOLVER.AMP.DTYPE, device, "SOLVER.AMP.DTYPE") if amp else None

    def step():
        data = next(loader)
        with torch.autocast(device, dtype=dtype, enabled=amp):
            losses = model(data)
        loss = sum(losses.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    try:
        return _median_seconds(step, warmup, iters)
    finally:
        torch.set_rng_state(rng_state)


def measure_inference_time(cfg, warmup: int = 1, iters: int = 3) -> float:
    """
    Runs the model of ``cfg`` (as built: untrained) in eval mode on the first volume of its
    training data, ``warmup + iters`` times, and returns the median seconds of the last
    ``iters``: the whole inference, test-time flips and the label volume included, under
    ``TEST.AMP`` as the config sets it (the model's own ``inference_autocast``). An untrained box
    head scores every class alike, so the model keeps up to ``TEST.DETECTIONS_PER_IMAGE``
    detections of random boxes; the figure is for comparing settings on this machine, not a
    trained model's speed. Nothing is written; the torch random state is restored afterwards.

    Args:
        cfg: a det3d config with ``DATASETS.TRAIN``.
    """
    from det3d.data import DatasetMapper3D
    from det3d.data.build import get_detection_dataset_dicts
    from det3d.modeling import build_model

    rng_state = torch.get_rng_state()
    try:
        record = get_detection_dataset_dicts(list(cfg.DATASETS.TRAIN))[0]
        batch = [DatasetMapper3D(cfg, is_train=False)(record)]
        model = build_model(cfg)
        model.eval()
        with torch.no_grad():
            return _median_seconds(lambda: model(batch), warmup, iters)
    finally:
        torch.set_rng_state(rng_state)
