import numpy as np
import pytest
import torch
import torch.nn.functional as F

from det3d.structures.boxes import Boxes
from det3d.structures.masks import (
    BitMasks,
    decode_rle,
    encode_rle,
    label_volume_to_rles,
    rle_area,
    rle_iou,
    rle_to_bbox,
    rle_to_coco,
)


def random_labels(shape, n_ids, seed):
    """Blocky label volume: random boxes painted in order (later overwrite earlier)."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, dtype=np.int32)
    for i in range(1, n_ids + 1):
        lo = [rng.integers(0, s - 1) for s in shape]
        hi = [rng.integers(l + 1, s + 1) for l, s in zip(lo, shape)]
        labels[tuple(slice(a, b) for a, b in zip(lo, hi))] = i
    return labels


def reference_box(mask):
    """Box of a boolean volume by scanning every voxel: [min, max+1) per axis, x first."""
    coords = np.argwhere(mask)
    if len(coords) == 0:
        return [0.0] * (2 * mask.ndim)
    lo = coords.min(0)[::-1]  # array order (z, y, x) -> box order (x, y, z)
    hi = coords.max(0)[::-1] + 1
    return [float(v) for v in list(lo) + list(hi)]


@pytest.mark.parametrize("shape", [(12, 9), (6, 12, 9)])
def test_label_volume_round_trip_and_boxes(shape):
    labels = random_labels(shape, 6, seed=len(shape))
    labels[labels == 3] = 0  # make sure an id can be missing
    masks, ids = BitMasks.from_label_volume(labels)
    present = sorted(set(np.unique(labels).tolist()) - {0})
    assert ids.tolist() == present and len(masks) == len(present)
    assert masks.image_size == shape and masks.ndim == len(shape)
    for m, i in zip(masks, ids.tolist()):
        assert np.array_equal(m.numpy(), labels == i)
    assert np.array_equal(masks.to_label_volume(ids).numpy(), labels)
    boxes = masks.get_bounding_boxes()
    assert isinstance(boxes, Boxes) and boxes.ndim == len(shape)
    for b, i in zip(boxes.tensor.tolist(), ids.tolist()):
        assert b == reference_box(labels == i)
    torch.testing.assert_close(
        masks.volume(), torch.tensor([(labels == i).sum() for i in present])
    )


def test_from_label_volume_explicit_ids_and_errors():
    labels = torch.tensor([[0, 1], [2, 2]])
    masks, ids = BitMasks.from_label_volume(labels, ids=[2, 7])
    assert ids.tolist() == [2, 7]
    assert masks.nonempty().tolist() == [True, False]
    assert masks.get_bounding_boxes().tensor.tolist() == [[0.0, 1, 2, 2], [0, 0, 0, 0]]
    with pytest.raises(ValueError, match="float"):
        BitMasks.from_label_volume(np.zeros((3, 3), dtype=np.float32))
    empty, empty_ids = BitMasks.from_label_volume(np.zeros((2, 3, 4), dtype=np.int64))
    assert len(empty) == 0 and empty.tensor.shape == (0, 2, 3, 4) and len(empty_ids) == 0
    assert empty.get_bounding_boxes().tensor.shape == (0, 6)


def test_to_label_volume_later_mask_wins():
    t = torch.zeros(2, 1, 3, 3, dtype=torch.bool)
    t[0, 0, :2, :2] = True
    t[1, 0, 1:, 1:] = True
    lab = BitMasks(t).to_label_volume([5, 9])
    assert lab.dtype == torch.int32
    assert lab[0].tolist() == [[5, 5, 0], [5, 9, 9], [0, 9, 9]]


def test_indexing_cat_to():
    masks, _ = BitMasks.from_label_volume(random_labels((4, 5, 6), 4, seed=1))
    n = len(masks)
    assert masks[0].tensor.shape == (1, 4, 5, 6)
    assert torch.equal(masks[1:3].tensor, masks.tensor[1:3])
    sel = torch.zeros(n, dtype=torch.bool)
    sel[-1] = True
    assert torch.equal(masks[sel].tensor, masks.tensor[-1:])
    assert torch.equal(masks[torch.tensor([1, 0])].tensor, masks.tensor[[1, 0]])
    assert torch.equal(BitMasks.cat([masks[:1], masks[1:]]).tensor, masks.tensor)
    with pytest.raises(ValueError, match="image sizes"):
        BitMasks.cat([masks, BitMasks(torch.zeros(1, 4, 5, 7))])
    assert masks.to("cpu").device == torch.device("cpu")
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        BitMasks(torch.zeros(4, 4))


# ------------------------------------------------------------------ crop_and_resize (det3d._C)
def test_crop_and_resize_identity_and_average_pool():
    pytest.importorskip("det3d._C")
    g = torch.Generator().manual_seed(0)
    t = torch.rand(3, 8, 8, 8, generator=g) > 0.5
    masks = BitMasks(t)
    full = torch.tensor([[0.0, 0, 0, 8, 8, 8]] * 3)
    # aligned RoIAlign of the full box at the native size samples every voxel centre
    out = masks.crop_and_resize(full, 8, threshold=None)
    assert out.dtype == torch.float32 and out.shape == (3, 8, 8, 8)
    torch.testing.assert_close(out, t.float())
    # half size: adaptive sampling takes 2 samples per axis per bin, i.e. 2x2x2 average pooling
    out = masks.crop_and_resize(full, 4, threshold=None)
    torch.testing.assert_close(out, F.avg_pool3d(t.float()[:, None], 2)[:, 0])
    binary = masks.crop_and_resize(full, 4)
    assert torch.equal(binary, (out >= 0.5).float())


def test_crop_and_resize_uses_each_masks_own_box():
    pytest.importorskip("det3d._C")
    g = torch.Generator().manual_seed(1)
    t = torch.rand(2, 10, 12, 14, generator=g) > 0.5
    # box i covers x 2..8, y 3..7, z 1..5 for mask 0 and another region for mask 1
    boxes = torch.tensor([[2.0, 3, 1, 8, 7, 5], [5, 0, 4, 11, 4, 8]])
    out = BitMasks(t).crop_and_resize(boxes, (4, 4, 6), threshold=None)  # (D, H, W)
    assert out.shape == (2, 4, 4, 6)
    torch.testing.assert_close(out[0], t[0, 1:5, 3:7, 2:8].float())
    torch.testing.assert_close(out[1], t[1, 4:8, 0:4, 5:11].float())


def test_crop_and_resize_2d_and_chunks(monkeypatch):
    pytest.importorskip("det3d._C")
    import det3d.structures.masks as masks_module

    g = torch.Generator().manual_seed(2)
    t = torch.rand(5, 6, 6, generator=g) > 0.5
    boxes = torch.tensor([[0.0, 0, 6, 6]] * 5)
    expected = BitMasks(t).crop_and_resize(boxes, 3, threshold=None)
    torch.testing.assert_close(expected, F.avg_pool2d(t.float()[:, None], 2)[:, 0])
    monkeypatch.setattr(masks_module, "_CROP_CHUNK_VOXELS", 2 * 36)  # two masks per chunk
    torch.testing.assert_close(BitMasks(t).crop_and_resize(boxes, 3, threshold=None), expected)
    with pytest.raises(ValueError, match="boxes must be"):
        BitMasks(t).crop_and_resize(boxes[:, :3], 3)
    assert BitMasks(t[:0]).crop_and_resize(boxes[:0], (2, 3)).shape == (0, 2, 3)


# ------------------------------------------------------------------ RLE
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
