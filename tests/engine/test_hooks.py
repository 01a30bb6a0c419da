import json
import os

import pytest
import torch
from _engine_test_utils import LinearLossModel, ListLoader, make_dataset
from fvcore.common.param_scheduler import MultiStepParamScheduler

from det3d.checkpoint import DetectionCheckpointer
from det3d.engine import SimpleTrainer, hooks
from det3d.utils.events import CommonMetricPrinter, JSONWriter


def _trainer(lr=0.05):
    torch.manual_seed(0)
    model = LinearLossModel()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    return SimpleTrainer(model, ListLoader(make_dataset()), opt)


def test_lr_scheduler_hook_with_param_scheduler():
    trainer = _trainer(lr=0.01)
    sched = MultiStepParamScheduler(values=[1.0, 0.1, 0.01], milestones=[3, 6], num_updates=10)
    trainer.register_hooks([hooks.LRScheduler(scheduler=sched)])
    trainer.train(0, 10)
    lrs = [v for v, _ in trainer.storage.history("lr").values()]
    assert lrs == pytest.approx([0.01] * 3 + [0.001] * 3 + [0.0001] * 4)


def test_iteration_timer_records_time_after_warmup():
    trainer = _trainer()
    trainer.register_hooks([hooks.IterationTimer(warmup_iter=2)])
    trainer.train(0, 6)
    assert [it for _, it in trainer.storage.history("time").values()] == [1, 2, 3, 4, 5]


def test_eval_hook_periodic_and_final():
    calls = []
    trainer = _trainer()

    def eval_fn():
        calls.append(trainer.iter)
        return {"segm": {"AP": float(len(calls))}, "seg": {"SEG": 0.5}}

    hook = hooks.EvalHook(4, eval_fn)
    trainer.register_hooks([hook])
    trainer.train(0, 10)
    assert calls == [3, 7, 10]  # after iterations 3 and 7, and after training
    hist = trainer.storage.history("segm/AP").values()
    assert [v for v, _ in hist] == [1.0, 2.0, 3.0]
    assert trainer.storage.latest()["seg/SEG"][0] == 0.5


def test_eval_hook_not_at_end_when_training_failed():
    calls = []
    trainer = _trainer()

    def boom(t):
        if t.iter == 5:
            raise RuntimeError("boom")

    trainer.register_hooks(
        [hooks.EvalHook(0, lambda: calls.append(1) or {}), hooks.CallbackHook(after_step=boom)]
    )
    with pytest.raises(RuntimeError):
        trainer.train(0, 10)
    assert calls == []


def test_eval_hook_rejects_non_numbers():
    trainer = _trainer()
    trainer.register_hooks([hooks.EvalHook(0, lambda: {"bbox": {"AP": "high"}})])
    with pytest.raises(ValueError, match="bbox/AP"):
        trainer.train(0, 2)


