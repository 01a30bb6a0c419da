"""
projects/Det3DInDetectron2/train_net.py end to end: Detectron2's DefaultTrainer (a subclass
overriding only loaders, evaluators and one hook) trains a det3d model with the optimizer its
config names, writes det3d's statistics to metrics.json, checkpoints, resumes, and evaluates
with det3d's evaluators; --eval-only reproduces the results from the checkpoint.
"""

import importlib.util
import json
import math
import os

import pytest
import torch

pytest.importorskip("detectron2")

from detectron2.engine import default_argument_parser  # noqa: E402
from detectron2.evaluation.testing import flatten_results_dict  # noqa: E402

from _bridge_test_utils import PROJECT_DIR  # noqa: E402

INSTANT = os.path.join(PROJECT_DIR, "configs", "mask_rcnn_R18_FPN_3d_instant_test.yaml")
# Scalars det3d's model parts record during training (RPN, box head, ROI sampling, mask head).
DET3D_STATISTICS = {
    "rpn/num_pos_anchors",
    "rpn/num_neg_anchors",
    "fast_rcnn/cls_accuracy",
    "roi_head/num_fg_samples",
    "mask_rcnn/accuracy",
    "mask_rcnn/dice",
}

pytestmark = pytest.mark.usefixtures("restore_loggers")


def _load_train_net():
    path = os.path.join(PROJECT_DIR, "train_net.py")
    spec = importlib.util.spec_from_file_location("det3d_in_detectron2_train_net", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


train_net = _load_train_net()



def _args(*opts, flags=()):
    return default_argument_parser().parse_args([*flags, "--config-file", INSTANT, *opts])


def _metrics(out):
    with open(os.path.join(out, "metrics.json")) as f:
        return [json.loads(line) for line in f]


def _evaluation(line):
    """The flattened evaluation results (``"segm/AP"``, ``"seg/SEG"``, ...) of a metrics line."""
    tasks = ("bbox/", "segm/", "matching/", "seg/")
    return {k: v for k, v in line.items() if k.startswith(tasks)}


@pytest.fixture(scope="module")
def instant_run(synthetic_root, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("d2_instant"))
    # Detectron2's main() returns nothing after training; its EvalHook logs the results.
    assert train_net.main(_args("OUTPUT_DIR", out, "SYNTHETIC.ROOT", synthetic_root)) is None
    return out


def test_detectron2_trainer_trains_and_evaluates_with_det3d(instant_run):
    out = instant_run
    files = set(os.listdir(out))
    assert {"model_0000002.pth", "model_final.pth", "last_checkpoint", "config.yaml"} <= files
    lines = _metrics(out)
    written = set().union(*lines)
    assert DET3D_STATISTICS <= written, DET3D_STATISTICS - written
    trained = [d for d in lines if "total_loss" in d]
    assert trained and all(math.isfinite(d["total_loss"]) for d in trained)
    assert trained[-1]["iteration"] == 4
    results = _evaluation(lines[-1])  # det3d's evaluators, run by Detectron2's EvalHook
    assert {"bbox/AP", "segm/AP50", "matching/f1@0.5", "seg/SEG"} <= set(results)
    assert 0.0 <= results["seg/SEG"] <= 1.0
    assert os.path.isfile(os.path.join(out, "inference", "synthetic_tiny_val", "seg_results.json"))
    final = torch.load(os.path.join(out, "model_final.pth"), weights_only=True)
    assert final["iteration"] == 4
    # SOLVER.OPTIMIZER ADAMW honoured by Detectron2's build_optimizer: Adam's moments are saved.
    state = final["trainer"]["_trainer"]["optimizer"]["state"]
    assert state and all("exp_avg" in s and "momentum_buffer" not in s for s in state.values())


def test_eval_only_reproduces_results(instant_run, synthetic_root, tmp_path):
    out = instant_run
    results = _evaluation(_metrics(out)[-1])
    weights = os.path.join(out, "model_final.pth")
    opts = ["MODEL.WEIGHTS", weights, "OUTPUT_DIR", str(tmp_path), "SYNTHETIC.ROOT", synthetic_root]
    again = flatten_results_dict(train_net.main(_args(*opts, flags=["--eval-only"])))
    assert again.keys() == results.keys()
    for k, v in results.items():
        w = again[k]
        assert (math.isnan(v) and math.isnan(w)) or v == pytest.approx(w, abs=1e-6), k


def test_resume_continues_with_saved_state(synthetic_root, tmp_path):
    common = ["OUTPUT_DIR", str(tmp_path), "SYNTHETIC.ROOT", synthetic_root, "DATASETS.TEST", "()"]
    train_net.main(_args(*common, "SOLVER.MAX_ITER", "3"))  # stops after 3 of the 5 iterations
    saved = torch.load(os.path.join(tmp_path, "model_final.pth"), weights_only=True)
    assert saved["iteration"] == 2

    with pytest.raises(FileExistsError, match="--resume"):  # never overwrites an earlier run
        train_net.setup(_args(*common))
    args = _args(*common, flags=["--resume"])
    cfg = train_net.setup(args)
    trainer = train_net.Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    assert trainer.start_iter == 3
    state = trainer.optimizer.state_dict()
    ref = saved["trainer"]["_trainer"]["optimizer"]
    assert state["param_groups"] == ref["param_groups"]
    for k in ref["state"]:
        assert torch.equal(state["state"][k]["exp_avg"], ref["state"][k]["exp_avg"])
    for k, v in saved["model"].items():
        assert torch.equal(trainer.model.state_dict()[k], v), k
    trainer.train()
    final = torch.load(os.path.join(tmp_path, "model_final.pth"), weights_only=True)
    assert final["iteration"] == 4
    assert max(d["iteration"] for d in _metrics(tmp_path)) == 4


def test_detectron2_trainer_takes_det3ds_own_config_too(synthetic_root, tmp_path):
    from det3d.config import get_cfg
    from det3d.data import set_synthetic_root

    cfg = get_cfg()  # det3d's config, a Detectron2 CfgNode: no Detectron2-only keys needed
    cfg.merge_from_file(INSTANT)
    cfg.merge_from_list(["OUTPUT_DIR", str(tmp_path), "SOLVER.MAX_ITER", "2", "DATASETS.TEST", "()"])
    set_synthetic_root(synthetic_root)
    trainer = train_net.Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert DET3D_STATISTICS <= set().union(*_metrics(tmp_path))


def test_detectron2_trainer_refuses_a_time_budget(synthetic_root, tmp_path):
    common = ["OUTPUT_DIR", str(tmp_path), "SYNTHETIC.ROOT", synthetic_root, "DATASETS.TEST", "()"]
    cfg = train_net.setup(_args(*common, "SOLVER.TIME_BUDGET_MINUTES", "1.0"))
    with pytest.raises(ValueError, match="SOLVER.TIME_BUDGET_MINUTES"):
        train_net.Trainer(cfg)
