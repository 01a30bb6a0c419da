"""det3d.structures.rle: exact round trips, and the many-instance encoders equal encode_rle."""

import numpy as np
import pytest
import torch
from _mask_test_utils import random_labels, reference_box

from det3d.structures.rle import (
    box_mask_to_rle,
    decode_rle,
    encode_rle,
    label_volume_to_rles,
    paint_rles,
    rle_area,
    rle_areas,
    rle_counts,
    rle_iou,
    rle_to_bbox,
    rle_to_coco,
)


@pytest.mark.parametrize("shape", [(7, 11), (5, 7, 11), (1, 1, 1)])
def test_rle_round_trip_exact(shape):
    rng = np.random.default_rng(sum(shape))
    for density in (0.0, 0.3, 1.0):
        mask = rng.random(shape) < density
        rle = encode_rle(mask)
        assert rle["size"] == list(shape) and isinstance(rle["counts"], str)
        decoded = decode_rle(rle)
        assert decoded.dtype == bool and decoded.shape == shape
        assert np.array_equal(decoded, mask)
        assert rle_area(rle) == mask.sum()
        assert rle_to_bbox(rle) == reference_box(mask)
    # the pycocotools object is the documented 2D view
    coco = rle_to_coco(encode_rle(np.ones(shape, bool)))
    assert coco["size"] == [int(np.prod(shape[:-1])), shape[-1]]


def test_rle_torch_input():
    t = torch.zeros(3, 4, 5, dtype=torch.bool)
    t[1, 2, 3] = True
    assert np.array_equal(decode_rle(encode_rle(t)), t.numpy())


@pytest.mark.parametrize("shape", [(20, 17), (6, 10, 9)])
def test_rle_iou_equals_numpy_iou(shape):
    dt_labels = random_labels(shape, 5, seed=10)
    gt_labels = random_labels(shape, 4, seed=11)
    dt = [dt_labels == i for i in range(1, 6)]
    gt = [gt_labels == i for i in range(1, 5)]
    iscrowd = [False, True, False, False]
    ious = rle_iou([encode_rle(m) for m in dt], [encode_rle(m) for m in gt], iscrowd)
    assert ious.shape == (5, 4)
    ref = np.zeros((5, 4))
    for i, d in enumerate(dt):
        for j, g in enumerate(gt):
            inter = np.logical_and(d, g).sum()
            # crowd ground truth: pycocotools divides by the detection's area
            union = d.sum() if iscrowd[j] else np.logical_or(d, g).sum()
            ref[i, j] = inter / union if union else 0.0
    assert (ref > 0).any()
    np.testing.assert_allclose(ious, ref, rtol=1e-12)
    assert rle_iou([], [encode_rle(g) for g in gt], iscrowd).shape == (0, 4)
    with pytest.raises(ValueError, match="different shapes"):
        rle_iou([encode_rle(dt[0])], [encode_rle(np.zeros((2, 2), bool))], [False])


@pytest.mark.parametrize("shape", [(13, 8), (5, 9, 7)])
def test_label_volume_to_rles_equals_per_id_encoding(shape):
    labels = random_labels(shape, 7, seed=20 + len(shape)).astype(np.uint16)
    labels.flat[0] = 7  # instance touching the first voxel: RLE starts with 0 background
    labels.flat[-1] = 2  # and one touching the last voxel
    rles = label_volume_to_rles(labels)
    present = sorted(set(np.unique(labels).tolist()) - {0})
    assert sorted(rles) == present
    for i in present:
        assert rles[i] == encode_rle(labels == i)
    absent = label_volume_to_rles(labels, ids=[99])
    assert absent[99] == encode_rle(np.zeros(shape, bool))


@pytest.mark.parametrize("shape", [(7, 9), (4, 5, 6), (3, 6, 7), (1, 8, 8)])
def test_label_volume_to_rles_explicit_ids_and_counts(shape):
    rng = np.random.default_rng(len(shape))
    labels = rng.integers(0, 5, size=shape).astype(np.int32)
    labels[..., -1] = 2  # a run reaching the end of the volume
    rles = label_volume_to_rles(labels, ids=[1, 2, 3, 4, 9])
    for i in (1, 2, 3, 4, 9):
        assert rles[i] == encode_rle(labels == i)
        assert rle_counts(rles[i]).sum() == labels.size
        np.testing.assert_array_equal(decode_rle(rles[i]), labels == i)
    np.testing.assert_array_equal(rle_areas([rles[1], rles[9]]), [(labels == 1).sum(), 0])
    assert set(label_volume_to_rles(labels)) == {1, 2, 3, 4}


def test_label_volume_to_rles_torch_input_and_errors():
    labels = random_labels((4, 6, 5), 3, seed=3)
    assert label_volume_to_rles(torch.from_numpy(labels)) == label_volume_to_rles(labels)
    with pytest.raises(ValueError, match="integers"):
        label_volume_to_rles(labels.astype(np.float32))


def test_box_mask_to_rle_equals_full_mask():
    rng = np.random.default_rng(0)
    shape = (5, 9, 11)
    local = rng.random((3, 4, 6)) < 0.5
    full = np.zeros(shape, bool)
    full[2:5, 3:7, 5:11] = local
    assert box_mask_to_rle(local, (2, 3, 5), shape) == encode_rle(full)
    empty = box_mask_to_rle(np.zeros((2, 2, 2), bool), (0, 0, 0), shape)
    assert empty == encode_rle(np.zeros(shape, bool))


def test_paint_rles_first_claim_wins():
    a = np.zeros((3, 4, 5), bool)
    a[0:2, 0:2, 0:3] = True
    b = np.zeros_like(a)
    b[1:3, 1:4, 2:5] = True
    labels = paint_rles([encode_rle(a), encode_rle(b)], a.shape, [1, 2])
    expected = np.where(a, 1, np.where(b, 2, 0))
    np.testing.assert_array_equal(labels, expected)
    with pytest.raises(ValueError, match="shape"):
        paint_rles([encode_rle(a)], (3, 4, 6), [1])
