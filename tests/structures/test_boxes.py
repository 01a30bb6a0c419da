import itertools

import pytest
import torch

from det3d.structures.boxes import (
    Boxes,
    matched_boxlist_iou,
    pairwise_intersection,
    pairwise_ioa,
    pairwise_iou,
)


def random_boxes(n, ndim, seed, max_coord=20.0):
    g = torch.Generator().manual_seed(seed)
    lo = torch.rand(n, ndim, generator=g) * max_coord
    size = torch.rand(n, ndim, generator=g) * max_coord / 2 + 0.5
    return torch.cat([lo, lo + size], dim=1)


def reference_iou(a, b):
    """One pair at a time, in float64."""
    d = a.shape[1] // 2
    out = torch.zeros(len(a), len(b), dtype=torch.float64)
    for i, j in itertools.product(range(len(a)), range(len(b))):
        inter = 1.0
        for k in range(d):
            inter *= max(0.0, min(a[i, d + k], b[j, d + k]) - max(a[i, k], b[j, k]))
        va = float(torch.prod(a[i, d:] - a[i, :d]))
        vb = float(torch.prod(b[j, d:] - b[j, :d]))
        out[i, j] = inter / (va + vb - inter)
    return out


@pytest.mark.parametrize("ndim", [2, 3])
def test_pairwise_iou_matches_reference(ndim):
    a = random_boxes(7, ndim, seed=0).double()
    b = random_boxes(5, ndim, seed=1).double()
    iou = pairwise_iou(Boxes(a), Boxes(b))
    assert iou.dtype == torch.float32 and iou.shape == (7, 5)
    ref = reference_iou(a, b)
    assert (ref > 0).any() and (ref == 0).any()  # the case covers overlapping and disjoint pairs
    torch.testing.assert_close(iou.double(), ref, rtol=1e-5, atol=1e-6)


def test_hand_iou_3d():
    a = Boxes(torch.tensor([[0.0, 0, 0, 2, 2, 2]]))
    b = Boxes(torch.tensor([[1.0, 1, 1, 3, 3, 3], [0, 0, 0, 2, 2, 1], [5, 5, 5, 6, 6, 6]]))
    # overlaps 1 voxel of 8+8-1; half of a (4 of 8); nothing
    expected = torch.tensor([[1 / 15, 4 / 8, 0.0]])
    torch.testing.assert_close(pairwise_iou(a, b), expected)
    torch.testing.assert_close(pairwise_intersection(a, b), torch.tensor([[1.0, 4.0, 0.0]]))
    # ioa divides by the volume of the second argument
    torch.testing.assert_close(pairwise_ioa(a, b), torch.tensor([[1 / 8, 1.0, 0.0]]))


def test_iou_half_inputs_computed_in_float32():
    # Volumes of 100^3 = 1e6 overflow float16 (max 65504); float32 arithmetic must be used.
    a = torch.tensor([[0.0, 0, 0, 100, 100, 100]]).half()
    b = torch.tensor([[0.0, 0, 0, 100, 100, 50]]).half()
    iou = pairwise_iou(Boxes(a), Boxes(b))
    assert iou.dtype == torch.float32
    torch.testing.assert_close(iou, torch.tensor([[0.5]]))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_iou_rejects_nonfinite_and_names_argument(bad):
    good = Boxes(torch.tensor([[0.0, 0, 1, 1]]))
    broken = Boxes(torch.tensor([[0.0, 0, bad, 1]]))
    with pytest.raises(ValueError, match="boxes2"):
        pairwise_iou(good, broken)
    with pytest.raises(ValueError, match="boxes1"):
        pairwise_ioa(broken, good)


def test_iou_rejects_mixed_ndim():
    with pytest.raises(ValueError, match="2D"):
        pairwise_iou(Boxes(torch.zeros(1, 4)), Boxes(torch.zeros(1, 6)))


@pytest.mark.parametrize("ndim", [2, 3])
def test_matched_iou_is_diagonal_of_pairwise(ndim):
    a = random_boxes(6, ndim, seed=2)
    b = random_boxes(6, ndim, seed=3)
    b[:3] = a[:3] + 0.5  # make some pairs overlap
    torch.testing.assert_close(
        matched_boxlist_iou(Boxes(a), Boxes(b)), torch.diagonal(pairwise_iou(Boxes(a), Boxes(b)))
    )


def test_empty_boxes():
    e = Boxes(torch.zeros(0, 6))
    assert len(e) == 0 and e.ndim == 3
    assert pairwise_iou(e, Boxes(random_boxes(3, 3, 0))).shape == (0, 3)
    assert Boxes(torch.zeros(0), ndim=2).tensor.shape == (0, 4)
    with pytest.raises(ValueError, match="ndim"):
        Boxes(torch.zeros(0))
    assert Boxes.cat([], ndim=3).tensor.shape == (0, 6)
    with pytest.raises(ValueError, match=r"\(N, 4\) or \(N, 6\)"):
        Boxes(torch.zeros(3, 5))


