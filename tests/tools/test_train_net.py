"""
End to end through tools/train_net.py's main(): the instant schedules train a few iterations on
the tiny synthetic splits, evaluate, reload with --eval-only, resume, and run a staged schedule.
"""

import importlib.util
import json
import math
import os

import pytest
import torch

from det3d.engine import default_argument_parser

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
INSTANT = os.path.join(ROOT, "configs", "quick_schedules", "mask_rcnn_R18_FPN_3d_instant_test.yaml")
RPN_INSTANT = os.path.join(ROOT, "configs", "quick_schedules", "rpn_R18_FPN_3d_instant_test.yaml")


pytestmark = pytest.mark.usefixtures("restore_det3d_loggers")  # tests/conftest.py


def _load_train_net():
    path = os.path.join(ROOT, "tools", "train_net.py")
    spec = importlib.util.spec_from_file_location("det3d_train_net", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


train_net = _load_train_net()



def _args(config, *opts, flags=()):
    return default_argument_parser().parse_args([*flags, "--config-file", config, *opts])


def _same_results(a, b):
    assert a.keys() == b.keys()
    for task in a:
        assert a[task].keys() == b[task].keys(), task
        for k, v in a[task].items():
            w = b[task][k]
            same = (math.isnan(v) and math.isnan(w)) or v == pytest.approx(w, abs=1e-6)
            assert same, (task, k, v, w)


@pytest.fixture(scope="module")
def instant_run(synthetic_root, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("instant"))
    results = train_net.main(_args(INSTANT, "OUTPUT_DIR", out, "SYNTHETIC.ROOT", synthetic_root))
    return out, results


def test_instant_schedule_trains_and_evaluates(instant_run):
    out, results = instant_run
    assert {"bbox", "segm", "matching", "seg"} <= set(results)
    assert 0.0 <= results["seg"]["SEG"] <= 1.0
    files = set(os.listdir(out))
    expected = {"model_0000002.pth", "model_final.pth", "last_checkpoint", "config.yaml", "log.txt"}
    assert expected <= files
    lines = [json.loads(line) for line in open(os.path.join(out, "metrics.json"))]
    trained = [d for d in lines if "total_loss" in d]
    assert [d["iteration"] for d in trained] == [0, 1, 2, 3, 4]
    assert all(math.isfinite(d["total_loss"]) for d in trained)
    assert "seg/SEG" in lines[-1]  # the final evaluation is recorded too
    final = torch.load(os.path.join(out, "model_final.pth"), weights_only=True)
    assert final["iteration"] == 4 and "optimizer" in final["trainer"]["_trainer"]


def test_eval_only_reproduces_metrics(instant_run, synthetic_root, tmp_path):
    out, results = instant_run
    weights = os.path.join(out, "model_final.pth")
    again = train_net.main(
        _args(
            INSTANT,
            "MODEL.WEIGHTS", weights,
            "OUTPUT_DIR", str(tmp_path),
            "SYNTHETIC.ROOT", synthetic_root,
            flags=["--eval-only"],
        )  # fmt: skip
    )
    _same_results(results, again)
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".pth") and f.startswith("model")]


def test_resume_continues_with_saved_state(synthetic_root, tmp_path):
    common = ["OUTPUT_DIR", str(tmp_path), "SYNTHETIC.ROOT", synthetic_root, "DATASETS.TEST", "()"]
    # A run that stops after 3 of the 5 iterations (as if killed after its last checkpoint).
    train_net.main(_args(INSTANT, *common, "SOLVER.MAX_ITER", "3"))
    saved = torch.load(os.path.join(tmp_path, "model_final.pth"), weights_only=True)
    assert saved["iteration"] == 2

    args = _args(INSTANT, *common, flags=["--resume"])
    cfg = train_net.setup(args)
    trainer = train_net.Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    assert trainer.start_iter == 3
    state = trainer.optimizer.state_dict()
    ref = saved["trainer"]["_trainer"]["optimizer"]
    assert state["param_groups"] == ref["param_groups"]
    assert state["state"].keys() == ref["state"].keys()
    for k in ref["state"]:
        assert torch.equal(state["state"][k]["momentum_buffer"], ref["state"][k]["momentum_buffer"])
    for k, v in saved["model"].items():
        assert torch.equal(trainer.model.state_dict()[k], v), k
    trainer.train()
    iters = [json.loads(line)["iteration"] for line in open(os.path.join(tmp_path, "metrics.json"))]
    assert iters == [0, 1, 2, 3, 4]  # appended: the second run went on at iteration 3
    final = torch.load(os.path.join(tmp_path, "model_final.pth"), weights_only=True)
    assert final["iteration"] == 4


