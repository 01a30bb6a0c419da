"""refine_outlines (det3d/modeling/outline_refine.py) against a whole-volume reference."""

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from det3d.modeling.outline_refine import refine_outlines


def _reference(labels, image, sigma, level, grow, ring):
    """The rule of refine_outlines written over the whole volume, object by object."""
    smooth = ndi.gaussian_filter(image, sigma, mode="nearest") if sigma else image
    out = np.zeros(labels.shape, np.int32)
    nearest = np.full(labels.shape, np.inf)
    near_any = ndi.distance_transform_edt(labels == 0)
    for obj in range(1, int(labels.max()) + 1):
        mask = labels == obj
        if not mask.any():
            continue
        dist = ndi.distance_transform_edt(~mask)
        core = ndi.binary_erosion(mask)
        core = core if core.sum() >= 8 else mask
        bg = (dist > ring[0]) & (dist <= ring[1]) & (near_any > ring[0])
        new = mask
        if core.sum() >= 8 and bg.sum() >= 8:
            inside, outside = np.median(smooth[core]), np.median(smooth[bg])
            t = outside + level * (inside - outside)
            side = smooth > t if inside > outside else smooth < t
            deep = ndi.distance_transform_edt(mask) > grow
            cand = (side & (dist <= grow) & ((labels == 0) | mask)) | deep
            parts, n = ndi.label(cand)
            best = max(range(1, n + 1), key=lambda k: (np.sum((parts == k) & mask), -k), default=0)
            if best and np.any((parts == best) & mask):
                new = parts == best
        out[new & mask] = obj
        for idx in zip(*np.nonzero(new & ~mask)):
            if dist[idx] < nearest[idx]:
                out[idx], nearest[idx] = obj, dist[idx]
    return out


def _ball(shape, center, radius):
    grid = np.indices(shape)
    return sum((g - c) ** 2 for g, c in zip(grid, center)) <= radius**2


def _scene(seed=0, shape=(28, 32, 32), noise=0.1):
    """Objects of different brightness (two of them touching) and labels that miss their rims."""
    rng = np.random.default_rng(seed)
    truth = np.zeros(shape, np.int32)
    image = np.full(shape, 0.2)
    for obj, (center, radius, bright) in enumerate(
        [((8, 9, 9), 5, 1.0), ((8, 9, 19), 5, 0.5), ((20, 22, 16), 6, 0.8), ((20, 8, 26), 3, 0.6)],
        start=1,
    ):
        ball = _ball(shape, center, radius) & (truth == 0)
        truth[ball] = obj
        image[ball] = bright
    image = ndi.gaussian_filter(image, 0.7) + rng.normal(0, noise, shape)
    # what a detector might hand over: each object eroded by one voxel, and a ragged rim
    labels = np.zeros_like(truth)
    for obj in range(1, 5):
        eroded = ndi.binary_erosion(truth == obj)
        labels[eroded & (rng.random(shape) > 0.1) | ndi.binary_erosion(eroded)] = obj
    return truth, image.astype(np.float32), labels


def _iou(a, b):
    return (a & b).sum() / (a | b).sum()


@pytest.mark.parametrize("sigma,grow,ring", [(1.0, 3, (2, 5)), (0.0, 2, (1, 4)), (0.8, 5, (3, 6))])
def test_matches_the_whole_volume_reference(sigma, grow, ring):
    truth, image, labels = _scene()
    got = refine_outlines(torch.from_numpy(labels), torch.from_numpy(image), sigma, 0.5, grow, ring)
    assert got.dtype == torch.int32
    np.testing.assert_array_equal(got.numpy(), _reference(labels, image, sigma, 0.5, grow, ring))


def test_outlines_come_closer_to_the_truth_and_objects_keep_their_voxels():
    truth, image, labels = _scene()
    got = refine_outlines(torch.from_numpy(labels), torch.from_numpy(image)).numpy()
    for obj in range(1, 5):
        before, after = _iou(labels == obj, truth == obj), _iou(got == obj, truth == obj)
        # (the dim ball 2 loses some of its bright neighbour's unlabelled rim to it: 0.78)
        assert after > before + 0.2 and after > 0.75, (obj, before, after)
    # the dimmer of the two touching balls gets its own threshold: the bright one's would
    # shrink it, and neither takes the other's labelled voxels
    assert not ((labels == 1) & (got == 2)).any() and not ((labels == 2) & (got == 1)).any()
    # an object changes only within `grow` voxels of its outline, on either side
    for obj in range(1, 5):
        assert ndi.distance_transform_edt(labels != obj)[got == obj].max() <= 3
        assert (got[ndi.distance_transform_edt(labels == obj) > 3] == obj).all()


