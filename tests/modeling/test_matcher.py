import pytest
import torch

from det3d.modeling.matcher import Matcher


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
