"""Centre maps and splitting instances by them (det3d/modeling/center_split.py)."""

import itertools

import numpy as np
import pytest
import torch

from det3d.modeling.center_split import center_targets, split_by_centers, split_instances
from det3d.modeling.postprocessing import paste_mask
from det3d.structures import Boxes, Instances


def _ball(shape, center, radius):
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"))
    c = np.asarray(center, dtype=float).reshape((-1,) + (1,) * len(shape))
    return torch.from_numpy(((grid - c) ** 2).sum(0) <= radius**2)


def _brute_center(masks):
    """Distance of each voxel of object k to the nearest voxel outside it (the volume padded by
    one background voxel), by trying every voxel; over the object's largest; max over objects."""
    masks = masks.numpy()
    shape = masks.shape[1:]
    out = np.zeros(shape)
    for m in masks:
        padded = np.pad(m, 1)
        outside = np.argwhere(~padded) - 1
        dist = np.zeros(shape)
        for p in np.argwhere(m):
            dist[tuple(p)] = np.sqrt(((outside - p) ** 2).sum(1).min())
        if dist.max() > 0:
            out = np.maximum(out, dist / dist.max())
    return out


def test_center_targets_is_the_normalised_distance_to_the_object_edge():
    shape = (12, 16)
    masks = torch.zeros((3,) + shape, dtype=torch.bool)
    masks[0, 2:9, 1:7] = True  # touches object 1 along x = 7
    masks[1, 3:8, 7:12] = True
    masks[2] = _ball(shape, (6, 13), 3.5) & ~masks[1]  # at the right edge, beside object 1
    masks[2, 0:3, 0:4] = True  # a second piece at the corner
    got = center_targets(masks)
    assert got.dtype == torch.float32 and got.shape == shape
    np.testing.assert_allclose(got.numpy(), _brute_center(masks), rtol=1e-6, atol=1e-6)
    # touching objects: the voxels on either side of the contact are 1 voxel from their edge
    assert got[5, 6] < 0.5 and got[5, 7] < 0.5 and got[5, 3] == 1.0
    # 3D, and no objects at all
    balls = torch.stack([_ball((9, 10, 11), (4, 4, 3), 3), _ball((9, 10, 11), (4, 5, 8), 2.5)])
    balls[1] &= ~balls[0]
    np.testing.assert_allclose(center_targets(balls).numpy(), _brute_center(balls), atol=1e-6)
    assert torch.equal(center_targets(torch.zeros(0, 4, 5, dtype=torch.bool)), torch.zeros(4, 5))


def _touching_pair(shape=(24, 28, 40)):
    big = _ball(shape, (12, 14, 13), 8)
    small = _ball(shape, (12, 14, 25.5), 5) & ~big
    lone = _ball(shape, (12, 14, 36), 2.5)
    return big, small, lone


def _iou(a, b):
    return float((a & b).sum()) / float((a | b).sum())


def test_split_separates_two_touching_objects_along_their_contact():
    big, small, lone = _touching_pair()
    center = center_targets(torch.stack([big, small, lone]))
    labels = torch.zeros(big.shape, dtype=torch.int32)
    labels[big | small] = 1  # one detection that covers both
    labels[lone] = 2
    got, splits = split_by_centers(labels, center)
    assert splits == [(3, 1)]
    assert got.dtype == torch.int32
    # the part of the larger seed keeps the label; each part is its object
    assert _iou(got == 1, big) > 0.97 and _iou(got == 3, small) > 0.9
    assert torch.equal(got == 2, lone)  # one centre: left as it was
    assert torch.equal(got > 0, labels > 0)  # nothing gained or lost
    # new labels from first_label; and the input is not modified
    got2, splits2 = split_by_centers(labels, center, first_label=7)
    assert splits2 == [(7, 1)] and torch.equal(got2 == 7, got == 3)
    assert set(labels.unique().tolist()) == {0, 1, 2}


def test_split_keeps_instances_without_two_large_seeds():
    big, small, lone = _touching_pair()
    center = center_targets(torch.stack([big, small, lone]))
    labels = (big | small).to(torch.int32)
    # the small object's seed (centre >= 0.5: a ball of radius 2.5, 81 voxels) is noise below 100
    got, splits = split_by_centers(labels, center, min_seed_voxels=100)
    assert splits == [] and torch.equal(got, labels)
    got, splits = split_by_centers(labels, center, min_seed_voxels=50)
    assert len(splits) == 1
    # a threshold only the big object's centre reaches
    got, splits = split_by_centers(labels, center, seed_threshold=0.95)
    assert splits == [] and torch.equal(got, labels)


