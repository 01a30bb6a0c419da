"""det3d.structures.label_volume: the one label -> box routine, compared with a brute-force
reference, and never sized by the largest id."""

import tracemalloc

import numpy as np
import pytest

from det3d.structures.label_volume import compact_labels, label_objects


def _reference(labels):
    ids, boxes, sizes = [], [], []
    for i in np.unique(labels):
        if i == 0:
            continue
        where = np.nonzero(labels == i)
        lo = [int(w.min()) for w in where][::-1]
        hi = [int(w.max()) + 1 for w in where][::-1]
        ids.append(int(i))
        boxes.append(lo + hi)
        sizes.append(len(where[0]))
    return ids, boxes, sizes


@pytest.mark.parametrize("shape", [(6, 9, 11), (9, 11)])
def test_label_objects_matches_reference(shape):
    rng = np.random.default_rng(0)
    labels = rng.choice([0, 0, 0, 3, 7, 8, 40], size=shape).astype(np.int32)
    got = label_objects(labels)
    ids, boxes, sizes = _reference(labels)
    assert got.ids.tolist() == ids
    assert got.boxes.tolist() == boxes
    assert got.sizes.tolist() == sizes
    compact, kept = compact_labels(labels)
    assert kept.tolist() == ids
    np.testing.assert_array_equal(np.concatenate(([0], kept))[compact], labels)


def test_empty_and_background_only():
    assert label_objects(np.zeros((3, 4, 5), np.int32)).boxes.shape == (0, 6)
    assert label_objects(np.zeros((0, 4), np.int32)).ids.size == 0


def _peak_mb(fn):
    tracemalloc.start()
    try:
        out = fn()
        return out, tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def huge_id_labels():
    labels = np.zeros((4, 16, 16), np.int32)
    labels[1:3, 2:6, 3:9] = 2**31 - 1  # ids from another tool
    labels[0, 10:12, 10:15] = 5
    return labels


def test_huge_ids_are_not_a_table_as_long_as_the_largest_id():
    labels = huge_id_labels()
    objects, peak = _peak_mb(lambda: label_objects(labels))
    assert peak < 16, f"{peak:.0f} MB for a 4 KB volume"
    assert objects.ids.tolist() == [5, 2**31 - 1]
    assert objects.boxes.tolist() == [[10, 10, 0, 15, 12, 1], [3, 2, 1, 9, 6, 3]]
    assert objects.sizes.tolist() == [10, 48]
