import pytest
import torch

from det3d.structures.image_list import ImageList


def test_from_tensors_3d_pads_each_axis():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 5, 7, 9, generator=g)
    b = torch.rand(2, 6, 3, 10, generator=g)
    il = ImageList.from_tensors([a, b], size_divisibility=(1, 4, 8), pad_value=-1.0)
    # max (6, 7, 10) -> D unconstrained, H up to 8, W up to 16
    assert il.tensor.shape == (2, 2, 6, 8, 16)
    assert il.image_sizes == [(5, 7, 9), (6, 3, 10)]
    assert torch.equal(il[0], a) and torch.equal(il[1], b)
    assert len(il) == 2 and il.ndim == 3
    # everything outside the images is padding
    padded = il.tensor.clone()
    padded[0, :, :5, :7, :9] = -1.0
    padded[1, :, :6, :3, :10] = -1.0
    assert (padded == -1.0).all()


def test_from_tensors_int_divisibility_2d():
    a = torch.ones(1, 5, 7)
    il = ImageList.from_tensors([a], size_divisibility=4)
    assert il.tensor.shape == (1, 1, 8, 8)
    assert il.tensor.sum() == 35 and torch.equal(il[0], a)
    # no padding needed: the single image is not copied
    b = torch.ones(1, 8, 8)
    assert ImageList.from_tensors([b], size_divisibility=4).tensor.data_ptr() == b.data_ptr()


def test_padding_constraints_override():
    a = torch.ones(1, 3, 5, 7)
    constraints = {"size_divisibility": 2}
    il = ImageList.from_tensors([a], size_divisibility=0, padding_constraints=constraints)
    assert il.tensor.shape == (1, 1, 4, 6, 8)
    il = ImageList.from_tensors([a], padding_constraints={"square_size": 9})
    assert il.tensor.shape == (1, 1, 9, 9, 9)


def test_errors():
    with pytest.raises(ValueError, match="channels"):
        ImageList.from_tensors([torch.zeros(1, 4, 4, 4), torch.zeros(2, 4, 4, 4)])
    with pytest.raises(ValueError, match="number of dims"):
        ImageList.from_tensors([torch.zeros(1, 4, 4, 4), torch.zeros(1, 4, 4)])
    with pytest.raises(ValueError, match="length 2, expected 3"):
        ImageList.from_tensors([torch.zeros(1, 4, 4, 4)], size_divisibility=(2, 2))
    with pytest.raises(ValueError, match="empty"):
        ImageList.from_tensors([])


def test_to_and_device():
    il = ImageList.from_tensors([torch.zeros(1, 2, 2, 2)])
    moved = il.to(torch.float64)
    assert moved.tensor.dtype == torch.float64 and moved.image_sizes == il.image_sizes
    assert il.device == torch.device("cpu")