def test_a_dark_hole_deep_inside_an_object_stays_part_of_it():
    image = np.zeros((20, 20, 20), np.float32)
    image[3:17, 3:17, 3:17] = 1.0
    image[9:11, 9:11, 9:11] = 0.0  # 6 voxels from the outline, beyond `grow`
    labels = (image > 0).astype(np.int32)
    labels[9:11, 9:11, 9:11] = 1
    got = refine_outlines(torch.from_numpy(labels), torch.from_numpy(image), sigma=0.0).numpy()
    np.testing.assert_array_equal(got, labels)


def test_dark_objects_on_a_bright_background():
    truth, image, labels = _scene()
    got = refine_outlines(torch.from_numpy(labels), torch.from_numpy(-image)).numpy()
    expected = refine_outlines(torch.from_numpy(labels), torch.from_numpy(image)).numpy()
    np.testing.assert_array_equal(got, expected)


def test_an_unmeasurable_object_keeps_its_voxels():
    # a one-voxel object, and an object that fills its volume (no background to measure)
    labels = np.zeros((9, 9, 9), np.int32)
    labels[4, 4, 4] = 1
    image = np.random.default_rng(0).random(labels.shape).astype(np.float32)
    got = refine_outlines(torch.from_numpy(labels), torch.from_numpy(image)).numpy()
    np.testing.assert_array_equal(got, labels)
    full = np.ones((6, 6, 6), np.int32)
    got = refine_outlines(torch.from_numpy(full), torch.from_numpy(image[:6, :6, :6])).numpy()
    np.testing.assert_array_equal(got, full)


def test_an_unlabelled_voxel_two_objects_reach_goes_to_the_nearer():
    # two cubes of the same brightness, 3 voxels apart, labelled one voxel short on the facing
    # sides: the gap voxels the image calls object go to the cube they are closer to
    image = np.zeros((12, 12, 20), np.float32)
    image[2:10, 2:10, 2:9] = 1.0
    image[2:10, 2:10, 10:18] = 1.0
    labels = np.zeros(image.shape, np.int32)
    labels[2:10, 2:10, 2:8] = 1
    labels[2:10, 2:10, 11:18] = 2
    image[2:10, 2:10, 9] = 1.0  # the gap column is bright: both cubes can reach it
    got = refine_outlines(torch.from_numpy(labels), torch.from_numpy(image), sigma=0.0).numpy()
    assert (got[2:10, 2:10, 8] == 1).all()  # 1 voxel from cube 1, 2 from cube 2
    assert (got[2:10, 2:10, 10] == 2).all()
    assert (got[2:10, 2:10, 9] == 1).all()  # 2 voxels from both: the lower label


def test_bad_arguments_name_the_key():
    labels = torch.zeros(4, 4, 4, dtype=torch.int32)
    image = torch.zeros(4, 4, 4)
    with pytest.raises(ValueError, match=r"image \(4, 4, 5\) does not match labels \(4, 4, 4\)"):
        refine_outlines(labels, torch.zeros(4, 4, 5))
    with pytest.raises(ValueError, match="TEST.OUTLINE_REFINE.SIGMA"):
        refine_outlines(labels, image, sigma=[1.0, 1.0])
    with pytest.raises(ValueError, match="TEST.OUTLINE_REFINE.SIGMA"):
        refine_outlines(labels, image, sigma=-1.0)
    with pytest.raises(ValueError, match="TEST.OUTLINE_REFINE.LEVEL"):
        refine_outlines(labels, image, level=1.0)
    with pytest.raises(ValueError, match="TEST.OUTLINE_REFINE.GROW"):
        refine_outlines(labels, image, grow=-1)
    with pytest.raises(ValueError, match="TEST.OUTLINE_REFINE.BACKGROUND_RING"):
        refine_outlines(labels, image, ring=(5, 2))
