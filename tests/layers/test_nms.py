"""det3d.layers.nms / batched_nms against a slow, obviously-correct greedy NMS."""

import itertools
import math

import pytest
import torch

from det3d.layers.nms import _ops, batched_nms, nms


def ref_iou(a, b):
    """IoU of two boxes given as lists (lo..., hi...), by the explicit formula."""
    nd = len(a) // 2
    inter = 1.0
    for d in range(nd):
        inter *= max(min(a[nd + d], b[nd + d]) - max(a[d], b[d]), 0.0)
    vol_a = math.prod(max(a[nd + d] - a[d], 0.0) for d in range(nd))
    vol_b = math.prod(max(b[nd + d] - b[d], 0.0) for d in range(nd))
    union = vol_a + vol_b - inter
    return inter / union if union > 0 else 0.0


def ref_nms(boxes, scores, threshold):
    """Visit boxes by decreasing score (ties: lower index); keep those no kept box overlaps > thr."""
    b, s = boxes.tolist(), scores.tolist()
    keep = []
    for i in sorted(range(len(b)), key=lambda i: (-s[i], i)):
        if all(ref_iou(b[i], b[k]) <= threshold for k in keep):
            keep.append(i)
    return keep


def ref_batched_nms(boxes, scores, idxs, threshold):
    keep = []
    for c in set(idxs.tolist()):
        members = [i for i, x in enumerate(idxs.tolist()) if x == c]
        keep += [members[k] for k in ref_nms(boxes[members], scores[members], threshold)]
    s = scores.tolist()
    return sorted(keep, key=lambda i: (-s[i], i))


