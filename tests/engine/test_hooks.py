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

    trainer.register_hooks(
        [hooks.CallbackHook(after_step=fail, after_train=after_train_error)]
    )
    with pytest.raises(FloatingPointError, match="training error"):
        trainer.train(0, 10)
