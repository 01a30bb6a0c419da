"""
det3d.bridge.detectron2 with Detectron2 installed: shared registries, configs, catalogs, event
storage and optimizer choice, and ``import det3d`` registering everything.
"""

import argparse
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("detectron2")

import detectron2.config  # noqa: E402
import detectron2.data  # noqa: E402
import detectron2.modeling  # noqa: E402
import detectron2.utils.events  # noqa: E402
from detectron2.engine import DefaultTrainer, default_setup  # noqa: E402

import det3d  # noqa: E402,F401
from det3d.bridge import detectron2 as bridge  # noqa: E402
from det3d.config import add_det3d_config, get_cfg  # noqa: E402
from det3d.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from det3d.modeling import build_model, registries  # noqa: E402
from det3d.utils.events import EventStorage, current_event_storage  # noqa: E402

from _bridge_test_utils import ROOT, SHIPPED_CONFIGS  # noqa: E402

RPN_INSTANT = "rpn_R18_FPN_3d_instant_test.yaml"


def _flat(cfg, prefix=""):
    out = {}
    for k, v in cfg.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def _same(a, b):
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _owner(obj):
    """The top-level package that registered ``obj``; None for a stub a test module registered
    (as a user's code may: the check is that det3d adds only its own parts)."""
    path = os.path.abspath(getattr(sys.modules.get(obj.__module__), "__file__", None) or "")
    if path.startswith(os.path.join(ROOT, "tests") + os.sep):
        return None
    return obj.__module__.split(".")[0]


def test_registries_are_detectron2s_and_names_do_not_clash():
    assert bridge.HAS_DETECTRON2
    shared = {
        "META_ARCH_REGISTRY": detectron2.modeling.META_ARCH_REGISTRY,
        "BACKBONE_REGISTRY": detectron2.modeling.BACKBONE_REGISTRY,
        "PROPOSAL_GENERATOR_REGISTRY": detectron2.modeling.PROPOSAL_GENERATOR_REGISTRY,
        "RPN_HEAD_REGISTRY": detectron2.modeling.proposal_generator.rpn.RPN_HEAD_REGISTRY,
        "ANCHOR_GENERATOR_REGISTRY": detectron2.modeling.ANCHOR_GENERATOR_REGISTRY,
        "ROI_HEADS_REGISTRY": detectron2.modeling.ROI_HEADS_REGISTRY,
        "ROI_BOX_HEAD_REGISTRY": detectron2.modeling.roi_heads.box_head.ROI_BOX_HEAD_REGISTRY,
        "ROI_MASK_HEAD_REGISTRY": detectron2.modeling.roi_heads.mask_head.ROI_MASK_HEAD_REGISTRY,
    }
    for name, d2_registry in shared.items():
        registry = getattr(registries, name)
        assert registry is d2_registry, name
        owners = {_owner(obj) for _, obj in registry} - {None}
        assert owners <= {"det3d", "detectron2"}, (name, owners)
    # Detectron2's own parts are still Detectron2's; det3d's are det3d's.
    assert detectron2.modeling.META_ARCH_REGISTRY.get("GeneralizedRCNN").__module__.startswith(
        "detectron2."
    )
    assert registries.META_ARCH_REGISTRY.get("GeneralizedRCNN3D").__module__.startswith("det3d.")


def test_det3d_get_cfg_is_a_detectron2_cfgnode_that_default_setup_takes(tmp_path, restore_loggers):
    cfg = get_cfg()
    assert isinstance(cfg, detectron2.config.CfgNode) and cfg.VERSION == 2
    cfg.OUTPUT_DIR = str(tmp_path)
    cfg.SEED = 3
    cfg.freeze()
    default_setup(cfg, argparse.Namespace(config_file="", eval_only=False, resume=False))
    written = get_cfg()
    written.merge_from_file(str(tmp_path / "config.yaml"))
    assert written == cfg


def test_add_det3d_config_makes_a_detectron2_config_complete():
    fresh_d2 = _flat(detectron2.config.get_cfg())
    det3d_keys = _flat(get_cfg())
    cfg = detectron2.config.get_cfg()
    add_det3d_config(cfg)
    got = _flat(cfg)
    # The rule: every key det3d defines holds det3d's value (VERSION is the same number in both).
    for key, value in det3d_keys.items():
        assert key in got, key
        assert _same(got[key], value), (key, got[key], value)
    # Keys only Detectron2 has keep Detectron2's values.
    for key, value in fresh_d2.items():
        if key not in det3d_keys:
            assert _same(got[key], value), key
    # Where Detectron2's 2D defaults differed, det3d's 3D values won.
    assert cfg.MODEL.RPN.HEAD_NAME == "StandardRPNHead3D"
    assert cfg.MODEL.ANCHOR_GENERATOR.NAME == "DefaultAnchorGenerator3D"
    assert len(cfg.MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS) == 6
    assert fresh_d2["MODEL.RPN.HEAD_NAME"] == "StandardRPNHead" and "KEYPOINT_ON" in cfg.MODEL
    # A second call (a config that already has det3d's keys) resets nothing.
    cfg.SOLVER.BASE_LR = 0.123
    add_det3d_config(cfg)
    assert cfg.SOLVER.BASE_LR == 0.123


