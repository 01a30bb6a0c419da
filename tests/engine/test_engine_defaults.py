import json
import os

import pytest
import torch
from _engine_test_utils import (
    dummy_trainer_class,
    kill_in_iteration,
    reference_and_resumed,
    small_cfg,
)

from det3d.config import get_cfg
from det3d.engine import DefaultTrainer, default_argument_parser, default_setup

pytestmark = pytest.mark.usefixtures("restore_det3d_loggers")  # tests/conftest.py


DummyTrainer = dummy_trainer_class()
_cfg = small_cfg


def test_argument_parser_detectron2_style():
    args = default_argument_parser().parse_args(
        "--config-file a.yaml --num-gpus 2 --num-machines 2 --machine-rank 1 --resume "
        "--dist-url tcp://10.0.0.1:1234 SOLVER.BASE_LR 0.1 MODEL.WEIGHTS w.pth".split()
    )
    assert args.config_file == "a.yaml" and args.num_gpus == 2 and args.num_machines == 2
    assert args.machine_rank == 1 and args.resume and not args.eval_only
    assert args.dist_url == "tcp://10.0.0.1:1234"
    assert args.opts == ["SOLVER.BASE_LR", "0.1", "MODEL.WEIGHTS", "w.pth"]
    defaults = default_argument_parser().parse_args(["--eval-only"])
    assert defaults.eval_only and defaults.dist_url == "auto" and defaults.num_gpus == 1
    assert defaults.opts == []


def test_default_setup_writes_config_log_and_seeds(tmp_path):
    cfg = _cfg(tmp_path)
    cfg.SEED = 7
    args = default_argument_parser().parse_args([])
    default_setup(cfg, args)
    assert (tmp_path / "config.yaml").is_file()
    reread = get_cfg()
    reread.merge_from_file(str(tmp_path / "config.yaml"))
    assert reread.SOLVER.MAX_ITER == 10
    a = torch.rand(3)
    default_setup(cfg, args)
    assert torch.equal(a, torch.rand(3))  # same seed, same numbers
    log = (tmp_path / "log.txt").read_text()
    assert "Environment info" in log and "Random seed of this process: 7" in log


def test_default_setup_random_seed_is_logged(tmp_path):
    cfg = _cfg(tmp_path)
    cfg.SEED = -1
    default_setup(cfg, default_argument_parser().parse_args([]))
    assert "Using a generated random seed" in (tmp_path / "log.txt").read_text()


def test_default_trainer_trains_checkpoints_and_writes_metrics(tmp_path):
    trainer = DummyTrainer(_cfg(tmp_path))
    trainer.resume_or_load(resume=False)
    assert trainer.start_iter == 0
    trainer.train()
    names = set(os.listdir(tmp_path))
    assert {"model_0000003.pth", "model_0000007.pth", "model_final.pth", "metrics.json"} <= names
    lines = [json.loads(line) for line in open(tmp_path / "metrics.json")]
    assert lines[-1]["iteration"] == 9 and "lr" in lines[-1] and "time" in lines[-1]
    types = [type(h).__name__ for h in trainer._hooks]
    assert types == [
        "IterationTimer",
        "LRScheduler",
        "PeriodicCheckpointer",
        "EvalHook",
        "PeriodicWriter",
    ]


def test_resume_continues_from_saved_iteration_with_same_state(tmp_path):
    # Reference: 10 uninterrupted iterations. Interrupted: fails in iteration 6, after the
    # checkpoint of iteration 3.
    ref, second = reference_and_resumed(DummyTrainer, _cfg, tmp_path)
    assert (tmp_path / "run" / "last_checkpoint").read_text() == "model_0000003.pth"
    assert second.start_iter == 4
    saved = torch.load(tmp_path / "run" / "model_0000003.pth", weights_only=True)
    opt_state = second.optimizer.state_dict()
    assert opt_state["param_groups"] == saved["trainer"]["_trainer"]["optimizer"]["param_groups"]
    for k, v in saved["trainer"]["_trainer"]["optimizer"]["state"].items():
        assert torch.equal(opt_state["state"][k]["momentum_buffer"], v["momentum_buffer"])
    assert second.scheduler.last_epoch == 4
    second.train()

    for (name, a), (_, b) in zip(ref.model.state_dict().items(), second.model.state_dict().items()):
        assert torch.allclose(a, b, atol=1e-7), name
    lr_ref = [v for v, it in ref.storage.history("lr").values() if it >= 4]
    lr_res = [v for v, _ in second.storage.history("lr").values()]
    assert lr_res == pytest.approx(lr_ref)


