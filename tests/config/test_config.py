import os

import pytest

from det3d.config import CfgNode, add_det3d_config, configurable, get_cfg


def _write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return str(path)


def test_defaults_have_det3d_keys_and_no_detection_cap():
    cfg = get_cfg()
    assert cfg.MODEL.SPATIAL_DIMS == 3
    assert cfg.MODEL.META_ARCHITECTURE == "GeneralizedRCNN3D"
    assert cfg.TEST.DETECTIONS_PER_IMAGE >= 500
    assert cfg.TEST.MAX_DETS >= 500
    # get_cfg returns a copy: edits do not leak into the next call
    cfg.MODEL.SPATIAL_DIMS = 2
    assert get_cfg().MODEL.SPATIAL_DIMS == 3


def test_base_inheritance_relative_paths(tmp_path):
    os.makedirs(tmp_path / "sub")
    _write(
        tmp_path / "Base.yaml",
        "MODEL:\n  MASK_ON: False\n  SPATIAL_DIMS: 2\nSOLVER:\n  BASE_LR: 0.5\n",
    )
    child = _write(
        tmp_path / "sub" / "child.yaml", "_BASE_: ../Base.yaml\nSOLVER:\n  BASE_LR: 0.25\n"
    )
    cfg = get_cfg()
    cfg.merge_from_file(child)
    assert cfg.MODEL.MASK_ON is False and cfg.MODEL.SPATIAL_DIMS == 2
    assert cfg.SOLVER.BASE_LR == 0.25  # child overrides base


def test_unknown_key_is_named(tmp_path):
    bad = _write(tmp_path / "bad.yaml", "MODEL:\n  NOT_A_KEY: 1\n")
    cfg = get_cfg()
    with pytest.raises(KeyError, match=r"MODEL\.NOT_A_KEY.*bad\.yaml"):
        cfg.merge_from_file(bad)
    with pytest.raises(KeyError, match=r"SOLVER\.NOPE"):
        cfg.merge_from_list(["SOLVER.NOPE", "1"])


def test_missing_file_and_unsafe_yaml_rejected(tmp_path):
    cfg = get_cfg()
    with pytest.raises(FileNotFoundError, match="nowhere.yaml"):
        cfg.merge_from_file(str(tmp_path / "nowhere.yaml"))
    unsafe = _write(tmp_path / "unsafe.yaml", "OUTPUT_DIR: !!python/object/apply:os.getcwd []\n")
    with pytest.raises(ValueError, match="unsafe.yaml"):
        cfg.merge_from_file(unsafe)
    with pytest.raises(ValueError, match="KEY VALUE"):
        cfg.merge_from_list(["SOLVER.BASE_LR"])


def test_add_det3d_config_on_plain_cfgnode_keeps_existing_values():
    cfg = CfgNode()
    cfg.MODEL = CfgNode()
    cfg.MODEL.SPATIAL_DIMS = 2
    for sub in ("RPN", "ROI_HEADS", "ROI_BOX_HEAD", "ROI_MASK_HEAD"):
        cfg.MODEL[sub] = CfgNode()
    cfg.INPUT, cfg.TEST, cfg.SOLVER = CfgNode(), CfgNode(), CfgNode()
    add_det3d_config(cfg)
    assert cfg.MODEL.SPATIAL_DIMS == 2  # not overwritten
    assert cfg.MODEL.ROI_MASK_HEAD.LOSS_TYPE == "bce"
    assert cfg.MODEL.FREEZE_MODULES == []


class _Thing:
    @configurable
    def __init__(self, *, a, b=2):
        self.a, self.b = a, b

    @classmethod
    def from_config(cls, cfg, scale=1):
        return {"a": cfg.SOLVER.BASE_LR * scale, "b": cfg.MODEL.SPATIAL_DIMS}


def test_configurable_class_and_function():
    cfg = get_cfg()
    t = _Thing(cfg, scale=10)
    assert t.a == pytest.approx(cfg.SOLVER.BASE_LR * 10) and t.b == 3
    t = _Thing(cfg, b=7)  # explicit keyword overrides what from_config returned
    assert t.b == 7
    t = _Thing(a=1)
    assert (t.a, t.b) == (1, 2)

    @configurable(from_config=lambda cfg: {"x": cfg.MODEL.SPATIAL_DIMS})
    def f(x, y=1):
        return x * 10 + y

    assert f(cfg) == 31 and f(cfg, y=5) == 35 and f(4) == 41


def test_per_axis_values_accept_int_or_list(tmp_path):
    path = _write(
        tmp_path / "axes.yaml", "MODEL:\n  ROI_BOX_HEAD:\n    POOLER_RESOLUTION: [3, 7, 7]\n"
    )
    cfg = get_cfg()
    cfg.merge_from_file(path)
    assert cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION == [3, 7, 7]
    cfg.merge_from_list(["MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION", "5"])  # and back to an int
    assert cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION == 5
    cfg.merge_from_list(["MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION", "[4, 8, 8]"])
    assert cfg.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION == [4, 8, 8]
    # other type changes are still refused
    with pytest.raises(ValueError, match="Type mismatch"):
        cfg.merge_from_list(["MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION", "'seven'"])
    with pytest.raises(ValueError, match="Type mismatch"):
        cfg.merge_from_list(["MODEL.ROI_HEADS.NUM_CLASSES", "[1, 2]"])


def test_one_plain_string_on_the_command_line_for_a_list_of_names():
    cfg = get_cfg()
    cfg.merge_from_list(["DATASETS.TRAIN", "my_set", "DATASETS.TEST", "('a', 'b')"])
    assert cfg.DATASETS.TRAIN == ("my_set",) and cfg.DATASETS.TEST == ("a", "b")
    cfg.merge_from_list(["TEST.EVALUATORS", "seg"])
    assert list(cfg.TEST.EVALUATORS) == ["seg"]
    with pytest.raises(ValueError):
        cfg.merge_from_list(["SOLVER.MAX_ITER", "many"])  # other type changes still refused