def test_new_run_into_an_earlier_runs_output_dir_writes_nothing(instant_run, synthetic_root):
    out, _ = instant_run
    before = {f: open(os.path.join(out, f), "rb").read() for f in sorted(os.listdir(out))
              if os.path.isfile(os.path.join(out, f))}  # fmt: skip
    with pytest.raises(FileExistsError, match="model_final.pth.*--resume"):
        train_net.main(_args(INSTANT, "OUTPUT_DIR", out, "SYNTHETIC.ROOT", synthetic_root))
    after = {f: open(os.path.join(out, f), "rb").read() for f in sorted(os.listdir(out))
             if os.path.isfile(os.path.join(out, f))}  # fmt: skip
    assert after == before  # checkpoints, config.yaml and log.txt untouched


def test_eval_only_into_the_training_dir_keeps_its_config(instant_run, synthetic_root):
    out, _ = instant_run
    with open(os.path.join(out, "config.yaml")) as f:
        training_config = f.read()
    opts = ["OUTPUT_DIR", out, "SYNTHETIC.ROOT", synthetic_root]
    weights = os.path.join(out, "model_final.pth")
    train_net.main(_args(INSTANT, *opts, "MODEL.WEIGHTS", weights, flags=["--eval-only"]))
    kept = [f for f in os.listdir(out) if f.startswith("config.") and f != "config.yaml"]
    assert len(kept) == 1
    with open(os.path.join(out, kept[0])) as f:
        assert f.read() == training_config
    with open(os.path.join(out, "config.yaml")) as f:
        assert weights in f.read()  # config.yaml is the latest run's


def test_staged_training_rpn_then_heads_with_frozen_rpn(synthetic_root, tmp_path):
    rpn_out = str(tmp_path / "rpn")
    opts = ["OUTPUT_DIR", rpn_out, "SYNTHETIC.ROOT", synthetic_root, "SOLVER.MAX_ITER", "2"]
    train_net.main(_args(RPN_INSTANT, *opts))
    rpn_weights = os.path.join(rpn_out, "model_final.pth")
    assert os.path.isfile(rpn_weights)

    args = _args(
        INSTANT,
        "OUTPUT_DIR", str(tmp_path / "heads"),
        "SYNTHETIC.ROOT", synthetic_root,
        "MODEL.WEIGHTS", rpn_weights,
        "MODEL.FREEZE_MODULES", "['backbone', 'proposal_generator']",
        "SOLVER.MAX_ITER", "2",
        "DATASETS.TEST", "()",
    )  # fmt: skip
    cfg = train_net.setup(args)
    trainer = train_net.Trainer(cfg)
    trainer.resume_or_load(resume=False)
    # The RPN stage's weights were loaded; the heads were not in that checkpoint.
    missing = trainer.checkpointer.incompatible_keys.missing_keys
    assert missing and all(k.startswith("roi_heads.") for k in missing)
    rpn_state = torch.load(rpn_weights, weights_only=True)["model"]
    trainer.train()
    after = trainer.model.state_dict()
    for k, v in rpn_state.items():
        assert torch.equal(after[k], v), f"frozen {k} changed"


def test_errors_name_what_is_wrong(synthetic_root, tmp_path):
    with pytest.raises(KeyError, match="SOLVER.NO_SUCH_KEY"):
        train_net.setup(_args(INSTANT, "SOLVER.NO_SUCH_KEY", "1"))
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        train_net.setup(_args(str(tmp_path / "missing.yaml")))
    with pytest.raises(ValueError, match="--eval-only needs weights"):
        train_net.main(_args(INSTANT, "OUTPUT_DIR", str(tmp_path), flags=["--eval-only"]))
    with pytest.raises(ValueError, match="TEST.EVALUATORS"):
        opts = ["OUTPUT_DIR", str(tmp_path), "TEST.EVALUATORS", "['coco3d', 'f1']"]
        cfg = train_net.setup(_args(INSTANT, *opts))
        train_net.build_evaluator(cfg, "synthetic_tiny_val")


def _ddp_worker(output_dir, synthetic_root):
    from det3d.utils import comm

    args = _args(
        INSTANT,
        "OUTPUT_DIR", output_dir,
        "SYNTHETIC.ROOT", synthetic_root,
        "SOLVER.MAX_ITER", "2",
        "DATASETS.TEST", "()",
    )  # fmt: skip
    cfg = train_net.setup(args)
    trainer = train_net.Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    state = {k: v.detach().clone() for k, v in trainer.model.module.state_dict().items()}
    torch.save(state, os.path.join(output_dir, f"weights_rank{comm.get_rank()}.pth"))


