import pytest
import torch
from torch import nn

from det3d.config import get_cfg
from det3d.solver import build_optimizer, get_default_optimizer_params


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(1, 2, 3)
        self.norm = nn.BatchNorm3d(2)
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)
        self.head = nn.Linear(2, 1)
        self.shared = self.head  # a module reachable twice: its parameters appear once


def _group_of(opt, param):
    for g in opt.param_groups:
        if any(p is param for p in g["params"]):
            return g
    return None


def test_param_groups():
    net = _Net()
    params = get_default_optimizer_params(
        net,
        base_lr=0.1,
        weight_decay=1e-4,
        weight_decay_norm=0.0,
        bias_lr_factor=2.0,
        weight_decay_bias=0.0,
    )
    opt = torch.optim.SGD(params, lr=0.1)
    all_params = [p for g in opt.param_groups for p in g["params"]]
    assert len(all_params) == len({id(p) for p in all_params}) == 6  # frozen left out, no dupes
    assert _group_of(opt, net.frozen.weight) is None
    assert _group_of(opt, net.conv.weight)["weight_decay"] == 1e-4
    assert _group_of(opt, net.norm.weight)["weight_decay"] == 0.0
    assert _group_of(opt, net.conv.bias)["lr"] == pytest.approx(0.2)
    assert _group_of(opt, net.conv.bias)["weight_decay"] == 0.0


@pytest.mark.parametrize(
    "name,cls", [("SGD", torch.optim.SGD), ("ADAMW", torch.optim.AdamW), ("ADAM", torch.optim.Adam)]
)
def test_build_optimizer_types(name, cls):
    cfg = get_cfg()
    cfg.SOLVER.OPTIMIZER = name
    assert isinstance(build_optimizer(cfg, _Net()), cls)


@pytest.mark.parametrize("name", ["SGD", "ADAMW", "ADAM"])
def test_cpu_optimizers_use_the_fused_kernel_and_step_as_the_loop_does(name):
    # the independent reference: torch's own per-parameter loop with the same hyper-parameters
    cfg = get_cfg()
    cfg.SOLVER.OPTIMIZER = name
    cfg.SOLVER.MOMENTUM = 0.9
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True  # the clipping subclass, fused too
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 1e9  # that never clips here
    torch.manual_seed(0)
    net, ref_net = _Net(), _Net()
    ref_net.load_state_dict(net.state_dict())
    opt = build_optimizer(cfg, net)
    assert all(g["fused"] for g in opt.param_groups)
    ref_groups = [
        {
            **g,
            "params": [dict(ref_net.named_parameters())[_name_of(net, p)] for p in g["params"]],
            "fused": False,
            "foreach": False,
        }
        for g in opt.param_groups
    ]
    ref = type(opt).__mro__[1](ref_groups)  # the optimizer class without the clipping
    for step in range(3):
        grads = {n: torch.randn_like(p) * 0.1 for n, p in net.named_parameters() if p.requires_grad}
        for model in (net, ref_net):
            for n, p in model.named_parameters():
                if n in grads:
                    p.grad = grads[n].clone()
        opt.step()
        ref.step()
    for (n, p), q in zip(net.named_parameters(), ref_net.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=n)


def _name_of(net, param):
    return next(n for n, p in net.named_parameters() if p is param)


def test_unknown_optimizer():
    cfg = get_cfg()
    cfg.SOLVER.OPTIMIZER = "LION"
    with pytest.raises(ValueError, match="LION"):
        build_optimizer(cfg, _Net())


def test_all_frozen_model_raises():
    cfg = get_cfg()
    net = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="FREEZE_MODULES"):
        build_optimizer(cfg, net)


def _one_step(clip_type, value):
    cfg = get_cfg()
    cfg.SOLVER.BASE_LR = 1.0
    cfg.SOLVER.MOMENTUM = 0.0
    cfg.SOLVER.WEIGHT_DECAY = 0.0
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = clip_type
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = value
    net = nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        net.weight.zero_()
    opt = build_optimizer(cfg, net)
    net.weight.grad = torch.tensor([[3.0, -4.0, 0.5]])
    opt.step()
    return -net.weight.detach()[0]  # with lr 1, the applied (clipped) gradient


def test_gradient_clipping_by_value():
    assert torch.allclose(_one_step("value", 1.0), torch.tensor([1.0, -1.0, 0.5]))


def test_gradient_clipping_by_norm():
    g = torch.tensor([3.0, -4.0, 0.5])
    expected = g * (1.0 / g.norm())
    assert torch.allclose(_one_step("norm", 1.0), expected, atol=1e-5)


def test_unknown_clip_type():
    with pytest.raises(ValueError, match="CLIP_TYPE"):
        _one_step("full_model", 1.0)


def test_lr_first_decay_is_where_the_built_schedule_first_drops():
    from det3d.config import get_cfg
    from det3d.solver import build_lr_scheduler, lr_first_decay

    for name, extra, want in (
        ("WarmupMultiStepLR", {"STEPS": (40, 90)}, 0.4),
        ("WarmupStepWithFixedGammaLR", {"NUM_DECAYS": 3}, 0.25),
        ("WarmupCosineLR", {}, None),
    ):
        cfg = get_cfg()
        cfg.SOLVER.LR_SCHEDULER_NAME, cfg.SOLVER.MAX_ITER, cfg.SOLVER.WARMUP_ITERS = name, 100, 1
        for k, v in extra.items():
            setattr(cfg.SOLVER, k, v)
        assert lr_first_decay(cfg) == want, name
        if want is not None:  # the schedule itself: full LR just before, less from there on
            opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
            sched = build_lr_scheduler(cfg, opt)
            lrs = []
            for _ in range(100):
                lrs.append(opt.param_groups[0]["lr"])
                sched.step()
            first = int(round(want * 100))
            assert lrs[first - 1] == pytest.approx(1.0) and lrs[first] < 1.0, name
