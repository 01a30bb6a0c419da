import pytest
import torch
import torch.nn.functional as F

from det3d.layers import linear_resize_matrix, resize_linear

MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}


@pytest.mark.parametrize(
    "shape,size",
    [
        ((2, 3, 16, 16, 16), (64, 64, 64)),  # the foreground head's upsampling
        ((1, 2, 7, 9, 5), (20, 4, 11)),  # up and down, odd sizes, per axis
        ((1, 1, 8, 8, 8), (8, 8, 8)),  # the same size: unchanged
        ((2, 2, 13, 17), (5, 40)),
        ((3, 4, 10), (3,)),
        ((1, 1, 1, 6), (4, 1)),  # a single voxel on an axis, both ways
    ],
)
def test_resize_linear_matches_f_interpolate_forward_and_backward(shape, size):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True)
    ours = resize_linear(x, size)
    ref = F.interpolate(x, size=size, mode=MODES[len(size)], align_corners=False)
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)
    grad = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    (g_ours,) = torch.autograd.grad(ours, x, grad)
    (g_ref,) = torch.autograd.grad(ref, x, grad)
    torch.testing.assert_close(g_ours, g_ref, rtol=0, atol=1e-12)


def test_linear_resize_matrix_rows_are_the_interpolation_weights():
    # 2 -> 4 voxels, align_corners=False: output centres at source coordinates
    # -0.25 (clamped to 0), 0.25, 0.75, 1.25 (past the last voxel: the last voxel)
    m = linear_resize_matrix(2, 4, dtype=torch.float64)
    expected = torch.tensor(
        [[1.0, 0.0], [0.75, 0.25], [0.25, 0.75], [0.0, 1.0]], dtype=torch.float64
    )
    torch.testing.assert_close(m, expected)
    assert linear_resize_matrix(5, 13).sum(1).allclose(torch.ones(13))


def test_resize_linear_keeps_float32_and_refuses_bad_input():
    x = torch.randn(1, 1, 4, 4, 4)
    assert resize_linear(x, (8, 8, 8)).dtype == torch.float32
    with pytest.raises(ValueError, match="one size per spatial axis"):
        resize_linear(x, (8, 8))
    with pytest.raises(TypeError, match="floating point"):
        resize_linear(torch.ones(1, 1, 4, 4, dtype=torch.int64), (8, 8))
    with pytest.raises(ValueError, match="sizes must be >= 1"):
        linear_resize_matrix(4, 0)
