"""The planner's timing probe (det3d.planning.probe) trains as the trainer would."""

import pytest
import torch
from torch import nn

import det3d.data
import det3d.modeling
from det3d.config import get_cfg
from det3d.planning import measure_iteration_time


class _RecordingModel(nn.Module):
    """Records, for each training forward, the autocast dtype it ran under (None: none)."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 1)
        self.seen = []

    def forward(self, batch):
        on = torch.is_autocast_enabled("cpu")
        self.seen.append(torch.get_autocast_dtype("cpu") if on else None)
        return {"loss": self.linear(torch.stack(batch)).float().pow(2).mean()}


@pytest.mark.parametrize("amp, dtype", [(False, None), (True, torch.bfloat16)])
def test_probe_runs_under_the_configs_autocast(monkeypatch, amp, dtype):
    model = _RecordingModel()
    monkeypatch.setattr(det3d.modeling, "build_model", lambda cfg: model)
    batches = iter([[torch.randn(4), torch.randn(4)] for _ in range(9)])
    monkeypatch.setattr(det3d.data, "build_detection_train_loader", lambda cfg: batches)
    cfg = get_cfg()
    cfg.SOLVER.AMP.ENABLED = amp
    seconds = measure_iteration_time(cfg, warmup=3, iters=6)
    assert seconds > 0
    assert model.seen == [dtype] * 9  # every iteration, warm-up included, as AMPTrainer runs