def test_resume_without_checkpoint_starts_at_zero(tmp_path):
    trainer = DummyTrainer(_cfg(tmp_path))
    trainer.resume_or_load(resume=True)
    assert trainer.start_iter == 0


def test_best_checkpointer_registered_from_cfg(tmp_path):
    cfg = _cfg(tmp_path)
    cfg.SOLVER.BEST_CHECKPOINT_METRIC = "val/score"
    cfg.TEST.EVAL_PERIOD = 5
    scores = iter([0.2, 0.9])

    class T(DummyTrainer):
        @classmethod
        def test(cls, cfg, model, evaluators=None):
            return {"val": {"score": next(scores)}}

    trainer = T(cfg)
    trainer.resume_or_load(resume=False)
    results = trainer.train()
    assert results == {"val": {"score": 0.9}}
    assert torch.load(tmp_path / "model_best.pth", weights_only=True)["iteration"] == 10


def test_auto_scale_workers():
    cfg = get_cfg()
    cfg.SOLVER.REFERENCE_WORLD_SIZE = 2
    cfg.SOLVER.IMS_PER_BATCH = 4
    cfg.SOLVER.BASE_LR = 0.01
    cfg.SOLVER.MAX_ITER = 1000
    cfg.SOLVER.STEPS = (600, 800)
    cfg.freeze()
    scaled = DefaultTrainer.auto_scale_workers(cfg, 4)
    assert scaled.SOLVER.IMS_PER_BATCH == 8 and scaled.SOLVER.BASE_LR == pytest.approx(0.02)
    assert scaled.SOLVER.MAX_ITER == 500 and scaled.SOLVER.STEPS == (300, 400)
    assert scaled.is_frozen() and cfg.SOLVER.MAX_ITER == 1000
    assert DefaultTrainer.auto_scale_workers(cfg, 2) is cfg


def test_amp_config_on_cpu_trains_in_bfloat16(tmp_path):
    from det3d.engine import AMPTrainer

    cfg = _cfg(tmp_path, MAX_ITER=3)
    cfg.SOLVER.AMP.ENABLED = True
    if not torch.cuda.is_available():
        cfg.SOLVER.AMP.DTYPE = "float16"
        with pytest.raises(ValueError, match="SOLVER.AMP.DTYPE='float16' on CPU"):
            DummyTrainer(cfg)
        cfg.SOLVER.AMP.DTYPE = ""
    trainer = DummyTrainer(cfg)
    assert isinstance(trainer._trainer, AMPTrainer)
    trainer.resume_or_load(resume=False)
    trainer.train()
    if not torch.cuda.is_available():
        assert trainer._trainer.precision == torch.bfloat16
    # the checkpoint of an AMP run loads with weights_only and resumes
    again = DummyTrainer(cfg)
    again.resume_or_load(resume=True)
    assert again.start_iter == 3


def test_resume_of_a_finished_run_only_evaluates(tmp_path):
    cfg = _cfg(tmp_path, MAX_ITER=4)
    first = DummyTrainer(cfg)
    first.resume_or_load(resume=False)
    first.train()
    calls = []

    class T(DummyTrainer):
        @classmethod
        def test(cls, cfg, model, evaluators=None):
            calls.append(1)
            return {"val": {"score": 1.0}}

    again = T(cfg)
    again.resume_or_load(resume=True)
    assert again.start_iter == 4
    assert again.train() == {"val": {"score": 1.0}}
    assert calls == [1] and again.iter == 4


