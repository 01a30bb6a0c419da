import math

import pytest
import torch

from det3d.config import get_cfg
from det3d.solver import build_lr_scheduler, build_optimizer


def _lrs(cfg, n=None):
    model = torch.nn.Linear(3, 1)
    opt = build_optimizer(cfg, model)
    sched = build_lr_scheduler(cfg, opt)
    out = []
    for _ in range(n or cfg.SOLVER.MAX_ITER):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out, opt, sched


def _cfg(**solver):
    cfg = get_cfg()
    cfg.SOLVER.BASE_LR = 0.1
    cfg.SOLVER.WEIGHT_DECAY = 0.0
    for k, v in solver.items():
        setattr(cfg.SOLVER, k, v)
    return cfg


def test_warmup_multistep_values():
    cfg = _cfg(MAX_ITER=12, STEPS=(6, 9), GAMMA=0.1, WARMUP_ITERS=4, WARMUP_FACTOR=0.2)
    lrs, _, _ = _lrs(cfg)
    # linear warmup: lr = base * (f + (1 - f) * t / W) for t < W
    expected = [0.1 * (0.2 + 0.8 * t / 4) for t in range(4)]
    expected += [0.1, 0.1]  # iterations 4, 5
    expected += [0.01] * 3 + [0.001] * 3
    assert lrs == pytest.approx(expected)


def test_constant_warmup():
    cfg = _cfg(MAX_ITER=6, STEPS=(), WARMUP_ITERS=2, WARMUP_FACTOR=0.5, WARMUP_METHOD="constant")
    lrs, _, _ = _lrs(cfg)
    assert lrs == pytest.approx([0.05, 0.05, 0.1, 0.1, 0.1, 0.1])


def test_warmup_cosine_values():
    cfg = _cfg(LR_SCHEDULER_NAME="WarmupCosineLR", MAX_ITER=10, WARMUP_ITERS=0, BASE_LR_END=0.02)
    lrs, _, _ = _lrs(cfg)
    expected = [0.02 + 0.5 * (0.1 - 0.02) * (1 + math.cos(math.pi * t / 10)) for t in range(10)]
    assert lrs == pytest.approx(expected)


def test_cosine_with_warmup_joins_the_curve():
    cfg = _cfg(LR_SCHEDULER_NAME="WarmupCosineLR", MAX_ITER=10, WARMUP_ITERS=2, WARMUP_FACTOR=0.1)
    lrs, _, _ = _lrs(cfg)
    cos = lambda t: 0.5 * 0.1 * (1 + math.cos(math.pi * t / 10))  # noqa: E731
    # warmup goes linearly from 0.1 * base to the cosine's value at the end of warmup
    assert lrs[0] == pytest.approx(0.01)
    assert lrs[1] == pytest.approx(0.01 + (cos(2) - 0.01) / 2)
    assert lrs[2:] == pytest.approx([cos(t) for t in range(2, 10)])


def test_step_at_or_beyond_max_iter_is_dropped():
    cfg = _cfg(MAX_ITER=5, STEPS=(3, 5, 8), WARMUP_ITERS=0)
    lrs, _, _ = _lrs(cfg)
    assert lrs == pytest.approx([0.1, 0.1, 0.1, 0.01, 0.01])


def test_scheduler_state_dict_resumes_schedule():
    cfg = _cfg(MAX_ITER=12, STEPS=(6, 9), WARMUP_ITERS=4, WARMUP_FACTOR=0.2)
    full, _, _ = _lrs(cfg)
    _, _, sched = _lrs(cfg, n=7)
    state = sched.state_dict()
    assert set(state) == {"base_lrs", "last_epoch"}  # plain data: loads with weights_only
    model = torch.nn.Linear(3, 1)
    opt = build_optimizer(cfg, model)
    resumed = build_lr_scheduler(cfg, opt)
    resumed.load_state_dict(state)
    rest = []
    for _ in range(5):
        rest.append(opt.param_groups[0]["lr"])
        opt.step()
        resumed.step()
    assert rest == pytest.approx(full[7:])


def test_unknown_scheduler_name():
    with pytest.raises(ValueError, match="NoSuchLR"):
        _lrs(_cfg(LR_SCHEDULER_NAME="NoSuchLR", MAX_ITER=3))
