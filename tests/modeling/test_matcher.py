import math

import pytest
import torch

from det3d.modeling.matcher import ATSSMatcher, Matcher
from det3d.structures import Boxes, pairwise_iou


def test_bands_without_low_quality():
    m = Matcher([0.3, 0.7], [0, -1, 1], allow_low_quality_matches=False)
    iou = torch.tensor(
        [
            [0.9, 0.5, 0.1, 0.0, 0.70],
            [0.2, 0.6, 0.29, 0.0, 0.69],
        ]
    )
    matches, labels = m(iou)
    assert matches.tolist() == [0, 1, 1, 0, 0]
    assert labels.tolist() == [1, -1, 0, 0, 1]
    assert matches.dtype == torch.int64 and labels.dtype == torch.int8


def test_low_quality_matches():
    m = Matcher([0.3, 0.7], [0, -1, 1], allow_low_quality_matches=True)
    iou = torch.tensor(
        [
            [0.9, 0.5, 0.1, 0.0],
            [0.2, 0.6, 0.6, 0.0],  # best 0.6, reached by predictions 1 and 2 (a tie)
            [0.0, 0.0, 0.0, 0.0],  # overlaps nothing: must not make every prediction positive
        ]
    )
    matches, labels = m(iou)
    assert labels.tolist() == [1, 1, 1, 0]
    # a low-quality positive keeps its own best ground truth
    assert matches.tolist()[:3] == [0, 1, 1]


def test_empty_inputs():
    m = Matcher([0.3, 0.7], [0, -1, 1], allow_low_quality_matches=True)
    matches, labels = m(torch.zeros(0, 4))
    assert matches.tolist() == [0] * 4 and labels.tolist() == [0] * 4
    matches, labels = m(torch.zeros(3, 0))
    assert matches.numel() == 0 and labels.numel() == 0


def test_random_against_reference():
    g = torch.Generator().manual_seed(0)
    m = Matcher([0.4, 0.5], [0, -1, 1], allow_low_quality_matches=True)
    iou = (torch.rand(6, 40, generator=g) - 0.3).clamp(min=0)
    matches, labels = m(iou)
    for j in range(iou.shape[1]):
        col = iou[:, j].tolist()
        best = max(col)
        assert matches[j] == col.index(best)
        expected = 0 if best < 0.4 else (-1 if best < 0.5 else 1)
        for i in range(iou.shape[0]):
            row_best = max(iou[i].tolist())
            if row_best > 0 and iou[i, j] == row_best:
                expected = 1
        assert labels[j] == expected, j


def test_bad_arguments():
    with pytest.raises(ValueError, match="labels"):
        Matcher([0.3, 0.7], [0, 1])
    with pytest.raises(ValueError, match="increasing"):
        Matcher([0.7, 0.3], [0, -1, 1])
    m = Matcher([0.5], [0, 1])
    with pytest.raises(ValueError, match="negative or NaN"):
        m(torch.tensor([[float("nan"), 0.2]]))


# ---------------------------------------------------------------------------- ATSS


def _atss_reference(gt, levels, topk, center_in_gt=True):
    """ATSS written out per ground truth and anchor, in Python loops (the paper's steps)."""
    anchors = [a for level in levels for a in level]
    d = len(gt[0]) // 2

    def iou(a, b):
        inter = 1.0
        for k in range(d):
            inter *= max(0.0, min(a[d + k], b[d + k]) - max(a[k], b[k]))
        va = math.prod(a[d + k] - a[k] for k in range(d))
        vb = math.prod(b[d + k] - b[k] for k in range(d))
        return inter / (va + vb - inter) if inter > 0 else 0.0

    def center(b):
        return [(b[k] + b[d + k]) / 2 for k in range(d)]

    claims = {}  # anchor -> (iou, gt)
    for g, box in enumerate(gt):
        cands, start = [], 0
        for level in levels:
            dist = [math.dist(center(box), center(a)) for a in level]
            order = sorted(range(len(level)), key=lambda j: (dist[j], j))[:topk]
            cands += [start + j for j in order]
            start += len(level)
        ious = [iou(box, anchors[j]) for j in cands]
        mean = sum(ious) / len(ious)
        std = (
            math.sqrt(sum((v - mean) ** 2 for v in ious) / (len(ious) - 1)) if len(ious) > 1 else 0
        )
        pos = []
        for j, v in zip(cands, ious):
            c = center(anchors[j])
            inside = all(box[k] < c[k] < box[d + k] for k in range(d))
            if v >= mean + std and v > 0 and (inside or not center_in_gt):
                pos.append((j, v))
        if not pos and max(ious) > 0:
            k = ious.index(max(ious))
            pos = [(cands[k], ious[k])]
        for j, v in pos:
            if j not in claims or v > claims[j][0]:
                claims[j] = (v, g)
    return claims