def test_fresh_run_refuses_to_overwrite_an_earlier_runs_checkpoints(tmp_path):
    cfg = _cfg(tmp_path, MAX_ITER=4)
    first = DummyTrainer(cfg)
    first.resume_or_load(resume=False)
    first.train()
    saved = {p.name: p.read_bytes() for p in tmp_path.glob("model_*.pth")}
    assert "model_final.pth" in saved
    again = DummyTrainer(cfg)
    with pytest.raises(FileExistsError, match="model_final.pth.*--resume"):
        again.resume_or_load(resume=False)
    assert {p.name: p.read_bytes() for p in tmp_path.glob("model_*.pth")} == saved


def _budget_trainer(output_dir, clock):
    """A DummyTrainer for 0.5 min at ``clock``'s 0.5 s per step (60 iterations; MAX_ITER 50)."""
    from det3d.engine import hooks

    cfg = _cfg(output_dir, MAX_ITER=50, STEPS=(42,), CHECKPOINT_PERIOD=20, TIME_BUDGET_MINUTES=0.5)
    trainer = DummyTrainer(cfg)
    budget = next(h for h in trainer._hooks if isinstance(h, hooks.TimeBudget))
    budget._clock = clock
    trainer.register_hooks([hooks.CallbackHook(before_step=lambda t: clock.tick())])
    return trainer


class _Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t

    def tick(self):
        self.t += 0.5


def test_time_budget_from_the_config_fits_the_run_and_survives_a_resume(tmp_path):
    ref = _budget_trainer(tmp_path / "ref", _Clock())
    types = [type(h).__name__ for h in ref._hooks]
    assert types[:3] == ["IterationTimer", "TimeBudget", "LRScheduler"]
    ref.resume_or_load(resume=False)
    ref.train()
    assert ref.iter == 60
    lrs = {it: v for v, it in ref.storage.history("lr").values()}
    # the decay at 42/50 of the run: iteration 51 of 60
    assert lrs[50] == pytest.approx(0.02) and lrs[51] == pytest.approx(0.002)
    final = torch.load(tmp_path / "ref" / "model_final.pth", weights_only=True)
    assert final["iteration"] == 59

    clock = _Clock()
    first = _budget_trainer(tmp_path / "run", clock)
    first.resume_or_load(resume=False)
    kill_in_iteration(first, 45)  # after the checkpoint of iteration 39
    clock.t += 100.0  # not training time
    second = _budget_trainer(tmp_path / "run", clock)
    second.resume_or_load(resume=True)
    assert second.start_iter == 40
    second.train()
    assert second.iter == 60
    resumed = {it: v for v, it in second.storage.history("lr").values()}
    assert resumed == pytest.approx({it: v for it, v in lrs.items() if it >= 40})


def test_time_budget_must_be_positive_and_stops_lengthening_before_the_decay(tmp_path):
    from det3d.engine import hooks

    with pytest.raises(ValueError, match="SOLVER.TIME_BUDGET_MINUTES"):
        DummyTrainer(_cfg(tmp_path, TIME_BUDGET_MINUTES=-1.0))
    trainer = DummyTrainer(_cfg(tmp_path, MAX_ITER=100, STEPS=(40, 90), TIME_BUDGET_MINUTES=1.0))
    budget = next(h for h in trainer._hooks if isinstance(h, hooks.TimeBudget))
    assert budget._refit_until == pytest.approx(0.4)
    fixed_gamma = _cfg(
        tmp_path,
        TIME_BUDGET_MINUTES=1.0,
        LR_SCHEDULER_NAME="WarmupStepWithFixedGammaLR",
        NUM_DECAYS=3,
    )
    budget = next(h for h in DummyTrainer(fixed_gamma)._hooks if isinstance(h, hooks.TimeBudget))
    assert budget._refit_until == pytest.approx(0.25)
