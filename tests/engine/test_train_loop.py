import math

import pytest
import torch
from _engine_test_utils import LinearLossModel, ListLoader, make_dataset

from det3d.engine import AMPTrainer, HookBase, SimpleTrainer, hooks
from det3d.utils.events import get_event_storage


def _trainer(**kwargs):
    torch.manual_seed(0)
    model = LinearLossModel()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return SimpleTrainer(model, ListLoader(make_dataset()), opt, **kwargs)


def test_simple_trainer_reduces_loss_and_records_metrics():
    trainer = _trainer()
    trainer.train(0, 30)
    hist = trainer.storage.history("total_loss").values()
    assert len(hist) == 30
    assert hist[-1][0] < hist[0][0]
    # total_loss is the sum of the model's losses
    latest = trainer.storage.latest()
    assert latest["total_loss"][0] == pytest.approx(latest["loss_mse"][0] + latest["loss_l1"][0])
    assert "data_time" in latest
    assert trainer.iter == 30  # == max_iter after a completed run


def test_gather_metric_period():
    trainer = _trainer(gather_metric_period=5)
    trainer.train(0, 10)
    iters = [it for _, it in trainer.storage.history("total_loss").values()]
    assert iters == [4, 9]


def test_zero_grad_before_forward_same_result():
    a, b = _trainer(), _trainer(zero_grad_before_forward=True)
    a.train(0, 5)
    b.train(0, 5)
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(pa, pb)


class _Recorder(HookBase):
    def __init__(self, name, log):
        self.name, self.log = name, log

    def before_train(self):
        self.log.append((self.name, "before_train", self.trainer.iter))

    def after_train(self):
        self.log.append((self.name, "after_train", self.trainer.iter))

    def before_step(self):
        self.log.append((self.name, "before_step", self.trainer.iter))

    def after_backward(self):
        self.log.append((self.name, "after_backward", self.trainer.iter))

    def after_step(self):
        self.log.append((self.name, "after_step", self.trainer.iter))


def test_hook_call_order():
    log = []
    trainer = _trainer()
    trainer.register_hooks([_Recorder("a", log), None, _Recorder("b", log)])
    trainer.train(3, 5)
    expected = [("a", "before_train", 3), ("b", "before_train", 3)]
    for it in (3, 4):
        for event in ("before_step", "after_backward", "after_step"):
            expected += [("a", event, it), ("b", event, it)]
    expected += [("a", "after_train", 5), ("b", "after_train", 5)]
    assert log == expected


def test_after_train_runs_on_exception_and_sees_failed_iter():
    log = []
    trainer = _trainer()

    def boom(t):
        if t.iter == 2:
            raise RuntimeError("stop")

    trainer.register_hooks([hooks.CallbackHook(after_step=boom), _Recorder("r", log)])
    with pytest.raises(RuntimeError, match="stop"):
        trainer.train(0, 10)
    assert log[-1] == ("r", "after_train", 2)


class _NaNModel(LinearLossModel):
    def __init__(self, bad_iter):
        super().__init__()
        self.calls, self.bad_iter = 0, bad_iter

    def forward(self, batch):
        out = super().forward(batch)
        if self.calls == self.bad_iter:
            out["loss_l1"] = out["loss_l1"] * float("nan")
        self.calls += 1
        return out


def test_non_finite_loss_names_iteration_and_losses():
    model = _NaNModel(bad_iter=3)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    trainer = SimpleTrainer(model, ListLoader(make_dataset()), opt)
    with pytest.raises(FloatingPointError) as e:
        trainer.train(0, 10)
    msg = str(e.value)
    assert "iteration=3" in msg and "loss_l1" in msg and "nan" in msg
    # The optimizer step of the bad iteration did not run: weights are finite.
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_model_returning_a_bare_loss_tensor():
    class M(LinearLossModel):
        def forward(self, batch):
            return sum(super().forward(batch).values())

    model = M()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    trainer = SimpleTrainer(model, ListLoader(make_dataset()), opt)
    trainer.train(0, 2)
    assert "total_loss" in trainer.storage.latest()