def _flat(levels):
    """The anchors of all levels and their count per level, as the RPN passes them."""
    return Boxes.cat(levels), [len(a) for a in levels]


def _random_boxes(g, n, ndim, lo=2.0, hi=14.0, extent=40.0):
    start = torch.rand(n, ndim, generator=g) * (extent - hi)
    size = lo + torch.rand(n, ndim, generator=g) * (hi - lo)
    return torch.cat([start, start + size], dim=1)


@pytest.mark.parametrize("ndim,topk,center_in_gt", [(3, 9, True), (3, 4, False), (2, 5, True)])
def test_atss_against_reference(ndim, topk, center_in_gt):
    g = torch.Generator().manual_seed(ndim + topk)
    levels = []
    for stride, size in ((4, 8.0), (8, 16.0), (16, 32.0)):
        c = torch.arange(0, 40, stride, dtype=torch.float32)
        centers = torch.stack(torch.meshgrid(*[c] * ndim, indexing="ij"), dim=-1).reshape(-1, ndim)
        levels.append(Boxes(torch.cat([centers - size / 2, centers + size / 2], dim=1)))
    gt = Boxes(_random_boxes(g, 7, ndim))
    matches, labels = ATSSMatcher(topk, center_in_gt)(gt, *_flat(levels))
    claims = _atss_reference(
        gt.tensor.tolist(), [lv.tensor.tolist() for lv in levels], topk, center_in_gt
    )
    assert labels.dtype == torch.int8 and matches.dtype == torch.int64
    assert set(torch.nonzero(labels == 1)[:, 0].tolist()) == set(claims)
    for j, (_, gi) in claims.items():
        assert int(matches[j]) == gi
    assert set(labels.unique().tolist()) <= {0, 1}  # nothing ignored


def test_atss_gives_every_object_positives_where_iou_thresholds_give_one():
    # anchors one size per octave on a 4-voxel grid; objects between two sizes and off the grid
    levels = []
    for stride, size in ((4, 8.0), (8, 16.0), (16, 32.0)):
        c = torch.arange(0, 64, stride, dtype=torch.float32)
        centers = torch.stack(torch.meshgrid(c, c, c, indexing="ij"), dim=-1).reshape(-1, 3)
        levels.append(Boxes(torch.cat([centers - size / 2, centers + size / 2], dim=1)))
    gt = Boxes(torch.tensor([[5.0, 6, 7, 17, 18, 19], [30, 31, 29, 53, 52, 51]]))
    _, labels = ATSSMatcher(9)(gt, *_flat(levels))
    _, iou_labels = Matcher([0.3, 0.7], [0, -1, 1], allow_low_quality_matches=True)(
        pairwise_iou(gt, Boxes.cat(levels))
    )
    assert int((iou_labels == 1).sum()) <= 2  # no anchor reaches 0.7: the best one each
    assert int((labels == 1).sum()) >= 4


def test_atss_empty_and_bad_arguments():
    levels = [Boxes(torch.tensor([[0.0, 0, 0, 8, 8, 8], [4, 4, 4, 12, 12, 12]]))]
    matches, labels = ATSSMatcher()(Boxes(torch.zeros(0, 6)), *_flat(levels))
    assert labels.tolist() == [0, 0] and matches.tolist() == [0, 0]
    # a ground truth far from every anchor overlaps none: no positive
    _, labels = ATSSMatcher()(Boxes(torch.tensor([[50.0, 50, 50, 60, 60, 60]])), *_flat(levels))
    assert labels.tolist() == [0, 0]
    for topk in (0, 2.5):
        with pytest.raises(ValueError, match="topk"):
            ATSSMatcher(topk)
    with pytest.raises(ValueError, match="add up"):
        ATSSMatcher()(Boxes(torch.tensor([[0.0, 0, 0, 8, 8, 8]])), levels[0], [3])
