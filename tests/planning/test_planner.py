"""Planner choices (det3d.planning.planner) for an isotropic and a strongly anisotropic dataset."""

import math

import numpy as np
import pytest
import torch

from det3d.config import get_cfg
from det3d.data.datasets import load_label_volume_dataset
from det3d.data.synthetic import make_synthetic_dataset
from det3d.modeling.poolers import assign_boxes_to_levels
from det3d.planning import anchor_coverage, dataset_fingerprint, plan_config, planned_config_text
from det3d.structures import Boxes


def _fingerprint(tmp_path, spacing, shape):
    make_synthetic_dataset(
        str(tmp_path),
        4,
        seed=3,
        shape=shape,
        num_objects=(3, 5),
        size_range=(3.0, 6.0),
        spacing=spacing,
        classes=("ellipsoid", "cuboid"),
    )
    recs = load_label_volume_dataset(str(tmp_path / "images"), str(tmp_path / "labels"))
    return dataset_fingerprint(recs)


@pytest.fixture(scope="module")
def iso(tmp_path_factory):
    return _fingerprint(tmp_path_factory.mktemp("iso"), (1.0, 1.0, 1.0), (40, 40, 40))


@pytest.fixture(scope="module")
def aniso(tmp_path_factory):
    return _fingerprint(tmp_path_factory.mktemp("aniso"), (4.0, 1.0, 1.0), (12, 48, 48))


def _z_strides(plan):
    v = plan.values
    cum = v["MODEL.RESNETS.STEM_STRIDE"][0] * v["MODEL.RESNETS.STEM_POOL_STRIDE"][0]
    out = []
    for s in v["MODEL.RESNETS.STAGE_STRIDES"]:
        cum *= s[0]
        out.append(cum)
    return out


def test_isotropic_plan(iso):
    plan = plan_config(iso, num_classes=2)
    v = plan.values
    assert _z_strides(plan) == [4, 8, 16, 32] or _z_strides(plan)[:2] == [4, 8]
    assert v["MODEL.RESNETS.STEM_STRIDE"] == [2, 2, 2]
    assert v["MODEL.ANCHOR_GENERATOR.Z_ASPECT_RATIOS"] == [[1.0]]
    assert v["INPUT.ROTATE90_XY"] is True and v["INPUT.TARGET_SPACING"] == []
    assert v["MODEL.ROI_HEADS.NUM_CLASSES"] == 2
    assert v["MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION"] == 5
    # objects a few p2 cells wide: the mask head reads the image voxels too
    assert v["MODEL.ROI_MASK_HEAD.IMAGE_REFINE_DIM"] == 16
    # masks are averaged at test time over the flips the model trained with
    assert v["TEST.MASK_FLIP_AXES"] == v["INPUT.RANDOM_FLIP_AXES"] == [0, 1, 2]
    assert v["TEST.FLIP_OBJECTNESS"] is True
    # outlines at voxel resolution; a mask head narrower than the demo's for the CPU budget
    assert v["MODEL.FOREGROUND_HEAD.NAME"] == "FPNForegroundHead"
    assert v["MODEL.ROI_MASK_HEAD.CONV_DIM"] == 32
    assert "80% of a CPU step" in plan.reasons["MODEL.ROI_MASK_HEAD.CONV_DIM"]
    # the mask branch trains on about one foreground RoI per object of a median volume
    per_vol = iso["objects"]["per_volume"]["p50"]
    assert v["MODEL.ROI_MASK_HEAD.TRAIN_ROIS_PER_IMAGE"] == math.ceil(per_vol) >= 3
    # objects enter the label volume from objectness 0.3, below the default 0.5
    assert v["MODEL.ROI_HEADS.LABELS_SCORE_THRESH_TEST"] == 0.3


@pytest.mark.parametrize(
    "cnr,spacing,expected",
    [
        (2.68, (1.0, 1.0, 1.0), [1.0, 1.0, 1.0]),  # toy3d: outlines re-drawn from the image
        (4.0, (2.0, 0.5, 0.5), [0.25, 1.0, 1.0]),  # one x/y voxel (0.5 um) on every axis
        (4.7, (1.0, 1.0, 1.0), None),  # a halfway threshold errs on under 1% of voxels
        (11.2, (1.0, 0.5, 0.5), None),  # synthetic
    ],
)
def test_outlines_are_refined_where_single_voxels_are_too_noisy(iso, cnr, spacing, expected):
    fp = dict(iso)
    fp["intensity"] = {"0": dict(iso["intensity"]["0"], contrast_to_noise=cnr)}
    fp["spacing"] = dict(iso["spacing"], median=list(spacing))
    plan = plan_config(fp, num_classes=2)
    v = plan.values
    assert v["TEST.OUTLINE_REFINE.ENABLED"] is (expected is not None)
    assert f"contrast-to-noise {cnr:.2f}" in plan.reasons["TEST.OUTLINE_REFINE.ENABLED"]
    if expected is None:
        assert "TEST.OUTLINE_REFINE.SIGMA" not in v
    else:
        assert v["TEST.OUTLINE_REFINE.SIGMA"] == expected
        get_cfg().merge_from_list(["TEST.OUTLINE_REFINE.SIGMA", str(expected)])


