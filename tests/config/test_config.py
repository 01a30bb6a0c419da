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


def test_the_default_config_survives_its_own_dump(tmp_path):
    """What a training writes as config.yaml merges back into the same config (eval, resume)."""
    cfg = get_cfg()
    written = get_cfg()
    written.merge_from_file(_write(tmp_path / "config.yaml", cfg.dump()))
    assert written == cfg


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


def _flat(cfg, prefix=""):
    out = {}
    for k, v in cfg.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out


def _detectron2_like_cfg():
    """A plain yacs/fvcore CfgNode holding some of Detectron2's 2D defaults and 2D-only keys."""
    from fvcore.common.config import CfgNode as FvCfgNode

    cfg = FvCfgNode()
    cfg.VERSION = 2
    cfg.MODEL = FvCfgNode()
    cfg.MODEL.KEYPOINT_ON = False  # only Detectron2 has it
    cfg.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
    cfg.MODEL.PIXEL_MEAN = [103.53, 116.28, 123.675]
    cfg.MODEL.RPN = FvCfgNode({"HEAD_NAME": "StandardRPNHead", "BBOX_REG_WEIGHTS": (1.0,) * 4})
    cfg.MODEL.ANCHOR_GENERATOR = FvCfgNode({"NAME": "DefaultAnchorGenerator", "SIZES": [[32, 64]]})
    cfg.SOLVER = FvCfgNode({"BASE_LR": 0.001, "STEPS": (210000, 250000)})
    return cfg


def test_add_det3d_config_on_a_detectron2_like_cfg_gives_det3d_values_everywhere():
    cfg = _detectron2_like_cfg()
    add_det3d_config(cfg)
    got, want = _flat(cfg), _flat(get_cfg())
    missing = set(want) - set(got)
    assert not missing, missing  # every det3d key, including the det3d-only ones
    for key, value in want.items():
        assert got[key] == value, (key, got[key], value)  # det3d's value wins where both have it
    assert cfg.MODEL.KEYPOINT_ON is False  # keys only Detectron2 has are kept
    assert cfg.MODEL.RPN.HEAD_NAME == "StandardRPNHead3D"
    assert len(cfg.MODEL.RPN.BBOX_REG_WEIGHTS) == 6
    # The keys add_det3d_config adds on its own: the ones Detectron2 has no counterpart for.
    for key in (
        "MODEL.SPATIAL_DIMS",
        "MODEL.FPN.TOP_BLOCK",
        "MODEL.RESNETS.STEM_KERNEL_SIZE",
        "MODEL.RESNETS.STAGE_STRIDES",
        "MODEL.ANCHOR_GENERATOR.Z_ASPECT_RATIOS",
        "MODEL.ROI_BOX_HEAD.CLS_LOSS_TYPE",
        "SOLVER.OPTIMIZER",
        "SOLVER.BETAS",
    ):
        assert key in got, key
    # A second call, or a det3d config, keeps what is set.
    cfg.SOLVER.BASE_LR = 0.5
    add_det3d_config(cfg)
    assert cfg.SOLVER.BASE_LR == 0.5


def test_config_version_2_and_old_det3d_files(tmp_path):
    assert get_cfg().VERSION == 2  # Detectron2's config version, whose key names det3d follows
    old = _write(tmp_path / "old.yaml", "VERSION: 1\nSOLVER:\n  BASE_LR: 0.5\n")
    cfg = get_cfg()
    cfg.merge_from_file(old)  # det3d files said VERSION 1 for the same keys
    assert cfg.VERSION == 2 and cfg.SOLVER.BASE_LR == 0.5
    bad = _write(tmp_path / "bad.yaml", "VERSION: 3\n")
    with pytest.raises(ValueError, match="bad.yaml.*VERSION 3"):
        get_cfg().merge_from_file(bad)


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


def test_base_cycle_is_reported_as_a_cycle_naming_the_files(tmp_path):
    from det3d.config.config import ConfigCycleError

    (tmp_path / "a.yaml").write_text('_BASE_: "b.yaml"\nSOLVER:\n  MAX_ITER: 3\n')
    (tmp_path / "b.yaml").write_text('_BASE_: "c.yaml"\n')
    (tmp_path / "c.yaml").write_text('_BASE_: "a.yaml"\n')
    cfg = get_cfg()
    with pytest.raises(ConfigCycleError, match=r"_BASE_ cycle: .*a\.yaml -> .*b\.yaml -> "
                       r".*c\.yaml -> .*a\.yaml"):
        cfg.merge_from_file(str(tmp_path / "a.yaml"))
    (tmp_path / "self.yaml").write_text('_BASE_: "./self.yaml"\n')
    with pytest.raises(ConfigCycleError, match=r"self\.yaml -> .*self\.yaml"):
        get_cfg().merge_from_file(str(tmp_path / "self.yaml"))
    # a diamond (two files sharing one base) is no cycle, and a failed read leaves no state
    (tmp_path / "base.yaml").write_text("SOLVER:\n  BASE_LR: 0.5\n")
    (tmp_path / "d.yaml").write_text('_BASE_: "base.yaml"\n')
    (tmp_path / "e.yaml").write_text('_BASE_: "d.yaml"\nSOLVER:\n  MAX_ITER: 7\n')
    cfg = get_cfg()
    cfg.merge_from_file(str(tmp_path / "e.yaml"))
    assert cfg.SOLVER.BASE_LR == 0.5 and cfg.SOLVER.MAX_ITER == 7


@pytest.mark.parametrize(
    "key, value",
    [("TEST.AUG.ENABLED", True), ("TEST.PRECISE_BN.ENABLED", True),
     ("MODEL.LOAD_PROPOSALS", True), ("MODEL.PROPOSAL_GENERATOR.NAME", "PrecomputedProposals")],
)
def test_unsupported_features_are_errors_at_build_time(key, value):
    from det3d.modeling import build_model
    from det3d.modeling.proposal_generator import build_proposal_generator

    cfg = get_cfg()
    cfg.merge_from_list([key, str(value)])
    with pytest.raises(NotImplementedError, match=key.replace(".", r"\.")):
        build_model(cfg)
    if key == "MODEL.PROPOSAL_GENERATOR.NAME":  # no None that crashes later
        with pytest.raises(NotImplementedError, match="PrecomputedProposals"):
            build_proposal_generator(cfg, {})


def test_precise_bn_is_an_error_for_the_trainer_too(tmp_path):
    from det3d.engine import DefaultTrainer

    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(os.path.dirname(__file__), "..", "..", "configs",
                                     "quick_schedules", "mask_rcnn_R18_FPN_3d_instant_test.yaml"))
    cfg.OUTPUT_DIR = str(tmp_path)
    trainer = DefaultTrainer.__new__(DefaultTrainer)
    trainer.cfg = cfg
    cfg.TEST.PRECISE_BN.ENABLED = True
    with pytest.raises(NotImplementedError, match=r"TEST\.PRECISE_BN\.ENABLED"):
        trainer.build_hooks()


def test_one_plain_string_on_the_command_line_for_a_list_of_names():
    cfg = get_cfg()
    cfg.merge_from_list(["DATASETS.TRAIN", "my_set", "DATASETS.TEST", "('a', 'b')"])
    assert cfg.DATASETS.TRAIN == ("my_set",) and cfg.DATASETS.TEST == ("a", "b")
    cfg.merge_from_list(["TEST.EVALUATORS", "seg"])
    assert list(cfg.TEST.EVALUATORS) == ["seg"]
    with pytest.raises(ValueError):
        cfg.merge_from_list(["SOLVER.MAX_ITER", "many"])  # other type changes still refused
