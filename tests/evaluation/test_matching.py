"""label_overlap and matching_metrics: hand-computed cases and slow per-object references."""

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from det3d.evaluation import label_overlap, matching_metrics
from det3d.evaluation.matching import metrics_from_counts


def _random_pair(seed, shape=(6, 20, 24), n=25):
    rng = np.random.default_rng(seed)
    gt = np.zeros(shape, np.int32)
    for k in range(1, n + 1):
        z, y, x = (rng.integers(0, s - 2) for s in shape)
        gt[z : z + rng.integers(1, 4), y : y + rng.integers(2, 7), x : x + rng.integers(2, 7)] = k
    pred = np.roll(gt, rng.integers(-1, 2, 3), (0, 1, 2)) * 3  # non-consecutive ids
    pred[rng.random(shape) < 0.05] = 0
    pred[2:4, 5:9, 5:9] = 1000  # an extra object
    return gt, pred


def _slow_iou(gt, pred):
    gids = [i for i in np.unique(gt) if i]
    pids = [j for j in np.unique(pred) if j]
    iou = np.zeros((len(gids), len(pids)))
    for a, i in enumerate(gids):
        for b, j in enumerate(pids):
            g, p = gt == i, pred == j
            iou[a, b] = (g & p).sum() / (g | p).sum()
    return gids, pids, iou


def test_label_overlap_against_masks():
    gt, pred = _random_pair(0)
    ov = label_overlap(gt, pred)
    gids, pids, _ = _slow_iou(gt, pred)
    assert ov.gt_ids.tolist() == gids and ov.pred_ids.tolist() == pids
    dense = ov.overlap.toarray()
    for a, i in enumerate(gids):
        assert ov.gt_sizes[a] == (gt == i).sum()
        for b, j in enumerate(pids):
            assert dense[a, b] == ((gt == i) & (pred == j)).sum()


def test_label_overlap_huge_ids_and_dtypes():
    gt, pred = _random_pair(1)
    ref = label_overlap(gt, pred)
    big = np.where(gt > 0, gt.astype(np.int64) + (1 << 40), 0)
    ov = label_overlap(big.astype(np.uint64), pred.astype(np.uint16))
    assert (ov.overlap != ref.overlap).nnz == 0
    assert ov.gt_ids.tolist() == [i + (1 << 40) for i in ref.gt_ids]
    with pytest.raises(ValueError, match="shape"):
        label_overlap(gt, pred[:-1])
    with pytest.raises(TypeError, match="integer"):
        label_overlap(gt.astype(float), pred)
    with pytest.raises(ValueError, match="negative"):
        label_overlap(-gt, pred)


def test_hand_computed_case():
    # gt: two 4x4 squares side by side; pred: one exact copy, one covering half of the other,
    # one spurious object.
    gt = np.zeros((8, 12), np.int32)
    gt[0:4, 0:4] = 1
    gt[0:4, 4:8] = 2
    pred = np.zeros_like(gt)
    pred[0:4, 0:4] = 7  # IoU 1 with gt 1
    pred[0:4, 4:6] = 9  # IoU 8/16 = 0.5 with gt 2
    pred[6:8, 9:12] = 4  # no overlap
    m = matching_metrics(gt, pred, [0.4, 0.5, 0.6])
    assert m[0.5]["tp"] == 2  # IoU >= 0.5 matches: the threshold is inclusive
    assert m[0.6]["tp"] == 1
    r = m[0.5]
    assert (r["n_true"], r["n_pred"], r["fp"], r["fn"]) == (2, 3, 1, 0)
    assert r["precision"] == pytest.approx(2 / 3)
    assert r["recall"] == 1.0
    assert r["f1"] == pytest.approx(4 / 5)
    assert r["accuracy"] == pytest.approx(2 / 3)
    assert r["mean_matched_iou"] == pytest.approx(0.75)
    assert r["panoptic_quality"] == pytest.approx(1.5 / (2 + 0.5))
    r = m[0.6]
    assert (r["tp"], r["fp"], r["fn"]) == (1, 2, 1)
    assert r["panoptic_quality"] == pytest.approx(1.0 / (1 + 1 + 0.5))


def test_assignment_maximises_matches_then_iou():
    # Greedy by IoU would match g1-p1 (IoU 1/2) and leave g2 unmatched; the optimal one-to-one
    # matching at t=0.25 is g1-p2 (1/3) and g2-p1 (2/7).
    gt = np.zeros((1, 20), np.int32)
    pred = np.zeros_like(gt)
    gt[0, 0:6] = 1
    gt[0, 6:9] = 2
    pred[0, 2:8] = 1
    pred[0, 0:2] = 2
    m = matching_metrics(gt, pred, [0.25, 0.4])
    assert m[0.25]["tp"] == 2
    assert m[0.25]["sum_matched_iou"] == pytest.approx(1 / 3 + 2 / 7)
    assert m[0.4]["tp"] == 1
    assert m[0.4]["sum_matched_iou"] == pytest.approx(1 / 2)


def test_empty_volumes():
    z = np.zeros((3, 4, 5), np.int32)
    one = z.copy()
    one[0, 0, 0] = 1
    m = matching_metrics(z, z)[0.5]
    assert (m["tp"], m["fp"], m["fn"], m["precision"], m["recall"], m["f1"]) == (0, 0, 0, 0, 0, 0)
    m = matching_metrics(one, z)[0.5]
    assert (m["fn"], m["recall"]) == (1, 0.0)
    m = matching_metrics(z, one)[0.5]
    assert (m["fp"], m["precision"]) == (1, 0.0)
    with pytest.raises(ValueError, match="thresholds"):
        matching_metrics(one, one, [0.0])


@pytest.mark.parametrize("seed", range(6))
def test_random_against_dense_hungarian(seed):
    gt, pred = _random_pair(seed)
    if seed % 2:  # crowded predictions: splits and merges make non-trivial components
        pred = np.where(pred > 0, (pred // 3 + (np.arange(pred.shape[-1]) // 5)) % 17 + 1, 0)
    gids, pids, iou = _slow_iou(gt, pred)
    thresholds = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    res = matching_metrics(gt, pred, thresholds)
    n = min(len(gids), len(pids))
    for t in thresholds:
        ok = iou >= t
        cost = -ok.astype(float) * (1 + iou / (2 * n))
        r, c = linear_sum_assignment(cost)
        hit = ok[r, c]
        tp, s = int(hit.sum()), float(iou[r, c][hit].sum())
        assert res[t]["tp"] == tp, t
        assert res[t]["sum_matched_iou"] == pytest.approx(s, abs=1e-9)
        ref = metrics_from_counts(
            {
                "n_true": len(gids),
                "n_pred": len(pids),
                "tp": tp,
                "fp": len(pids) - tp,
                "fn": len(gids) - tp,
                "sum_matched_iou": s,
            }
        )
        for k, v in ref.items():
            assert res[t][k] == pytest.approx(v, abs=1e-9), (t, k)