def test_split_parts_are_connected_and_cover_the_instance():
    # random centre maps: whatever the seeds, every voxel of the instance ends in exactly one
    # part, each part is connected and holds its seed, and nothing outside the instance changes
    from scipy import ndimage as ndi

    gen = torch.Generator().manual_seed(0)
    for trial in range(4):
        center = torch.rand((14, 15, 16), generator=gen)
        center = torch.from_numpy(ndi.gaussian_filter(center.numpy(), 1.5))
        center = (center - center.min()) / (center.max() - center.min())
        labels = torch.zeros(center.shape, dtype=torch.int32)
        labels[1:13, 2:14, 1:15] = 1
        labels[0, 0, 0] = 2
        got, splits = split_by_centers(labels, center, seed_threshold=0.6, min_seed_voxels=4)
        assert torch.equal(got[labels != 1], labels[labels != 1])
        parts = [1] + [s for s, _ in splits]
        assert all(parent == 1 for _, parent in splits)
        assert set(got[labels == 1].unique().tolist()) == set(parts)
        seeds, _ = ndi.label(((labels == 1) & (center >= 0.6)).numpy())
        for p in parts:
            _, n = ndi.label((got == p).numpy())
            assert n == 1
            assert len(set(seeds[(got == p).numpy()].tolist()) - {0}) >= 1
    assert len(splits) > 0  # the last trial did split (the test would be empty otherwise)


def test_split_rejects_bad_arguments():
    labels = torch.zeros((4, 5, 6), dtype=torch.int32)
    labels[1, 1, 1] = 3
    with pytest.raises(ValueError, match=r"center \(4, 5\) does not match"):
        split_by_centers(labels, torch.zeros(4, 5))
    with pytest.raises(ValueError, match="first_label 3 is not above label 3"):
        split_by_centers(labels, torch.zeros(4, 5, 6), first_label=3)


def test_split_instances_gives_each_part_a_row_its_box_and_mask():
    big, small, lone = _touching_pair()
    center = center_targets(torch.stack([big, small, lone]))
    shape = tuple(big.shape)
    labels = torch.zeros(shape, dtype=torch.int32)
    labels[big | small] = 1
    labels[lone] = 2
    boxes = torch.tensor([[4.0, 5, 3, 31, 23, 21], [33.0, 11, 9, 39, 17, 15]])
    inst = Instances(
        shape,
        pred_boxes=Boxes(boxes.clone()),
        scores=torch.tensor([0.9, 0.8]),
        objectness=torch.tensor([0.95, 0.85]),
        pred_classes=torch.tensor([1, 0]),
        pred_masks=torch.rand(2, 8, 8, 8),
    )
    got, splits = split_by_centers(labels, center, first_label=len(inst) + 1)
    out = split_instances(inst, got, splits)
    assert len(out) == 3
    assert out.scores.tolist() == pytest.approx([0.9, 0.8, 0.9])
    assert out.pred_classes.tolist() == [1, 0, 1] and out.objectness[2] == inst.objectness[0]
    # row 1 (not split) is untouched
    assert torch.equal(out.pred_boxes.tensor[1], boxes[1])
    assert torch.equal(out.pred_masks[1], inst.pred_masks[1])
    for row in (0, 2):
        part = got == row + 1
        where = part.nonzero()
        lo, hi = where.min(0).values, where.max(0).values + 1  # (z, y, x)
        want = torch.cat([lo.flip(0), hi.flip(0)]).float()
        assert torch.equal(out.pred_boxes.tensor[row], want)
        # the mask pasted in its box gives back the part
        slices, local = paste_mask(out.pred_masks[row], out.pred_boxes.tensor[row], shape, 0.5)
        pasted = torch.zeros(shape, dtype=torch.bool)
        pasted[slices] = local
        assert _iou(pasted, part) > 0.85
    assert split_instances(inst, labels, []) is inst
    with pytest.raises(ValueError, match="do not follow"):
        split_instances(inst, got, [(5, 1)])


def test_split_is_the_same_in_2d():
    shape = (30, 40)
    big = _ball(shape, (15, 13), 8)
    small = _ball(shape, (15, 25.5), 5) & ~big
    center = center_targets(torch.stack([big, small]))
    got, splits = split_by_centers((big | small).to(torch.int64), center)
    assert splits == [(2, 1)] and got.dtype == torch.int64
    assert _iou(got == 1, big) > 0.95 and _iou(got == 2, small) > 0.85
    # no overlap between parts, on every pair of 4-neighbours the parts only meet at the contact
    contact = [
        (y, x)
        for y, x in itertools.product(range(shape[0]), range(shape[1] - 1))
        if {int(got[y, x]), int(got[y, x + 1])} == {1, 2}
    ]
    assert contact and all(abs(x - 20) <= 2 for _, x in contact)
