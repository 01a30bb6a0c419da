"""The planner's timing probe (det3d.planning.probe) trains as the trainer would."""

import pytest
import torch
from torch import nn

import det3d.data
import det3d.data.build
import det3d.modeling
from det3d.config import get_cfg
from det3d.planning import measure_inference_time, measure_iteration_time


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


class _RecordingDetector(nn.Module):
    """Records, for each inference call, whether it ran in eval mode without gradients and the
    autocast it chose from ``TEST.AMP`` (as ``GeneralizedRCNN3D.inference_autocast`` does)."""

    def __init__(self, amp: bool):
        super().__init__()
        self.linear = nn.Linear(4, 1)
        self.amp = amp
        self.seen = []

    def forward(self, batch):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.amp):
            on = torch.is_autocast_enabled("cpu")
            self.seen.append((self.training, torch.is_grad_enabled(), on, batch[0]["image_id"]))
        return [{}]


@pytest.mark.parametrize("amp", [False, True])
def test_inference_probe_times_the_first_training_volume_as_configured(monkeypatch, amp):
    built = []

    def build_model(cfg):  # the model takes its autocast from the config it is built from
        built.append(_RecordingDetector(cfg.TEST.AMP.ENABLED))
        return built[-1]

    monkeypatch.setattr(det3d.modeling, "build_model", build_model)
    records = [{"image_id": 7}, {"image_id": 8}]
    monkeypatch.setattr(det3d.data.build, "get_detection_dataset_dicts", lambda names: records)
    monkeypatch.setattr(det3d.data, "DatasetMapper3D", lambda cfg, is_train: lambda r: dict(r))
    cfg = get_cfg()
    cfg.DATASETS.TRAIN = ("anything",)
    cfg.TEST.AMP.ENABLED = amp
    state = torch.get_rng_state()
    seconds = measure_inference_time(cfg, warmup=1, iters=3)
    assert seconds > 0
    assert len(built) == 1 and built[0].seen == [(False, False, amp, 7)] * 4
    assert torch.equal(torch.get_rng_state(), state)