@pytest.mark.parametrize("touching", [0.0, 0.26])  # synthetic, toy3d
def test_touching_objects_turn_on_the_split_the_iou_head_and_copies(iso, touching):
    fp = dict(iso)
    fp["objects"] = dict(iso["objects"], touching_fraction=touching)
    plan = plan_config(fp, num_classes=2)
    for key in ("TEST.BRIGHTNESS_SPLIT.ENABLED", "MODEL.ROI_BOX_HEAD.IOU_HEAD.ENABLED"):
        assert plan.values[key] is (touching > 0), key
        assert f"{100 * touching:.0f}% of the objects touch" in plan.reasons[key]
    # touching pairs added by copy-paste: half of a median volume's objects, at least one
    copies = plan.values["INPUT.COPY_PASTE.NUM_TOUCHING"]
    per_volume = iso["objects"]["per_volume"]["p50"]
    assert copies == (max(1, round(per_volume / 2)) if touching else 0)
    assert plan.values.get("INPUT.COPY_PASTE.MIN_KEEP", 1.0) == (0.5 if touching else 1.0)
    get_cfg().merge_from_list(["INPUT.COPY_PASTE.NUM_TOUCHING", str(copies)])


def test_anisotropic_plan_keeps_z_resolution(aniso):
    plan = plan_config(aniso, num_classes=2)
    v = plan.values
    # z voxels 4x deeper: z is not downsampled until its physical step reaches the x/y step,
    # and never below 2 voxels of the thinnest volume (12 deep: at most 4... then capped)
    assert _z_strides(plan)[:3] == [1, 2, 4]
    assert max(_z_strides(plan)) <= 6
    assert v["MODEL.RESNETS.STEM_STRIDE"][0] == 1 and v["MODEL.RESNETS.STEM_POOL_STRIDE"][0] == 1
    z = v["MODEL.ANCHOR_GENERATOR.Z_ASPECT_RATIOS"][0][0]
    assert 0.2 <= z <= 0.4  # objects span about a quarter as many voxels in z as in x/y
    # one resolution on every axis (Detectron2's config type), from the x/y size
    assert v["MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION"] == 5
    assert isinstance(v["MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION"], int)


@pytest.mark.parametrize("which", ["iso", "aniso"])
def test_anchors_cover_the_objects(which, iso, aniso):
    fp = iso if which == "iso" else aniso
    v = plan_config(fp, num_classes=2).values
    sizes = np.asarray(fp["objects"]["sizes_voxels_sample"], dtype=float)
    flat = [s for lvl in v["MODEL.ANCHOR_GENERATOR.SIZES"] for s in lvl]
    cov = anchor_coverage(
        sizes,
        flat,
        v["MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS"][0],
        v["MODEL.ANCHOR_GENERATOR.Z_ASPECT_RATIOS"][0],
    )
    assert v["MODEL.RPN.IOU_THRESHOLDS"] == [0.3, 0.7]
    # every object has an anchor of its scale (a factor sqrt(2) off per x/y side at most, and
    # its z ratio to a quarter): centred IoU 0.25 or more
    assert cov.min() >= 0.25
    xy = np.sqrt(sizes[:, 1] * sizes[:, 2])
    assert min(flat) <= np.percentile(xy, 5) * math.sqrt(2)  # the smallest objects have anchors
    assert max(flat) >= xy.max() / math.sqrt(2)


def test_anchor_coverage_matches_explicit_iou():
    # one object 4x8x8 (D, H, W), anchors of xy side 8 and z ratio 0.5 -> 4x8x8: IoU 1;
    # side 16 -> 8x16x16: IoU 256 / 2048
    cov = anchor_coverage(np.array([[4.0, 8.0, 8.0]]), [16.0], [1.0], [0.5])
    assert cov[0] == pytest.approx(256 / 2048)
    cov = anchor_coverage(np.array([[4.0, 8.0, 8.0]]), [8.0, 16.0], [1.0], [0.5])
    assert cov[0] == pytest.approx(1.0)
    # aspect ratio 2: h = s*sqrt(2), w = s/sqrt(2) for an object 4 x 8 x 4 -> s = 4*sqrt(2)
    cov = anchor_coverage(
        np.array([[4.0, 8.0, 4.0]]), [4 * math.sqrt(2)], [2.0], [1 / math.sqrt(2)]
    )
    assert cov[0] == pytest.approx(1.0)