def test_periodic_checkpointer_files(tmp_path):
    trainer = _trainer()
    ckpt = DetectionCheckpointer(trainer.model, str(tmp_path), optimizer=trainer.optimizer)
    trainer.register_hooks([hooks.PeriodicCheckpointer(ckpt, 3)])
    trainer.train(0, 7)
    names = sorted(os.listdir(tmp_path))
    assert names == ["last_checkpoint", "model_0000002.pth", "model_0000005.pth", "model_final.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    data = torch.load(tmp_path / "model_0000005.pth", weights_only=True)
    assert data["iteration"] == 5 and "optimizer" in data


def test_best_checkpointer_keeps_best_and_not_tagged_last(tmp_path):
    trainer = _trainer()
    ckpt = DetectionCheckpointer(trainer.model, str(tmp_path))
    values = iter([0.3, 0.7, 0.5, 0.6])
    best = hooks.BestCheckpointer(2, ckpt, "segm/AP50", mode="max")
    trainer.register_hooks(
        [
            hooks.EvalHook(2, lambda: {"segm": {"AP50": next(values)}}),
            best,
            hooks.PeriodicCheckpointer(ckpt, 100),
        ]
    )
    trainer.train(0, 8)  # evaluations after iterations 1, 3, 5 and at the end
    assert best.best_metric == 0.7 and best.best_iter == 3
    data = torch.load(tmp_path / "model_best.pth", weights_only=True)
    assert data["iteration"] == 3 and data["best_metric"] == 0.7
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"


def test_best_checkpointer_min_mode_and_bad_mode(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        hooks.BestCheckpointer(1, None, "x", mode="largest")
    trainer = _trainer()
    ckpt = DetectionCheckpointer(trainer.model, str(tmp_path))
    values = iter([3.0, 1.0, 2.0])
    best = hooks.BestCheckpointer(1, ckpt, "val/loss", mode="min")
    trainer.register_hooks([hooks.EvalHook(1, lambda: {"val": {"loss": next(values)}}), best])
    trainer.train(0, 3)
    assert best.best_metric == 1.0


def test_periodic_writer_json_and_printer(tmp_path, caplog):
    trainer = _trainer()
    json_file = str(tmp_path / "metrics.json")
    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.LRScheduler(
                scheduler=MultiStepParamScheduler([1.0, 0.5], milestones=[5], num_updates=10)
            ),
            hooks.PeriodicWriter([CommonMetricPrinter(10), JSONWriter(json_file)], period=4),
        ]
    )
    with caplog.at_level("INFO"):
        trainer.train(0, 10)
    lines = [json.loads(line) for line in open(json_file)]
    # the latest scalars, every 4 iterations and after the last one
    assert [d["iteration"] for d in lines] == [3, 7, 9]
    assert all("total_loss" in d and "lr" in d for d in lines)
    printed = [r.message for r in caplog.records if r.name == "det3d.utils.events"]
    assert len(printed) == 3 and "eta:" in printed[-1] and "loss_mse" in printed[-1]


def test_failure_in_the_last_iteration_reports_the_training_error():
    calls = []
    trainer = _trainer()

    def fail_last(t):
        if t.iter == 9:  # the last iteration
            raise FloatingPointError("Loss became infinite or NaN at iteration=9!")

    def evaluation():
        calls.append(1)
        raise RuntimeError("evaluation error that would hide the training error")

    trainer.register_hooks(
        [hooks.EvalHook(0, evaluation), hooks.CallbackHook(after_step=fail_last)]
    )
    with pytest.raises(FloatingPointError, match="iteration=9"):
        trainer.train(0, 10)
    assert calls == [] and not trainer.train_completed


def test_hook_error_after_a_failed_run_does_not_replace_the_training_error():
    trainer = _trainer()

    def fail(t):
        if t.iter == 2:
            raise FloatingPointError("training error")

    def after_train_error(t):
        raise RuntimeError("hook error")

    trainer.register_hooks([hooks.CallbackHook(after_step=fail, after_train=after_train_error)])
    with pytest.raises(FloatingPointError, match="training error"):
        trainer.train(0, 10)


class _Clock:
    """A clock that a hook registered before the TimeBudget advances by ``step`` s per step."""

    def __init__(self, step):
        self.t, self.step = 0.0, step

    def __call__(self):
        return self.t

    def tick(self, trainer):
        self.t += self.step if not callable(self.step) else self.step(trainer.iter)


def _budget_run(clock, minutes, max_iter, extra_hooks=(), **budget):
    trainer = _trainer(lr=0.01)
    budget_hook = hooks.TimeBudget(minutes, clock=clock, **budget)
    trainer.register_hooks([hooks.CallbackHook(before_step=clock.tick), budget_hook])
    trainer.register_hooks(list(extra_hooks))
    trainer.train(0, max_iter)
    return trainer, budget_hook