def test_volume_centers_nonempty():
    b = Boxes(torch.tensor([[0.0, 0, 0, 4, 3, 2], [1, 1, 1, 1, 5, 5], [2, 2, 2, 3, 3, 2.5]]))
    torch.testing.assert_close(b.volume(), torch.tensor([24.0, 0.0, 0.5]))
    torch.testing.assert_close(b.area(), b.volume())
    torch.testing.assert_close(b.centers()[0], torch.tensor([2.0, 1.5, 1.0]))
    assert b.nonempty().tolist() == [True, False, True]
    assert b.nonempty(threshold=0.6).tolist() == [True, False, False]


def test_clip_uses_array_shape_order():
    # box_size is (D, H, W) = (5, 10, 20): x is clipped to W=20, y to H=10, z to D=5.
    b = Boxes(torch.tensor([[-3.0, -1, -2, 30, 30, 30]]))
    b.clip((5, 10, 20))
    assert b.tensor.tolist() == [[0.0, 0, 0, 20, 10, 5]]
    b2 = Boxes(torch.tensor([[-3.0, -1, 30, 30]]))
    b2.clip((10, 20))  # (H, W)
    assert b2.tensor.tolist() == [[0.0, 0, 20, 10]]
    with pytest.raises(ValueError, match="NaN"):
        Boxes(torch.tensor([[0.0, 0, float("nan"), 1]])).clip((4, 4))
    with pytest.raises(ValueError, match="entries"):
        b.clip((4, 4))


def test_inside_box():
    b = Boxes(torch.tensor([[0.0, 0, 0, 20, 10, 5], [-1, 0, 0, 2, 2, 2], [0, 0, 0, 2, 2, 6]]))
    assert b.inside_box((5, 10, 20)).tolist() == [False, False, False]  # ends must be < size
    assert b.inside_box((5, 10, 20), boundary_threshold=1).tolist() == [True, True, False]


def test_scale():
    b = Boxes(torch.tensor([[1.0, 2, 3, 4, 5, 6]]))
    b.scale(2.0, 3.0, 0.5)
    assert b.tensor.tolist() == [[2.0, 6, 1.5, 8, 15, 3]]
    b.scale(2.0)
    assert b.tensor.tolist() == [[4.0, 12, 3, 16, 30, 6]]
    with pytest.raises(ValueError, match="factors"):
        b.scale(1.0, 2.0)


def test_indexing_and_cat():
    t = random_boxes(5, 3, seed=4)
    b = Boxes(t)
    assert b[1].tensor.shape == (1, 6) and torch.equal(b[1].tensor[0], t[1])
    assert torch.equal(b[1:3].tensor, t[1:3])
    mask = torch.tensor([True, False, True, False, True])
    assert torch.equal(b[mask].tensor, t[mask])
    idx = torch.tensor([4, 0])
    assert torch.equal(b[idx].tensor, t[idx])
    assert [row.tolist() for row in b] == t.tolist()
    c = Boxes.cat([b[:2], b[2:]])
    assert torch.equal(c.tensor, t)
    with pytest.raises(ValueError, match="mixed"):
        Boxes.cat([b, Boxes(torch.zeros(1, 4))])
    assert "3D" in repr(b)
    cl = b.clone()
    cl.tensor[0, 0] = -100
    assert b.tensor[0, 0] != -100
    assert b.to("cpu").device == torch.device("cpu")


def test_integer_input_becomes_float():
    b = Boxes(torch.tensor([[0, 0, 2, 2]]))
    assert b.tensor.dtype == torch.float32 and b.ndim == 2


@pytest.mark.parametrize("ndim", [2, 3])
def test_flipped_boxes_are_the_boxes_of_flipped_masks(ndim):
    from det3d.structures.masks import BitMasks

    shape = (6, 10, 14)[-ndim:]
    g = torch.Generator().manual_seed(0)
    masks = torch.zeros((3,) + shape, dtype=torch.bool)
    for i in range(3):
        lo = [int(torch.randint(0, s - 3, (1,), generator=g)) for s in shape]
        masks[(i,) + tuple(slice(a, a + 2 + i) for a in lo)] = True
    boxes = BitMasks(masks).get_bounding_boxes()
    for k in range(1, ndim + 1):
        for axes in itertools.combinations(range(ndim), k):
            want = BitMasks(masks.flip([1 + a for a in axes])).get_bounding_boxes().tensor
            got = boxes.flipped(axes, shape)
            torch.testing.assert_close(got.tensor, want)
            torch.testing.assert_close(got.flipped(axes, shape).tensor, boxes.tensor)
    # x and y swapped: the boxes of the masks with their last two axes transposed
    want = BitMasks(masks.transpose(-1, -2)).get_bounding_boxes().tensor
    torch.testing.assert_close(boxes.transposed_xy().tensor, want)
    torch.testing.assert_close(boxes.transposed_xy().transposed_xy().tensor, boxes.tensor)
    with pytest.raises(ValueError, match="axis"):
        boxes.flipped([ndim], shape)
    with pytest.raises(ValueError, match="box_size"):
        boxes.flipped([0], shape[1:])
