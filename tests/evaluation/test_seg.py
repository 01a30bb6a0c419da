"""CTC SEG: hand-computed cases (the > 0.5 rule at its boundary) and a slow per-object reference."""

import warnings

import numpy as np
import pytest

from det3d.evaluation import seg_jaccard, seg_score


def _slow_seg_jaccard(gt, pred):
    out = []
    for i in [i for i in np.unique(gt) if i]:
        r = gt == i
        j = 0.0
        for s_id in [s for s in np.unique(pred[r]) if s]:
            s = pred == s_id
            inter = (r & s).sum()
            if inter > 0.5 * r.sum():
                j = inter / (r | s).sum()
        out.append(j)
    return np.array(out)


def test_half_overlap_does_not_match():
    gt = np.zeros((4, 8), np.int32)
    gt[:, 0:4] = 1  # |R| = 16
    pred = np.zeros_like(gt)
    pred[:, 0:2] = 5  # |R ∩ S| = 8 = 0.5 |R|: no match
    r = seg_jaccard(gt, pred)
    assert r.ids.tolist() == [1] and r.jaccard.tolist() == [0.0] and r.matched_ids.tolist() == [0]
    pred[0, 2] = 5  # 9 > 8: match, J = 9 / 16
    r = seg_jaccard(gt, pred)
    assert r.jaccard.tolist() == [9 / 16] and r.matched_ids.tolist() == [5]


def test_hand_computed_volume():
    gt = np.zeros((2, 6, 6), np.int32)
    gt[:, 0:3, 0:3] = 1  # 18 voxels
    gt[:, 3:6, 3:6] = 2  # 18 voxels
    gt[0, 0, 5] = 3  # 1 voxel, missed
    pred = np.zeros_like(gt)
    pred[:, 0:3, 0:3] = 1  # exact: J = 1
    pred[:, 0:3, 3:4] = 1  # ... grown by 6 voxels: J = 18 / 24
    pred[:, 3:6, 3:5] = 2  # 12 of 18 voxels of gt 2: J = 12 / 18
    pred[:, 3:6, 5] = 4  # the rest of gt 2: 6 of 18, no match
    r = seg_jaccard(gt, pred)
    np.testing.assert_allclose(r.jaccard, [18 / 24, 12 / 18, 0.0])
    assert seg_score(gt, pred) == pytest.approx((18 / 24 + 12 / 18) / 3)


def test_prediction_splitting_an_object():
    gt = np.zeros((1, 10), np.int32)
    gt[0, :] = 1
    pred = np.zeros_like(gt)
    pred[0, :5] = 1
    pred[0, 5:] = 2
    assert seg_score(gt, pred) == 0.0  # neither half covers more than half


def test_empty_reference_is_nan_with_warning():
    gt = np.zeros((3, 3, 3), np.int32)
    pred = gt.copy()
    pred[0, 0, 0] = 1
    with pytest.warns(RuntimeWarning, match="no objects"):
        assert np.isnan(seg_score(gt, pred))


def test_no_warning_normally_and_perfect_score():
    gt = np.zeros((3, 5, 5), np.int32)
    gt[1, 1:3, 1:3] = 7
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert seg_score(gt, gt * 2) == 1.0


def test_slices_are_scored_as_2d_images():
    gt = np.zeros((4, 6, 6), np.int32)
    gt[1:3, 1:5, 1:5] = 1  # one 3D object crossing slices 1 and 2
    pred = np.zeros_like(gt)
    pred[1, 1:5, 1:5] = 2  # perfect on slice 1
    pred[2, 1:5, 1:3] = 2  # half of slice 2: no match there
    r = seg_jaccard(gt, pred, slices=[1, 2])
    assert r.slice_index.tolist() == [1, 2]
    assert r.jaccard.tolist() == [1.0, 0.0]
    assert seg_score(gt, pred, slices=[1, 2]) == 0.5
    assert seg_score(gt, pred, slices=[1]) == 1.0
    # As one 3D object: 24 of 32 voxels, J = 24 / 32.
    assert seg_score(gt, pred) == pytest.approx(24 / 32)
    with pytest.raises(IndexError, match="slice"):
        seg_score(gt, pred, slices=[4])


@pytest.mark.parametrize("seed", range(5))
def test_random_against_slow_reference(seed):
    rng = np.random.default_rng(seed)
    shape = (6, 18, 20)
    gt = np.zeros(shape, np.int32)
    for k in range(1, 20):
        z, y, x = (rng.integers(0, s - 2) for s in shape)
        gt[z : z + rng.integers(1, 4), y : y + rng.integers(2, 7), x : x + rng.integers(2, 7)] = (
            k * 5
        )
    pred = np.roll(gt, (0, rng.integers(-1, 2), rng.integers(-1, 2)), (0, 1, 2))
    pred = np.where(rng.random(shape) < 0.1, 0, pred)
    pred[:, :, ::7] = np.where(pred[:, :, ::7] > 0, 999, 0)  # cuts that split objects
    ref = _slow_seg_jaccard(gt, pred)
    r = seg_jaccard(gt, pred)
    np.testing.assert_allclose(r.jaccard, ref)
    assert seg_score(gt, pred) == pytest.approx(ref.mean())
    assert 0 < ref.mean() < 1
