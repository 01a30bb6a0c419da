"""The shipped planned configs (configs/Planned) are what the planner makes of their fingerprint."""

import glob
import json
import os
import re

import pytest

from det3d.config import get_cfg
from det3d.planning import plan_config

ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "Planned")
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "*.yaml")))
# set from the seconds per iteration measured when the config was planned, not from the data
TIMED = {"SOLVER.MAX_ITER", "SOLVER.STEPS", "SOLVER.WARMUP_ITERS"}
TRAINING_SHARE = 0.9  # of the budget, for the training iterations (SOLVER.TIME_BUDGET_MINUTES)


def _get(cfg, key):
    node = cfg
    for k in key.split("."):
        node = node[k]
    return node


@pytest.mark.parametrize("path", CONFIGS, ids=[os.path.basename(p) for p in CONFIGS])
def test_planned_config_matches_its_fingerprint(path):
    with open(os.path.splitext(path)[0] + ".fingerprint.json") as f:
        fingerprint = json.load(f)
    text = open(path).read()
    budget = re.search(r"of the ([\d.]+)-minute budget", text).group(1)
    seconds = re.search(r"minutes at ([\d.]+) s per iteration", text).group(1)
    # TEST.AMP follows the inference times measured when the config was planned
    inference = re.search(
        r"inference took ([\d.]+) s per training volume in float32 and "
        r"([\d.]+) s under autocast",
        text,
    )
    cfg = get_cfg()
    cfg.merge_from_file(path)
    plan = plan_config(
        fingerprint,
        num_classes=cfg.MODEL.ROI_HEADS.NUM_CLASSES,
        seconds_per_iter=float(seconds),
        budget_minutes=float(budget),
        inference_seconds=tuple(map(float, inference.groups())) if inference else None,
    )
    differ = {}
    for key, value in plan.values.items():
        got = _get(cfg, key)
        same = got == value or (isinstance(got, (list, tuple)) and list(got) == list(value))
        if key not in TIMED and not same:
            differ[key] = (got, value)
    assert not differ, f"{path} differs from its plan (config, plan): {differ}; re-plan it"
    # training fills its share of the budget, and the first estimate of its length is that
    # share at the recorded speed (the seconds are rounded in the comment)
    assert cfg.SOLVER.TIME_BUDGET_MINUTES == pytest.approx(float(budget) * TRAINING_SHARE)
    want = float(budget) * 60 * TRAINING_SHARE / float(seconds)
    assert abs(cfg.SOLVER.MAX_ITER - want) <= 0.03 * want + 50
