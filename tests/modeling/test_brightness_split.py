"""split_by_brightness: a left-out detection takes its part of an instance only where the part
differs in brightness from the rest; effect size and t against scipy's t-test."""

import numpy as np
import pytest
import torch
from scipy import stats

from det3d.modeling.brightness_split import _brightness_step, check_split_args, split_by_brightness
from det3d.structures import Boxes, Instances

SHAPE = (16, 16, 32)


def _scene(right_brightness, seed=0):
    """
    Two touching boxes of voxels side by side in x (the left one x 4..16, the right one x 16..28),
    brightness 1.0 and ``right_brightness`` under Gaussian noise of sd 0.3. Detection 0 covers
    both (pasted as label 1); detection 1 fits the right one and was left out.
    """
    g = np.random.default_rng(seed)
    truth = np.zeros(SHAPE, np.int32)
    truth[4:12, 4:12, 4:16] = 1
    truth[4:12, 4:12, 16:28] = 2
    image = np.where(truth == 1, 1.0, np.where(truth == 2, right_brightness, 0.0))
    image = image + g.normal(0.0, 0.3, SHAPE)
    labels = torch.from_numpy(np.where(truth > 0, 1, 0).astype(np.int32))
    boxes = torch.tensor([[4.0, 4, 4, 28, 12, 12], [16.0, 4, 4, 28, 12, 12]])  # x0 y0 z0 x1 y1 z1
    inst = Instances(
        SHAPE,
        pred_boxes=Boxes(boxes),
        pred_masks=torch.ones(2, 8, 8, 8),
        objectness=torch.tensor([0.95, 0.6]),
        scores=torch.tensor([0.95, 0.6]),
    )
    return labels, torch.from_numpy(image).float(), inst, truth


def test_a_brighter_neighbour_takes_its_part():
    labels, image, inst, truth = _scene(1.5)
    out, splits = split_by_brightness(labels, image, inst)
    assert splits == [(1, 2)]
    assert out.dtype == labels.dtype
    assert np.array_equal(out.numpy(), truth)


@pytest.mark.parametrize(
    "why,change",
    [
        ("same brightness: a part of one object", dict(right=1.0)),
        ("step below MIN_EFFECT", dict(min_effect=5.0)),
        ("t below MIN_T", dict(min_t=1e4)),
        ("objectness below MIN_OBJECTNESS", dict(min_objectness=0.7)),
    ],
)
def test_nothing_splits_without_a_clear_step(why, change):
    labels, image, inst, _ = _scene(change.pop("right", 1.5))
    out, splits = split_by_brightness(labels, image, inst, **change)
    assert splits == [], why
    assert torch.equal(out, labels), why


def test_a_pasted_or_overlarge_detection_is_not_tried():
    labels, image, inst, _ = _scene(1.5)
    pasted = labels.clone()
    pasted[4:12, 4:12, 20:24] = 2  # detection 1 is in the label volume already
    assert split_by_brightness(pasted, image, inst)[1] == []
    # a detection claiming more than 80% of the instance is a second detection of it
    inst.pred_boxes = Boxes(torch.tensor([[4.0, 4, 4, 28, 12, 12], [6.0, 4, 4, 28, 12, 12]]))
    assert split_by_brightness(labels, image, inst)[1] == []


def test_pieces_cut_off_from_the_instance_go_to_the_detection():
    # the left-out detection fits a bright slab through the middle of the instance: what lies
    # beyond it is cut off from the instance's larger part and joins the detection
    g = np.random.default_rng(1)
    image = np.zeros(SHAPE)
    image[4:12, 4:12, 4:28] = 1.0
    image[4:12, 4:12, 20:24] = 1.6
    image += g.normal(0.0, 0.3, SHAPE)
    labels = torch.zeros(SHAPE, dtype=torch.int32)
    labels[4:12, 4:12, 4:28] = 1
    inst = Instances(
        SHAPE,
        pred_boxes=Boxes(torch.tensor([[4.0, 4, 4, 28, 12, 12], [20.0, 4, 4, 24, 12, 12]])),
        pred_masks=torch.ones(2, 8, 8, 8),
        objectness=torch.tensor([0.9, 0.5]),
    )
    out, splits = split_by_brightness(labels, torch.from_numpy(image).float(), inst, erosion=1)
    assert splits == [(1, 2)]
    assert (out[4:12, 4:12, 4:20] == 1).all() and (out[4:12, 4:12, 20:28] == 2).all()


def test_effect_size_and_t_match_scipy():
    g = np.random.default_rng(2)
    image = g.normal(0.0, 1.0, SHAPE)
    part = np.zeros(SHAPE, bool)
    part[2:10, 2:10, 2:10] = True
    rest = np.zeros(SHAPE, bool)
    rest[2:10, 2:10, 12:30] = True
    image[part] += 0.4
    effect, t = _brightness_step(image, part, rest, erosion=0)
    a, b = image[part], image[rest]
    assert t == pytest.approx(abs(stats.ttest_ind(a, b).statistic), rel=1e-9)
    pooled = np.sqrt(
        ((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / (len(a) + len(b) - 2)
    )
    assert effect == pytest.approx(abs(a.mean() - b.mean()) / pooled, rel=1e-9)
    # with erosion, only the cores count
    core = _brightness_step(image, part, rest, erosion=1)
    assert core[1] < t  # fewer voxels, smaller t at about the same effect


@pytest.mark.parametrize(
    "kwargs,key",
    [
        (dict(min_effect=-0.1), "MIN_EFFECT"),
        (dict(min_t=float("nan")), "MIN_T"),
        (dict(min_objectness=1.5), "MIN_OBJECTNESS"),
        (dict(erosion=1.5), "EROSION"),
    ],
)
def test_bad_values_are_named(kwargs, key):
    with pytest.raises(ValueError, match=f"TEST.BRIGHTNESS_SPLIT.{key}"):
        check_split_args(**kwargs)


def test_shapes_must_match():
    labels, image, inst, _ = _scene(1.5)
    with pytest.raises(ValueError, match=r"image \(16, 16, 31\) does not match"):
        split_by_brightness(labels, image[..., :31], inst)
    with pytest.raises(ValueError, match=r"foreground \(16, 16\) does not match"):
        split_by_brightness(labels, image, inst, foreground=torch.ones(16, 16, dtype=torch.bool))