def test_mask_rcnn_ddp_two_cpu_processes(synthetic_root, tmp_path):
    from det3d.data import DatasetCatalog, set_synthetic_root
    from det3d.engine import launch

    set_synthetic_root(synthetic_root)
    DatasetCatalog.get("synthetic_tiny_train")  # generate once, before two processes want it
    launch(_ddp_worker, 2, dist_url="auto", args=(str(tmp_path), synthetic_root))
    w0 = torch.load(tmp_path / "weights_rank0.pth", weights_only=True)
    w1 = torch.load(tmp_path / "weights_rank1.pth", weights_only=True)
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    assert (tmp_path / "log.txt.rank1").is_file()
    final = torch.load(tmp_path / "model_final.pth", weights_only=True)["model"]
    assert all(torch.equal(final[k], w0[k]) for k in w0)


def _small_folder(tmp_path, n, seed):
    """A folder of ``n`` tiny synthetic volumes (images/, labels/, classes/); returns its path."""
    from det3d.data import make_synthetic_dataset

    data = str(tmp_path / "data")
    make_synthetic_dataset(
        data,
        n,
        seed=seed,
        shape=(16, 32, 32),
        num_objects=2,
        size_range=(1.5, 3.0),
        spacing=(1.0, 0.5, 0.5),
    )
    return data


def test_folders_named_on_the_command_line_train_and_evaluate(tmp_path):
    # A user's own folders of images and label volumes, no Python: the dataset specs go straight
    # into DATASETS.TRAIN / DATASETS.TEST as plain strings on the command line.
    data = _small_folder(tmp_path, 3, seed=8)
    spec = (
        f"folder:images={data}/images,labels={data}/labels,classes=ellipsoid:cuboid:blob,"
        f"class_map={data}/classes"
    )
    out = str(tmp_path / "out")
    results = train_net.main(
        _args(INSTANT, "DATASETS.TRAIN", spec, "DATASETS.TEST", spec, "OUTPUT_DIR", out)
    )
    assert {"bbox", "segm", "matching", "seg"} <= set(results)
    assert os.path.isfile(os.path.join(out, "model_final.pth"))
    (folder,) = os.listdir(os.path.join(out, "inference"))
    assert os.path.isfile(os.path.join(out, "inference", folder, "seg_results.json"))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        train_net.main(
            _args(
                INSTANT,
                "DATASETS.TRAIN",
                f"folder:images={data}/nowhere,labels={data}/labels",
                "OUTPUT_DIR",
                str(tmp_path / "out2"),
            )
        )
    assert not os.path.exists(tmp_path / "out2")  # nothing written for a bad spec


def test_plan_then_train_in_one_command(tmp_path):
    # --plan: the config is planned from the training folder's fingerprint into OUTPUT_DIR,
    # then trained and evaluated; --eval-only afterwards reuses the planned file.
    from det3d.config import get_cfg

    data = _small_folder(tmp_path, 2, seed=9)
    spec = f"folder:images={data}/images,labels={data}/labels"
    out = str(tmp_path / "out")
    parser = train_net.argument_parser()
    args = parser.parse_args(
        [
            "--plan",
            "--plan-minutes",
            "0.05",
            "DATASETS.TRAIN",
            spec,
            "DATASETS.TEST",
            spec,
            "OUTPUT_DIR",
            out,
            "SOLVER.CHECKPOINT_PERIOD",
            "100",
        ]
    )
    results = train_net.main(args)
    planned = os.path.join(out, "planned_config.yaml")
    assert os.path.isfile(planned) and "seg" in results
    cfg = get_cfg()
    cfg.merge_from_file(planned)
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 1 and cfg.DATASETS.TRAIN == (spec,)
    assert cfg.MODEL.RESNETS.STEM_STRIDE == [1, 2, 2]  # z voxels twice as deep: z kept
    assert 0 < cfg.SOLVER.MAX_ITER <= 50  # 3 seconds of training at the measured speed
    before = open(planned).read()
    args = parser.parse_args(
        [
            "--plan",
            "--eval-only",
            "MODEL.WEIGHTS",
            os.path.join(out, "model_final.pth"),
            "DATASETS.TRAIN",
            spec,
            "DATASETS.TEST",
            spec,
            "OUTPUT_DIR",
            out,
        ]
    )
    again = train_net.main(args)
    assert open(planned).read() == before
    assert again["seg"]["SEG"] == pytest.approx(results["seg"]["SEG"])