@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=lambda p: os.path.relpath(p, ROOT))
def test_every_shipped_config_merges_into_detectron2s_cfgnode(path):
    cfg = detectron2.config.get_cfg()
    add_det3d_config(cfg)
    cfg.merge_from_file(path)  # Detectron2's merge_from_file: no version upgrade, no type clash
    alone = get_cfg()
    alone.merge_from_file(path)
    got = _flat(cfg)
    for key, value in _flat(alone).items():
        assert _same(got[key], value), (key, got[key], value)


def test_catalogs_are_shared_both_ways():
    assert {"synthetic_train", "synthetic_tiny_val"} <= set(detectron2.data.DatasetCatalog.list())
    d2_meta = detectron2.data.MetadataCatalog.get("synthetic_tiny_val")
    assert d2_meta is MetadataCatalog.get("synthetic_tiny_val")
    assert list(d2_meta.thing_classes) == ["ellipsoid", "cuboid", "blob"]

    records = [{"file_name": "x.tif", "image_id": 0}]
    detectron2.data.DatasetCatalog.register("_bridge_d2_registered", lambda: records)
    DatasetCatalog.register("_bridge_det3d_registered", lambda: records)
    try:
        assert DatasetCatalog.get("_bridge_d2_registered") == records
        assert detectron2.data.DatasetCatalog.get("_bridge_det3d_registered") == records
        with pytest.raises(KeyError, match="already registered"):
            DatasetCatalog.register("_bridge_d2_registered", lambda: records)
        with pytest.raises(AssertionError):  # Detectron2's check of the same thing
            detectron2.data.DatasetCatalog.register("_bridge_det3d_registered", lambda: records)
    finally:
        DatasetCatalog.remove("_bridge_d2_registered")
        detectron2.data.DatasetCatalog.remove("_bridge_det3d_registered")
    assert "_bridge_d2_registered" not in detectron2.data.DatasetCatalog.list()


def test_event_storage_is_shared_both_ways():
    assert current_event_storage() is None
    with detectron2.utils.events.EventStorage(7) as d2_storage:
        assert current_event_storage() is d2_storage
        current_event_storage().put_scalar("rpn/num_pos_anchors", 3.0)
    assert d2_storage.latest()["rpn/num_pos_anchors"] == (3.0, 7)
    with EventStorage(2) as storage:
        assert detectron2.utils.events.get_event_storage() is storage
    assert current_event_storage() is None


def _tiny_model():
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(ROOT, "configs", "quick_schedules", RPN_INSTANT))
    return cfg, build_model(cfg)


def test_detectron2_build_optimizer_honours_solver_optimizer():
    cfg, model = _tiny_model()
    cfg.SOLVER.OPTIMIZER = "ADAMW"
    cfg.SOLVER.BETAS = (0.8, 0.9)
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    optimizer = DefaultTrainer.build_optimizer(cfg, model)  # calls Detectron2's build_optimizer
    assert isinstance(optimizer, torch.optim.AdamW)
    assert type(optimizer) is not torch.optim.AdamW  # det3d's gradient-clipping subclass
    assert all(g["betas"] == (0.8, 0.9) for g in optimizer.param_groups)

    cfg.SOLVER.OPTIMIZER = "SGD"  # Detectron2's own SGD, as without det3d
    optimizer = DefaultTrainer.build_optimizer(cfg, model)
    assert isinstance(optimizer, torch.optim.SGD)
    assert optimizer.defaults["momentum"] == cfg.SOLVER.MOMENTUM

    cfg.SOLVER.OPTIMIZER = "LION"
    with pytest.raises(ValueError, match="LION"):
        DefaultTrainer.build_optimizer(cfg, model)


def _run(code):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_import_det3d_registers_everything_after_detectron2s_engine():
    # Detectron2's engine imported first (it binds build_optimizer by name), then only `det3d`.
    out = _run(
        "import detectron2.engine.defaults as d\n"
        "import detectron2.modeling as m, detectron2.data as data\n"
        "import det3d\n"
        "from det3d.bridge.detectron2 import _build_optimizer_honouring_det3d as honouring\n"
        "assert d.build_optimizer is honouring\n"
        "for r, name in [(m.META_ARCH_REGISTRY, 'GeneralizedRCNN3D'),\n"
        "                (m.BACKBONE_REGISTRY, 'build_resnet3d_fpn_backbone'),\n"
        "                (m.ROI_HEADS_REGISTRY, 'StandardROIHeads3D')]:\n"
        "    r.get(name)\n"
        "assert 'synthetic_train' in data.DatasetCatalog.list()\n"
        "print('ok')\n"
    )
    assert out.strip().endswith("ok")