def test_model_returning_non_dict_raises_type_error():
    class M(LinearLossModel):
        def forward(self, batch):
            return [1]

    model = M()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    trainer = SimpleTrainer(model, ListLoader(make_dataset()), opt)
    with pytest.raises(TypeError, match="dict of scalar losses"):
        trainer.train(0, 1)


def test_amp_trainer_on_cpu_runs_bfloat16_autocast_close_to_simple_trainer():
    if torch.cuda.is_available():
        pytest.skip("CPU autocast only")
    seen = []

    class M(LinearLossModel):
        def forward(self, batch):
            on = torch.is_autocast_enabled("cpu")
            seen.append(torch.get_autocast_dtype("cpu") if on else None)
            out = super().forward(batch)
            seen.append(self.linear(torch.ones(1, 4)).dtype)  # a layer autocast lowers
            return out

    torch.manual_seed(0)
    model = M()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    amp = AMPTrainer(model, ListLoader(make_dataset()), opt)
    assert amp.precision == torch.bfloat16 and not amp.grad_scaler.is_enabled()
    amp.train(0, 5)
    assert seen[:2] == [torch.bfloat16, torch.bfloat16]
    ref = _trainer()
    ref.train(0, 5)
    for pa, pb in zip(amp.model.parameters(), ref.model.parameters()):
        assert pa.dtype == torch.float32
        # five SGD steps on bfloat16 forward passes: close to float32, not equal
        torch.testing.assert_close(pa, pb, rtol=0.05, atol=0.02)
        assert not torch.equal(pa, pb)
    amp_losses = [v for v, _ in amp.storage.history("total_loss").values()]
    ref_losses = [v for v, _ in ref.storage.history("total_loss").values()]
    assert amp_losses == pytest.approx(ref_losses, rel=0.05)
    sd = amp.state_dict()
    assert "grad_scaler" in sd and sd["iteration"] == 5


def test_amp_trainer_float16_on_cpu_raises():
    if torch.cuda.is_available():
        pytest.skip("CPU only")
    model = LinearLossModel()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with pytest.raises(ValueError, match="SOLVER.AMP.DTYPE='float16' on CPU"):
        AMPTrainer(model, ListLoader(make_dataset()), opt, precision=torch.float16)


def test_trainer_state_dict_roundtrip():
    trainer = _trainer()
    trainer.train(0, 4)
    sd = trainer.state_dict()
    other = _trainer()
    other.load_state_dict(sd)
    assert other.iter == 4
    st_a = trainer.optimizer.state_dict()["state"]
    st_b = other.optimizer.state_dict()["state"]
    for k in st_a:
        assert torch.equal(st_a[k]["momentum_buffer"], st_b[k]["momentum_buffer"])


def test_storage_available_inside_model_forward():
    seen = []

    class M(LinearLossModel):
        def forward(self, batch):
            get_event_storage().put_scalar("custom", 1.0)
            seen.append(get_event_storage().iter)
            return super().forward(batch)

    model = M()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    trainer = SimpleTrainer(model, ListLoader(make_dataset()), opt)
    trainer.train(2, 4)
    assert seen == [2, 3]
    assert math.isclose(trainer.storage.latest()["custom"][0], 1.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_amp_trainer_on_cuda_uses_grad_scaler():
    torch.manual_seed(0)
    model = LinearLossModel().cuda()
    data = [{k: v.cuda() for k, v in d.items()} for d in make_dataset()]
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    trainer = AMPTrainer(model, ListLoader(data), opt, log_grad_scaler=True)
    assert trainer.amp_enabled and trainer.grad_scaler.is_enabled()
    trainer.train(0, 5)
    assert "[metric]grad_scaler" in trainer.storage.latest()
    assert trainer.state_dict()["grad_scaler"]