def random_boxes(n, ndim, seed, dtype=torch.float32, extent=20.0, max_size=8.0):
    """Random boxes with a share of tied scores, flipped boxes, zero-size boxes and duplicates."""
    g = torch.Generator().manual_seed(seed)
    lo = torch.rand(n, ndim, generator=g, dtype=torch.float64) * extent
    size = torch.rand(n, ndim, generator=g, dtype=torch.float64) * max_size
    boxes = torch.cat([lo, lo + size], dim=1)
    flipped = torch.rand(n, generator=g) < 0.1
    boxes[flipped] = torch.cat([boxes[flipped, ndim:], boxes[flipped, :ndim]], dim=1)
    zero = torch.rand(n, generator=g) < 0.1
    boxes[zero, ndim] = boxes[zero, 0]
    boxes[n // 2 :: 7] = boxes[: len(boxes[n // 2 :: 7])]  # exact duplicates
    scores = torch.randint(0, 6, (n,), generator=g).to(dtype) / 5  # many ties
    return boxes.to(dtype), scores


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.7, 1.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nms_matches_reference(ndim, threshold, dtype):
    for seed in range(3):
        boxes, scores = random_boxes(60, ndim, seed=seed + 10 * ndim, dtype=dtype)
        keep = nms(boxes, scores, threshold)
        assert keep.dtype == torch.int64
        assert keep.tolist() == ref_nms(boxes, scores, threshold)


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("num_classes", [3, 40])  # per-class loop / coordinate offsets
def test_batched_nms_matches_reference(ndim, num_classes):
    for seed in range(3):
        boxes, scores = random_boxes(80, ndim, seed=seed, extent=10.0)
        idxs = torch.randint(0, num_classes, (80,), generator=torch.Generator().manual_seed(seed))
        for threshold in (0.2, 0.5):
            keep = batched_nms(boxes, scores, idxs, threshold)
            assert keep.tolist() == ref_batched_nms(boxes, scores, idxs, threshold)


def test_batched_nms_does_not_suppress_across_classes():
    boxes = torch.tensor([[0.0, 0, 0, 4, 4, 4]] * 3)
    scores = torch.tensor([0.5, 0.9, 0.7])
    assert batched_nms(boxes, scores, torch.tensor([0, 1, 0]), 0.5).tolist() == [1, 2]
    idxs = torch.arange(3) * 7
    assert batched_nms(boxes, scores, idxs, 0.5).tolist() == [1, 2, 0]


@pytest.mark.parametrize("ndim", [2, 3])
def test_iou_equal_to_threshold_is_kept(ndim):
    # Second box is half of the first: IoU is exactly 0.5 in binary floating point.
    a = [0.0] * ndim + [2.0] * ndim
    b = [0.0] * ndim + [1.0] + [2.0] * (ndim - 1)
    boxes = torch.tensor([a, b])
    scores = torch.tensor([0.9, 0.8])
    assert nms(boxes, scores, 0.5).tolist() == [0, 1]
    assert nms(boxes, scores, 0.4999).tolist() == [0]


def test_ties_keep_lower_index_first():
    boxes = torch.tensor([[0.0, 0, 1, 1], [5, 5, 6, 6], [0, 0, 1, 1], [5, 5, 6, 6]])
    scores = torch.tensor([0.5, 0.5, 0.5, 0.7])
    assert nms(boxes, scores, 0.5).tolist() == [3, 0]


def test_degenerate_boxes_are_never_suppressed():
    # Zero-volume boxes have IoU 0 with everything, even with an identical box.
    boxes = torch.tensor([[1.0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1], [3, 3, 3, 2, 2, 2]])
    assert nms(boxes, torch.tensor([0.3, 0.2, 0.1]), 0.0).tolist() == [0, 1, 2]


@pytest.mark.parametrize("width", [4, 6])
def test_empty_input(width):
    keep = nms(torch.zeros(0, width), torch.zeros(0), 0.5)
    assert keep.shape == (0,) and keep.dtype == torch.int64
    keep = batched_nms(torch.zeros(0, width), torch.zeros(0), torch.zeros(0, dtype=torch.long), 0.5)
    assert keep.shape == (0,) and keep.dtype == torch.int64


def test_errors_name_the_argument():
    boxes, scores = random_boxes(5, 3, seed=0)
    with pytest.raises(ValueError, match="boxes"):
        nms(boxes[:, :5], scores, 0.5)
    with pytest.raises(ValueError, match="scores"):
        nms(boxes, scores[:4], 0.5)
    with pytest.raises(ValueError, match="idxs"):
        batched_nms(boxes, scores, torch.zeros(4, dtype=torch.long), 0.5)
    nan_boxes = boxes.clone()
    nan_boxes[2, 1] = float("nan")
    with pytest.raises(ValueError, match="boxes"):
        nms(nan_boxes, scores, 0.5)
    with pytest.raises(ValueError, match="boxes"):
        batched_nms(nan_boxes, scores, torch.zeros(5, dtype=torch.long), 0.5)
    # The compiled op checks on its own too.
    with pytest.raises(RuntimeError, match="boxes"):
        _ops().nms(boxes[:, :5], scores, 0.5)
    with pytest.raises(RuntimeError, match="boxes"):
        _ops().nms(boxes.long(), scores, 0.5)
    with pytest.raises(RuntimeError, match="scores"):
        _ops().nms(boxes, scores[:4], 0.5)
    with pytest.raises(RuntimeError, match="scores"):
        _ops().nms(boxes, scores[:, None], 0.5)


def test_large_input_parallel_path_matches_serial():
    # With threshold 0 the CPU kernel filters a list of alive boxes; from 4 * 8192 boxes it does
    # so in chunks on several threads. The one-thread path must give the same result.
    g = torch.Generator().manual_seed(0)
    lo = torch.rand(40000, 3, generator=g) * 12
    boxes = torch.cat([lo, lo + 4 + torch.rand(40000, 3, generator=g)], dim=1)
    scores = torch.rand(40000, generator=g)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        keep = nms(boxes, scores, 0.0)
        torch.set_num_threads(1)
        expected = nms(boxes, scores, 0.0)
    finally:
        torch.set_num_threads(threads)
    assert keep.tolist() == expected.tolist()


def vectorised_greedy_nms(boxes, scores, threshold):
    order = scores.argsort(descending=True, stable=True)
    sb = boxes[order].double()
    nd = sb.shape[1] // 2
    vol = (sb[:, nd:] - sb[:, :nd]).clamp(min=0).prod(1)
    alive, keep = torch.arange(len(sb)), []
    while len(alive):
        i, rest = alive[0], alive[1:]
        keep.append(int(i))
        sides = torch.minimum(sb[i, nd:], sb[rest, nd:]) - torch.maximum(sb[i, :nd], sb[rest, :nd])
        inter = sides.clamp(min=0).prod(1)
        union = vol[i] + vol[rest] - inter
        iou = torch.where(union > 0, inter / union, torch.zeros_like(union))
        alive = rest[~(iou > threshold)]
    return order[keep].tolist()


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("threshold", [0.05, 0.5, 0.95])
def test_many_boxes_of_mixed_sizes(ndim, threshold):
    # Sizes spread over two orders of magnitude, clustered and scattered centres: exercises the
    # CPU kernel's bucket search radius.
    g = torch.Generator().manual_seed(ndim)
    n = 600
    centres = torch.rand(n, ndim, generator=g) * 100
    centres[: n // 2] = centres[: n // 2] * 0.1 + 40
    sizes = torch.exp(torch.rand(n, ndim, generator=g) * 4.5) * 0.3
    boxes = torch.cat([centres - sizes / 2, centres + sizes / 2], dim=1)
    scores = torch.rand(n, generator=g)
    assert nms(boxes, scores, threshold).tolist() == vectorised_greedy_nms(boxes, scores, threshold)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_nms_cuda_matches_cpu(ndim, dtype):
    for seed, threshold in itertools.product(range(3), (0.3, 0.5, 0.7)):
        boxes, scores = random_boxes(300, ndim, seed=seed, dtype=dtype)
        scores = torch.rand(300, generator=torch.Generator().manual_seed(seed)).to(dtype)
        expected = nms(boxes.float(), scores.float(), threshold)
        keep = nms(boxes.cuda(), scores.cuda(), threshold)
        assert keep.device.type == "cuda"
        assert keep.cpu().tolist() == expected.tolist()
        idxs = torch.randint(0, 3, (300,), generator=torch.Generator().manual_seed(seed))
        expected = batched_nms(boxes.float(), scores.float(), idxs, threshold)
        keep = batched_nms(boxes.cuda(), scores.cuda(), idxs.cuda(), threshold)
        assert keep.cpu().tolist() == expected.tolist()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_boxes_and_scores_on_cpu(dtype):
    # well-separated clusters: the float32 IoUs of the rounded boxes decide as the exact ones
    g = torch.Generator().manual_seed(0)
    centers = torch.arange(8, dtype=torch.float32).repeat_interleave(3)[:, None] * 40.0
    lo = centers + torch.rand(24, 3, generator=g)
    boxes = torch.cat([lo, lo + 10 + torch.rand(24, 3, generator=g)], dim=1)
    scores = torch.rand(24, generator=g)
    keep = nms(boxes, scores, 0.5)
    assert len(keep) == 8
    assert torch.equal(nms(boxes.to(dtype), scores.to(dtype), 0.5), keep)
    assert torch.equal(nms(boxes.to(dtype), scores, 0.5), keep)  # mixed dtypes
    classes = torch.arange(24) % 2
    ref = batched_nms(boxes, scores, classes, 0.5)
    assert torch.equal(batched_nms(boxes.to(dtype), scores.to(dtype), classes, 0.5), ref)