def test_time_budget_lengthens_the_run_and_the_lr_schedule_stretches_with_it():
    # 0.5 s per iteration, 1 minute: 120 iterations, whatever MAX_ITER guessed (50).
    clock = _Clock(0.5)
    sched = MultiStepParamScheduler(values=[1.0, 0.1], milestones=[85], num_updates=100)
    trainer, _ = _budget_run(clock, 1.0, 50, [hooks.LRScheduler(scheduler=sched)])
    assert trainer.iter == trainer.max_iter == 120
    assert clock.t == pytest.approx(60.0)
    # the decay at 85% of the run: iteration 102 of 120, not 42 of 50
    lrs = [v for v, _ in trainer.storage.history("lr").values()]
    assert lrs == pytest.approx([0.01] * 102 + [0.001] * 18)
    assert [v for v, _ in trainer.storage.history("max_iter").values()] == [120]


def test_time_budget_shortens_a_run_that_would_overrun_and_checkpoints_its_end(tmp_path):
    clock = _Clock(1.0)
    trainer = _trainer()
    ckpt = DetectionCheckpointer(trainer.model, str(tmp_path))
    trainer.register_hooks(
        [
            hooks.CallbackHook(before_step=clock.tick),
            hooks.TimeBudget(1.0, clock=clock),
            hooks.PeriodicCheckpointer(ckpt, 1000),
        ]
    )
    trainer.train(0, 200)
    assert trainer.iter == 60 and clock.t == pytest.approx(60.0)
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_final.pth"]
    assert torch.load(tmp_path / "model_final.pth", weights_only=True)["iteration"] == 59


def test_time_budget_only_shortens_after_refit_until():
    # Fast steps would fit 120 iterations, but the first fit (after 30) is at 75% of 40.
    trainer, _ = _budget_run(_Clock(0.5), 1.0, 40)
    assert trainer.iter == 40
    # Steps slowing from 0.5 to 0.75 s: the run stops before 100, near where the minute is spent
    # (the speed is the mean since iteration 10, so it lags; at most a period's steps over).
    clock = _Clock(lambda it: 0.5 if it < 40 else 0.75)
    trainer, _ = _budget_run(clock, 1.0, 100, refit_until=0.3)
    assert trainer.iter < 100
    assert 60.0 - 0.75 * 20 <= clock.t <= 60.0 + 0.75 * 20


def test_time_budget_resumed_spends_what_is_left():
    clock = _Clock(0.5)
    first = _trainer()
    hook = hooks.TimeBudget(1.0, clock=clock)
    first.register_hooks([hooks.CallbackHook(before_step=clock.tick), hook])

    def crash(tr):
        if tr.iter == 44:
            raise RuntimeError("killed")

    first.register_hooks([hooks.CallbackHook(after_step=crash)])
    with pytest.raises(RuntimeError, match="killed"):
        first.train(0, 50)
    state = hook.state_dict()
    assert state == {"seconds_spent": pytest.approx(22.5), "max_iter": 120}

    clock.t = 1000.0  # the time between the runs is not training time
    resumed = hooks.TimeBudget(1.0, clock=clock)
    resumed.load_state_dict(state)
    second = _trainer()
    second.register_hooks([hooks.CallbackHook(before_step=clock.tick), resumed])
    second.train(45, 50)  # the config's MAX_ITER; the saved fit replaces it
    assert second.iter == 120
    assert resumed.state_dict()["seconds_spent"] == pytest.approx(60.0)


def test_time_budget_refuses_bad_values():
    for minutes in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="SOLVER.TIME_BUDGET_MINUTES"):
            hooks.TimeBudget(minutes)
    with pytest.raises(ValueError, match="refit_until"):
        hooks.TimeBudget(1.0, refit_until=0.0)


def test_printer_eta_follows_a_refitted_max_iter():
    from det3d.utils.events import EventStorage

    printer = CommonMetricPrinter(max_iter=10)
    with EventStorage(4) as storage:
        storage.put_scalar("time", 2.0)
        assert printer._get_eta(storage) == "0:00:10"  # 5 iterations left at 2 s
        printer.write()
        storage.put_scalar("max_iter", 100, smoothing_hint=False)
        printer.write()
        assert printer._get_eta(storage) == "0:03:10"  # 95 left
