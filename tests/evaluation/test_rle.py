"""Multi-instance RLE helpers agree with det3d.structures.masks.encode_rle / decode_rle."""
import numpy as np
import pytest

from det3d.evaluation.rle import (
    box_mask_to_rle,
    labels_to_rles,
    paint_rles,
    rle_areas,
    rle_counts,
)
from det3d.structures.masks import decode_rle, encode_rle


@pytest.mark.parametrize("shape", [(7, 9), (4, 5, 6), (3, 6, 7), (1, 8, 8)])
def test_labels_to_rles_equals_encode_rle(shape):
    rng = np.random.default_rng(len(shape))
    labels = rng.integers(0, 5, size=shape).astype(np.int32)
    labels[..., -1] = 2  # a run reaching the end of the volume
    rles = labels_to_rles(labels, ids=[1, 2, 3, 4, 9])
    for i in (1, 2, 3, 4, 9):
        assert rles[i] == encode_rle(labels == i)
        assert rle_counts(rles[i]).sum() == labels.size
        np.testing.assert_array_equal(decode_rle(rles[i]), labels == i)
    np.testing.assert_array_equal(rle_areas([rles[1], rles[9]]), [(labels == 1).sum(), 0])
    assert set(labels_to_rles(labels)) == {1, 2, 3, 4}


def test_box_mask_to_rle_equals_full_mask():
    rng = np.random.default_rng(0)
    shape = (5, 9, 11)
    local = rng.random((3, 4, 6)) < 0.5
    full = np.zeros(shape, bool)
    full[2:5, 3:7, 5:11] = local
    assert box_mask_to_rle(local, (2, 3, 5), shape) == encode_rle(full)
    assert box_mask_to_rle(np.zeros((2, 2, 2), bool), (0, 0, 0), shape) == encode_rle(np.zeros(shape, bool))


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
