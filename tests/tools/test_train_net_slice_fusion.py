"""
The 2.5D model through tools/train_net.py's main(), like every other config: the instant schedule
trains on slice windows of the tiny synthetic splits, evaluates whole volumes, reloads with
--eval-only (same metrics) and resumes a stopped run.
"""

import importlib.util
import json
import math
import os

import pytest
import torch

from det3d.engine import default_argument_parser

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
INSTANT = os.path.join(ROOT, "configs", "quick_schedules", "slice_fusion_R18_FPN_instant_test.yaml")

pytestmark = pytest.mark.usefixtures("restore_det3d_loggers")  # tests/conftest.py


def _load_train_net():
    spec = importlib.util.spec_from_file_location(
        "det3d_train_net_sf", os.path.join(ROOT, "tools", "train_net.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


train_net = _load_train_net()



def _args(*opts, flags=()):
    return default_argument_parser().parse_args([*flags, "--config-file", INSTANT, *opts])


@pytest.fixture(scope="module")
def instant_run(synthetic_root, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("sf_instant"))
    results = train_net.main(_args("OUTPUT_DIR", out, "SYNTHETIC.ROOT", synthetic_root))
    return out, results


def test_trains_on_slices_and_evaluates_volumes(instant_run):
    out, results = instant_run
    assert {"bbox", "segm", "matching", "seg"} <= set(results)
    assert 0.0 <= results["seg"]["SEG"] <= 1.0
    lines = [json.loads(line) for line in open(os.path.join(out, "metrics.json"))]
    trained = [d for d in lines if "total_loss" in d]
    assert [d["iteration"] for d in trained] == [0, 1, 2, 3, 4]
    assert all(math.isfinite(d["total_loss"]) and "loss_mask" in d for d in trained)
    final = torch.load(os.path.join(out, "model_final.pth"), weights_only=True)
    assert any(k.startswith("fusion.") for k in final["model"])


def test_eval_only_reproduces_metrics(instant_run, synthetic_root, tmp_path):
    out, results = instant_run
    weights = os.path.join(out, "model_final.pth")
    opts = ["MODEL.WEIGHTS", weights, "OUTPUT_DIR", str(tmp_path), "SYNTHETIC.ROOT", synthetic_root]
    again = train_net.main(_args(*opts, flags=["--eval-only"]))
    for task in results:
        for k, v in results[task].items():
            w = again[task][k]
            assert (math.isnan(v) and math.isnan(w)) or v == pytest.approx(w, abs=1e-6), (task, k)


def test_resume_continues_a_stopped_run(synthetic_root, tmp_path):
    common = ["OUTPUT_DIR", str(tmp_path), "SYNTHETIC.ROOT", synthetic_root, "DATASETS.TEST", "()"]
    train_net.main(_args(*common, "SOLVER.MAX_ITER", "3"))
    saved = torch.load(os.path.join(tmp_path, "model_final.pth"), weights_only=True)
    args = _args(*common, flags=["--resume"])
    trainer = train_net.Trainer(train_net.setup(args))
    trainer.resume_or_load(resume=args.resume)
    assert trainer.start_iter == 3
    for k, v in saved["model"].items():
        assert torch.equal(trainer.model.state_dict()[k], v), k
    trainer.train()
    iters = [json.loads(line)["iteration"] for line in open(os.path.join(tmp_path, "metrics.json"))]
    assert iters == [0, 1, 2, 3, 4]
