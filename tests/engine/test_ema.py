import pytest
import torch
from _engine_test_utils import (
    LinearLossModel,
    dummy_trainer_class,
    reference_and_resumed,
    small_cfg,
)

from det3d.checkpoint import DetectionCheckpointer
from det3d.engine import EMAHook, ModelEMA, hooks
from det3d.engine.ema import ema_decay_at

pytestmark = pytest.mark.usefixtures("restore_det3d_loggers")  # tests/conftest.py


class EMATrainer(dummy_trainer_class()):
    """The engine tests' trainer; records the weights each evaluation saw."""

    seen_in_test = []

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        cls.seen_in_test.append({k: v.clone() for k, v in model.state_dict().items()})
        return {"dummy": {"value": 1.0}}


def _cfg(path, decay=0.8):
    cfg = small_cfg(path, BASE_LR=0.05)
    cfg.TEST.EVAL_PERIOD = 5
    cfg.MODEL_EMA.ENABLED = True
    cfg.MODEL_EMA.DECAY = decay
    return cfg


def _reference_average(states, decay):
    """The average written out step by step from the weights after each iteration."""
    avg = {k: v.clone() for k, v in states[0][1].items()}  # the weights before iteration 0
    for t, state in states[1:]:
        d = min(decay, (1 + t) / (10 + t))
        for k, v in state.items():
            avg[k] = d * avg[k] + (1 - d) * v if v.is_floating_point() else v.clone()
    return avg


def _record_weights(trainer, states):
    def after_step(tr):
        states.append((tr.iter, {k: v.clone() for k, v in tr.model.state_dict().items()}))

    trainer.register_hooks([hooks.CallbackHook(after_step=after_step)])


def test_decay_warms_up_then_holds():
    assert ema_decay_at(0.999, 0) == pytest.approx(0.1)
    assert ema_decay_at(0.999, 10) == pytest.approx(11 / 20)
    assert ema_decay_at(0.9, 1000) == 0.9
    with pytest.raises(ValueError, match="MODEL_EMA.DECAY"):
        EMAHook(ModelEMA(LinearLossModel()), 1.0)


def test_trainer_keeps_the_average_evaluates_it_and_checkpoints_both(tmp_path):
    EMATrainer.seen_in_test = []
    trainer = EMATrainer(_cfg(tmp_path))
    states = [(-1, {k: v.clone() for k, v in trainer.model.state_dict().items()})]
    _record_weights(trainer, states)
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert [type(h).__name__ for h in trainer._hooks][:4] == [
        "IterationTimer",
        "LRScheduler",
        "EMAHook",
        "PeriodicCheckpointer",
    ]
    expected = _reference_average(states, 0.8)
    ema = trainer.ema.state_dict()
    for k, v in expected.items():
        assert torch.allclose(ema[k], v, atol=1e-6), k
    assert ema["norm.num_batches_tracked"] == 10  # integer buffers are copied, not averaged
    # the average differs from the last weights, or the test would prove nothing
    assert not torch.allclose(ema["linear.weight"], trainer.model.linear.weight)

    # evaluation (iteration 5 and the end) ran on the average; the model got its own weights back
    assert len(EMATrainer.seen_in_test) == 2
    for k, v in expected.items():
        assert torch.allclose(EMATrainer.seen_in_test[-1][k], v, atol=1e-6), k
    for k, v in states[-1][1].items():
        assert torch.equal(trainer.model.state_dict()[k], v), k

    saved = torch.load(tmp_path / "model_final.pth", weights_only=True)
    for k, v in states[-1][1].items():
        assert torch.equal(saved["model"][k], v), k
        assert torch.equal(saved["ema"][k], ema[k]), k


def test_weights_only_load_gives_the_model_the_average(tmp_path):
    trainer = EMATrainer(_cfg(tmp_path))
    trainer.resume_or_load(resume=False)
    trainer.train()
    saved = torch.load(tmp_path / "model_final.pth", weights_only=True)

    # --eval-only, det3d-predict: the model gets the average
    model = LinearLossModel(seed=3)
    DetectionCheckpointer(model, strict=True).load(str(tmp_path / "model_final.pth"))
    for k, v in model.state_dict().items():
        assert torch.equal(v, saved["ema"][k]), k

    # a checkpointer that restores "ema" itself: raw weights to the model, the average to the EMA
    model = LinearLossModel(seed=3)
    ema = ModelEMA(model)
    DetectionCheckpointer(model, ema=ema).load(str(tmp_path / "model_final.pth"))
    for k, v in model.state_dict().items():
        assert torch.equal(v, saved["model"][k]), k
        assert torch.equal(ema.state_dict()[k], saved["ema"][k]), k


def test_resume_continues_the_average(tmp_path):
    # killed in iteration 6, after the checkpoint of iteration 3
    ref, second = reference_and_resumed(EMATrainer, _cfg, tmp_path)
    assert second.start_iter == 4
    second.train()
    for k, v in ref.ema.state_dict().items():
        assert torch.allclose(second.ema.state_dict()[k], v, atol=1e-6), k


def test_ema_refuses_a_state_dict_of_another_model():
    ema = ModelEMA(LinearLossModel())
    with pytest.raises(KeyError, match="lacks"):
        ema.load_state_dict({"linear.weight": torch.zeros(1, 4)})
    bad = dict(ema.state_dict(), **{"linear.weight": torch.zeros(2, 4)})
    with pytest.raises(ValueError, match="linear.weight"):
        ema.load_state_dict(bad)
    with pytest.raises(ValueError, match="decay"):
        ema.update(LinearLossModel(), 1.5)