def test_planned_config_loads_and_says_why(iso, tmp_path):
    plan = plan_config(iso, num_classes=2, seconds_per_iter=0.5, budget_minutes=10)
    # training fills 90% of the budget; MAX_ITER is the first estimate at the probe's speed
    assert plan.values["SOLVER.TIME_BUDGET_MINUTES"] == pytest.approx(9.0)
    assert plan.values["SOLVER.MAX_ITER"] == 1050  # 9 min / 0.5 s = 1080, whole 50s
    assert plan.values["SOLVER.STEPS"] == [int(1050 * 0.85)]
    import os

    base = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "Base-RCNN-3D-FPN.yaml")
    text = planned_config_text(
        plan, os.path.abspath(base), "a test plan", {"DATASETS.TRAIN": ["a"], "OUTPUT_DIR": "o"}
    )
    assert "9 minutes at 0.50 s per iteration" in text
    assert "90% of the 10-minute budget" in text
    path = tmp_path / "planned.yaml"
    path.write_text(text)
    cfg = get_cfg()
    cfg.merge_from_file(str(path))
    for key, value in plan.values.items():
        node = cfg
        for k in key.split("."):
            node = node[k]
        want = tuple(value) if isinstance(node, tuple) else value
        assert node == want or list(node) == list(value), key
    assert cfg.DATASETS.TRAIN == ("a",) and cfg.OUTPUT_DIR == "o"


@pytest.mark.parametrize(
    "seconds, on", [((1.0, 0.6), True), ((1.0, 0.95), False), ((1.0, 1.4), False)]
)
def test_inference_autocast_where_the_probe_measured_it_faster(iso, seconds, on):
    plan = plan_config(iso, num_classes=2, seconds_per_iter=0.5, inference_seconds=seconds)
    assert plan.values["TEST.AMP.ENABLED"] is on
    reason = plan.reasons["TEST.AMP.ENABLED"]
    assert f"{seconds[0]:.2f} s per training volume in float32 and {seconds[1]:.2f} s" in reason
    # without a measurement the base config's precision stands
    assert "TEST.AMP.ENABLED" not in plan_config(iso, num_classes=2, seconds_per_iter=0.5).values


@pytest.mark.parametrize("which", ["iso", "aniso"])
def test_rois_pool_from_a_level_where_they_span_several_cells(which, iso, aniso):
    v = plan_config(iso if which == "iso" else aniso, num_classes=2).values
    canonical = v["MODEL.ROI_HEADS.CANONICAL_BOX_SIZE"]
    z_ratio = v["MODEL.ANCHOR_GENERATOR.Z_ASPECT_RATIOS"][0][0]
    # boxes of the anchors' shape from the canonical size (cube root of the volume) to just under
    # twice it: x/y side s, z side s * z_ratio
    xy = torch.tensor([1.0, 1.4, 1.99]) * canonical / z_ratio ** (1 / 3)
    boxes = torch.zeros(3, 6)
    boxes[:, 3], boxes[:, 4], boxes[:, 5] = xy, xy, xy * z_ratio
    levels = 2 + assign_boxes_to_levels(
        [Boxes(boxes)], 2, 5, canonical, v["MODEL.ROI_HEADS.CANONICAL_LEVEL"]
    )
    # p_l has a stride of 2**l voxels in x/y: such a RoI spans 4-8 feature cells per axis there
    # (the box head pools 5 bins per axis; at 2-4 cells its bins mostly interpolate one cell)
    cells = xy / 2.0**levels
    # (the canonical size is rounded to whole voxels: a few percent either way)
    assert torch.all((cells >= 3.8) & (cells < 8.2)), (canonical, levels.tolist())


@pytest.mark.parametrize("which", ["iso", "aniso"])
def test_test_counts_and_tiles_follow_the_training_input_and_the_largest_object(which, iso, aniso):
    fp = iso if which == "iso" else aniso
    v = plan_config(fp, num_classes=2).values
    # volumes this small train whole: the counts are meant for the median volume
    assert v["INPUT.CROP_SIZE"] == []
    train = [int(round(s)) for s in fp["shape"]["median"]]
    assert v["TEST.COUNTS_REFERENCE_SHAPE"] == train
    largest = [fp["objects"]["size_voxels"][a]["p100"] for a in range(3)]
    overlap, size = v["TEST.TILE.OVERLAP"], v["TEST.TILE.SIZE"]
    div = [max(_z_strides(plan_config(fp, num_classes=2))), 32, 32]
    for a in range(3):
        # an object at the edge of a core reaches at most half the overlap past it
        assert 1.25 * largest[a] <= overlap[a] <= 1.25 * largest[a] + 2
        assert size[a] >= max(train[a], 2 * overlap[a]) and size[a] % div[a] == 0
        assert size[a] - div[a] < max(train[a], 2 * overlap[a])  # the smallest such multiple
    cfg = get_cfg()
    cfg.merge_from_list(["TEST.TILE.SIZE", str(size), "TEST.TILE.OVERLAP", str(overlap)])
    cfg.merge_from_list(["TEST.COUNTS_REFERENCE_SHAPE", str(train)])
