"""Tiny models, loaders and trainers for engine tests: no det3d.modeling or det3d.data needed."""

import itertools

import torch
from torch import nn


class LinearLossModel(nn.Module):
    """Takes ``list[dict]`` with ``"x"`` (4,) and ``"y"`` (1,); returns two losses in training."""

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.linear = nn.Linear(4, 1)
        with torch.no_grad():
            self.linear.weight.copy_(torch.randn(1, 4, generator=g))
            self.linear.bias.zero_()
        self.norm = nn.BatchNorm1d(4)

    def forward(self, batch):
        x = torch.stack([d["x"] for d in batch])
        y = torch.stack([d["y"] for d in batch])
        pred = self.linear(self.norm(x))
        if self.training:
            return {"loss_mse": ((pred - y) ** 2).mean(), "loss_l1": 0.1 * (pred - y).abs().mean()}
        return [{"pred": p} for p in pred]


def make_dataset(n: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    w = torch.tensor([1.0, -2.0, 0.5, 3.0])
    data = []
    for _ in range(n):
        x = torch.randn(4, generator=g)
        data.append({"x": x, "y": (x @ w).reshape(1)})
    return data


class ListLoader:
    """An endless loader over fixed batches, restarting from the first batch at each iter()."""

    def __init__(self, data, batch_size: int = 4):
        self.batches = [data[i : i + batch_size] for i in range(0, len(data), batch_size)]

    def __iter__(self):
        return itertools.cycle(self.batches)


def kill_in_iteration(trainer, iteration: int) -> None:
    """Trains ``trainer`` (already loaded) until it fails in ``iteration``, as a killed run."""
    import pytest

    from det3d.engine import hooks

    def crash(tr):
        if tr.iter == iteration:
            raise RuntimeError("killed")

    trainer.register_hooks([hooks.CallbackHook(after_step=crash)])
    with pytest.raises(RuntimeError, match="killed"):
        trainer.train()


def small_cfg(output_dir, **solver):
    """A config for 10 iterations of the tiny model: checkpoints every 4, one LR step at 5."""
    from det3d.config import get_cfg

    cfg = get_cfg()
    cfg.OUTPUT_DIR = str(output_dir)
    cfg.SOLVER.BASE_LR = 0.02
    cfg.SOLVER.MAX_ITER = 10
    cfg.SOLVER.STEPS = (5,)
    cfg.SOLVER.WARMUP_ITERS = 2
    cfg.SOLVER.CHECKPOINT_PERIOD = 4
    cfg.SOLVER.LOG_PERIOD = 5
    cfg.DATASETS.TEST = ()
    for k, v in solver.items():
        setattr(cfg.SOLVER, k, v)
    return cfg


def dummy_trainer_class():
    """DefaultTrainer with the tiny model and loader: exercises the engine without modeling/data."""
    from det3d.engine import DefaultTrainer

    class DummyTrainer(DefaultTrainer):
        @classmethod
        def build_model(cls, cfg):
            torch.manual_seed(0)
            return LinearLossModel()

        @classmethod
        def build_train_loader(cls, cfg):
            return ListLoader(make_dataset(), batch_size=4)

    return DummyTrainer


def reference_and_resumed(trainer_cls, cfg_of, tmp_path, kill_at: int = 6):
    """
    Returns (a trainer trained uninterrupted in ``tmp_path/ref``, a trainer resumed in
    ``tmp_path/run`` from the last checkpoint of a run killed in iteration ``kill_at``; loaded,
    not yet trained further). ``cfg_of(output_dir)`` makes each config.
    """
    ref = trainer_cls(cfg_of(tmp_path / "ref"))
    ref.resume_or_load(resume=False)
    ref.train()
    first = trainer_cls(cfg_of(tmp_path / "run"))
    first.resume_or_load(resume=False)
    kill_in_iteration(first, kill_at)
    second = trainer_cls(cfg_of(tmp_path / "run"))
    second.resume_or_load(resume=True)
    return ref, second
