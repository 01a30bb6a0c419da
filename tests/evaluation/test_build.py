"""Evaluators from the config: TEST.EVALUATORS is read by det3d.evaluation (a registry with
from_config), and COCO3DEvaluator follows the model's MASK_ON and MASK_THRESHOLD."""

import pytest

from det3d.config import get_cfg
from det3d.engine import DefaultTrainer
from det3d.evaluation import (
    EVALUATOR_REGISTRY,
    COCO3DEvaluator,
    DatasetEvaluator,
    DatasetEvaluators,
    InstanceMatchingEvaluator,
    SEGEvaluator,
    build_evaluator,
)


def test_test_evaluators_built_by_the_library(tmp_path):
    cfg = get_cfg()
    cfg.OUTPUT_DIR = str(tmp_path)
    cfg.TEST.EVALUATORS = ["coco3d", "matching", "seg"]
    ev = build_evaluator(cfg, "synthetic_tiny_val")
    assert isinstance(ev, DatasetEvaluators)
    kinds = [type(e) for e in ev._evaluators]
    assert kinds == [COCO3DEvaluator, InstanceMatchingEvaluator, SEGEvaluator]
    assert ev._evaluators[0]._output_dir == str(tmp_path / "inference" / "synthetic_tiny_val")
    # DefaultTrainer's default is the same, with no subclass needed
    assert type(DefaultTrainer.build_evaluator(cfg, "synthetic_tiny_val")) is DatasetEvaluators
    cfg.TEST.EVALUATORS = ["SEGEvaluator"]  # registry names work too
    assert type(build_evaluator(cfg, "x")) is SEGEvaluator
    cfg.TEST.EVALUATORS = []
    assert build_evaluator(cfg, "x") is None
    with pytest.raises(NotImplementedError, match="TEST.EVALUATORS is empty"):
        DefaultTrainer.build_evaluator(cfg, "x")


def test_unknown_name_lists_the_known_ones():
    cfg = get_cfg()
    cfg.TEST.EVALUATORS = ["coco3d", "f1"]
    with pytest.raises(ValueError, match=r"'f1' in TEST.EVALUATORS.*'coco3d'.*'matching'"):
        build_evaluator(cfg, "x")


def test_a_project_registers_its_own_evaluator():
    @EVALUATOR_REGISTRY.register()
    class CountingEvaluatorForTest(DatasetEvaluator):
        def __init__(self, name, out):
            self.name, self.out = name, out

        @classmethod
        def from_config(cls, cfg, dataset_name, output_dir=None):
            return cls(dataset_name, output_dir)

    try:
        cfg = get_cfg()
        cfg.TEST.EVALUATORS = ["CountingEvaluatorForTest"]
        ev = build_evaluator(cfg, "d", "/out")
        assert (ev.name, ev.out) == ("d", "/out")
    finally:
        EVALUATOR_REGISTRY._obj_map.pop("CountingEvaluatorForTest")


def test_coco3d_follows_mask_on_and_the_models_mask_threshold():
    cfg = get_cfg()
    cfg.TEST.EVALUATORS = ["coco3d"]
    cfg.MODEL.ROI_MASK_HEAD.MASK_THRESHOLD = 0.3
    ev = build_evaluator(cfg, "x")
    assert ev._tasks == ("bbox", "segm") and ev._mask_threshold == 0.3
    cfg.MODEL.MASK_ON = False
    assert build_evaluator(cfg, "x")._tasks == ("bbox",)
