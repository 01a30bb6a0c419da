"""
link_slice_instances: hand-made cases against expected volumes written here (split, merge, a
skipped slice, touching neighbours, objects at the volume's ends, IoU threshold, shallow
objects), per-slice ids shuffled, and ground truth cut into slices and linked back.
"""

import numpy as np
import pytest

from det3d.data import make_synthetic_volume
from det3d.evaluation import matching_metrics, seg_jaccard
from det3d.modeling import link_slice_instances


def _square(shape, y0, y1, x0, x1):
    m = np.zeros(shape, bool)
    m[y0:y1, x0:x1] = True
    return m


def _stack(*slices):
    return np.stack(slices).astype(np.int32)


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to renumbering: background agrees and ids pair one-to-one."""
    if not np.array_equal(a == 0, b == 0):
        return False
    pairs = np.unique(np.stack([a[a > 0], b[b > 0]]), axis=1)
    return len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))


def _slice(shape, *objects):
    """A 2D label image: objects = (id, (y0, y1, x0, x1)); later ones win."""
    out = np.zeros(shape, np.int32)
    for i, (y0, y1, x0, x1) in objects:
        out[y0:y1, x0:x1] = i
    return out


S = (12, 12)


def test_one_object_through_the_volume_and_its_ends():
    # starts at z = 0 and ends at the last slice; ids differ in every slice
    vol = _stack(*[_slice(S, (k + 3, (2, 8, 2, 8))) for k in range(4)])
    out = link_slice_instances(vol)
    assert out.dtype == np.int32 and out.shape == vol.shape
    assert np.array_equal(out, (vol > 0).astype(np.int32))


def test_split_continues_the_best_overlapping_child():
    z0 = _slice(S, (1, (2, 10, 2, 10)))  # 64 px
    z1 = _slice(S, (4, (2, 10, 2, 7)), (9, (2, 10, 8, 10)))  # IoU 40/64 and 16/64
    out = link_slice_instances(_stack(z0, z1), iou_threshold=0.2)
    expected = _stack(
        _slice(S, (1, (2, 10, 2, 10))), _slice(S, (1, (2, 10, 2, 7)), (2, (2, 10, 8, 10)))
    )
    assert np.array_equal(out, expected)


def test_merge_continues_one_object_and_ends_the_other():
    z0 = _slice(S, (5, (2, 10, 2, 5)), (6, (2, 10, 5, 10)))  # 24 px and 40 px
    z1 = _slice(S, (1, (2, 10, 2, 10)))  # IoU 24/64 with 5, 40/64 with 6
    z2 = _slice(S, (2, (2, 10, 2, 10)))
    out = link_slice_instances(_stack(z0, z1, z2))
    merged = _slice(S, (2, (2, 10, 2, 10)))
    expected = _stack(_slice(S, (1, (2, 10, 2, 5)), (2, (2, 10, 5, 10))), merged, merged)
    assert np.array_equal(out, expected)


def test_skipped_slice_is_bridged_within_the_gap():
    a = _slice(S, (1, (3, 9, 3, 9)))
    empty = np.zeros(S, np.int32)
    vol = _stack(a, a, empty, a * 7, empty, empty, a)
    bridged = link_slice_instances(vol, max_gap=1)
    expected_gap1 = _stack(a, a, empty, a, empty, empty, a * 2)  # a 2-slice gap is too long
    assert np.array_equal(bridged, expected_gap1)
    split = link_slice_instances(vol, max_gap=0)
    assert np.array_equal(split, _stack(a, a, empty, a * 2, empty, empty, a * 3))
    assert np.array_equal(link_slice_instances(vol, max_gap=2), (vol > 0).astype(np.int32))


def test_gap_does_not_steal_an_object_continued_in_the_adjacent_slice():
    # object 1 goes on in every slice; object 2 (elsewhere) skips z = 1
    z0 = _slice(S, (1, (0, 4, 0, 4)), (2, (6, 12, 6, 12)))
    z1 = _slice(S, (3, (0, 4, 0, 4)))
    z2 = _slice(S, (8, (0, 4, 0, 4)), (9, (6, 12, 6, 12)))
    out = link_slice_instances(_stack(z0, z1, z2), max_gap=1)
    expected = _stack(
        _slice(S, (1, (0, 4, 0, 4)), (2, (6, 12, 6, 12))),
        _slice(S, (1, (0, 4, 0, 4))),
        _slice(S, (1, (0, 4, 0, 4)), (2, (6, 12, 6, 12))),
    )
    assert np.array_equal(out, expected)


def test_touching_neighbours_stay_apart_as_they_drift():
    # two objects that touch in every slice while both shift right by one pixel per slice
    slices = [_slice(S, (1, (2, 10, k, k + 4)), (2, (2, 10, k + 4, k + 8))) for k in range(4)]
    out = link_slice_instances(_stack(*slices))
    assert np.array_equal(out, _stack(*slices))


def test_iou_threshold_and_min_depth():
    a = _slice(S, (1, (0, 6, 0, 6)))  # 36 px
    b = _slice(S, (1, (0, 6, 3, 9)))  # IoU 18/54 = 1/3 with a
    vol = _stack(a, b)
    assert np.array_equal(link_slice_instances(vol, iou_threshold=0.3), _stack(a, b))
    assert np.array_equal(link_slice_instances(vol, iou_threshold=0.4), _stack(a, b * 2))
    # shallow objects go, the others are renumbered 1..K
    c = _slice(S, (4, (8, 12, 8, 12)))
    vol = _stack(a + c, a, a)
    assert np.array_equal(link_slice_instances(vol, min_depth=2), _stack(a, a, a))
    assert np.array_equal(link_slice_instances(vol, min_depth=4), np.zeros_like(vol))


def test_links_say_where_each_2d_instance_went():
    z0 = _slice(S, (7, (0, 4, 0, 4)), (9, (6, 12, 6, 12)))
    z1 = _slice(S, (2, (6, 12, 6, 12)))
    out, links = link_slice_instances(_stack(z0, z1), return_links=True)
    assert links.ids[0].tolist() == [7, 9] and links.objects[0].tolist() == [1, 2]
    assert links.object_of(1, 2) == 2 and links.object_of(1, 5) == 0
    assert out[1, 8, 8] == 2


def _shuffle_ids_per_slice(labels: np.ndarray, rng) -> np.ndarray:
    out = np.zeros_like(labels)
    for z in range(labels.shape[0]):
        ids = np.unique(labels[z])
        ids = ids[ids > 0]
        new = rng.permutation(1000)[: len(ids)] + 1
        lut = np.zeros(labels.max() + 1, np.int32)
        lut[ids] = new
        out[z] = lut[labels[z]]
    return out


def test_shuffled_ids_give_the_same_objects():
    rng = np.random.default_rng(0)
    _, gt, _ = make_synthetic_volume((16, 48, 48), num_objects=6, size_range=(3, 6), seed=3)
    a = link_slice_instances(_shuffle_ids_per_slice(gt, rng))
    b = link_slice_instances(_shuffle_ids_per_slice(gt, rng))
    assert _same_partition(a, b)


def test_ground_truth_cut_into_slices_links_back():
    # Touching objects: the generator places every object against an earlier one (in any 3D
    # direction, so some sit on top of each other in z) at the builtin splits' size and spacing.
    # 12 volumes of 4 objects, SEG pooled over all objects as the SEG evaluator does.
    jaccards, f1 = [], []
    for seed in range(12):
        _, gt, _ = make_synthetic_volume(
            (32, 96, 96),
            num_objects=4,
            size_range=(2.5, 5.0),
            touching=True,
            spacing=(1.0, 0.5, 0.5),
            seed=seed,
        )
        slices = _shuffle_ids_per_slice(gt, np.random.default_rng(seed))
        linked = link_slice_instances(slices, iou_threshold=0.1, max_gap=1)
        jaccards.extend(seg_jaccard(gt, linked).jaccard.tolist())
        f1.append(matching_metrics(gt, linked, [0.5])[0.5]["f1"])
    assert np.mean(jaccards) >= 0.95
    assert np.mean(f1) >= 0.7  # split-off caps of objects are extra (small) objects


def test_memory_does_not_hold_per_object_volumes():
    # 2,000 one-slice objects in a 4 x 400 x 400 volume: per-object volumes would need 1.3 GB
    vol = np.zeros((4, 400, 400), np.int32)
    yy, xx = np.divmod(np.arange(2000), 50)
    for k, (y, x) in enumerate(zip(yy, xx)):
        vol[0, y * 8 : y * 8 + 4, x * 8 : x * 8 + 4] = k + 1
    out = link_slice_instances(vol)
    assert out.max() == 2000 and np.array_equal(out > 0, vol > 0)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match=r"\(D, H, W\)"):
        link_slice_instances(np.zeros((4, 4), np.int32))
    with pytest.raises(ValueError, match="integer"):
        link_slice_instances(np.zeros((2, 4, 4), np.float32))
    with pytest.raises(ValueError, match="negative"):
        link_slice_instances(-np.ones((2, 4, 4), np.int32))
    with pytest.raises(ValueError, match="iou_threshold"):
        link_slice_instances(np.zeros((2, 4, 4), np.int32), iou_threshold=0.0)
