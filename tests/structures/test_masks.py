import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _mask_test_utils import random_labels, reference_box

from det3d.structures.boxes import Boxes
from det3d.structures.masks import BitMasks


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
    torch.testing.assert_close(masks.volume(), torch.tensor([(labels == i).sum() for i in present]))


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
