"""det3d.layers.roi_align against explicit bilinear / trilinear sampling loops."""

import itertools
import math

import numpy as np
import pytest
import torch

from det3d.layers.nms import _ops
from det3d.layers.roi_align import ROIAlign, roi_align


def ref_interpolate(volume, coords):
    """(C,) value of `volume` (C, *size) at `coords` (per array axis), Detectron2's border rule."""
    size = volume.shape[1:]
    lo, hi, w_lo, w_hi = [], [], [], []
    for c, n in zip(coords, size):
        if c < -1 or c > n:
            return np.zeros(volume.shape[0])
        c = max(c, 0.0)
        low = int(c)
        if low >= n - 1:
            low = high = n - 1
            c = float(low)
        else:
            high = low + 1
        lo.append(low)
        hi.append(high)
        w_lo.append(1 - (c - low))
        w_hi.append(c - low)
    value = np.zeros(volume.shape[0])
    for corner in itertools.product((0, 1), repeat=len(size)):
        weight = math.prod(w_hi[a] if bit else w_lo[a] for a, bit in enumerate(corner))
        index = tuple(hi[a] if bit else lo[a] for a, bit in enumerate(corner))
        value += weight * volume[(slice(None),) + index]
    return value


def ref_roi_align(input, rois, output_size, spatial_scale, sampling_ratio, aligned):
    """Every sample of every bin, one at a time, in float64."""
    data = input.double().numpy()
    nd = input.dim() - 2
    out = np.zeros((len(rois), input.shape[1]) + tuple(output_size))
    for k, roi in enumerate(rois.tolist()):
        start, bin_size, grid = [], [], []
        for a in range(nd):  # array axis a holds box coordinate nd - 1 - a
            c = nd - 1 - a
            s = roi[1 + c] * spatial_scale - (0.5 if aligned else 0.0)
            length = roi[1 + nd + c] * spatial_scale - (0.5 if aligned else 0.0) - s
            if not aligned:
                length = max(length, 1.0)
            start.append(s)
            bin_size.append(length / output_size[a])
            g = sampling_ratio if sampling_ratio > 0 else math.ceil(length / output_size[a])
            grid.append(max(g, 0))
        count = max(math.prod(grid), 1)
        for p in itertools.product(*(range(o) for o in output_size)):
            total = np.zeros(input.shape[1])
            for s in itertools.product(*(range(g) for g in grid)):
                coords = [
                    start[a] + p[a] * bin_size[a] + (s[a] + 0.5) * bin_size[a] / grid[a]
                    for a in range(nd)
                ]
                total += ref_interpolate(data[int(roi[0])], coords)
            out[(k, slice(None)) + p] = total / count
    return torch.from_numpy(out)


def make_case(ndim, seed, dtype=torch.float64, spatial_scale=1.0):
    """Small input and RoIs, some partly or wholly outside the volume, one flipped."""
    g = torch.Generator().manual_seed(seed)
    size = (4, 5, 6)[-ndim:]
    input = torch.randn((2, 3) + size, generator=g, dtype=dtype)
    extent = torch.tensor(size[::-1], dtype=torch.float64) / spatial_scale  # box coordinate order
    k = 5
    lo = torch.rand(k, ndim, generator=g, dtype=torch.float64) * (extent + 2) - 2
    hi = lo + torch.rand(k, ndim, generator=g, dtype=torch.float64) * extent * 0.8
    boxes = torch.cat([lo, hi], dim=1)
    boxes[3] = torch.cat([extent - 0.5, extent + 3])  # mostly outside
    boxes[4] = torch.cat([hi[4], lo[4]])  # flipped
    batch = torch.randint(0, 2, (k, 1), generator=g).double()
    return input, torch.cat([batch, boxes], dim=1).to(dtype)


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
@pytest.mark.parametrize("spatial_scale", [1.0, 0.5])
def test_roi_align_matches_reference(ndim, aligned, sampling_ratio, spatial_scale):
    output_size = (2, 3, 4)[-ndim:]
    input, rois = make_case(ndim, seed=ndim, spatial_scale=spatial_scale)
    out = roi_align(input, rois, output_size, spatial_scale, sampling_ratio, aligned)
    assert out.shape == (len(rois), input.shape[1]) + output_size
    expected = ref_roi_align(input, rois, output_size, spatial_scale, sampling_ratio, aligned)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    # float32 agrees up to rounding
    out32 = roi_align(
        input.float(), rois.float(), output_size, spatial_scale, sampling_ratio, aligned
    )
    torch.testing.assert_close(out32.double(), expected, rtol=1e-4, atol=1e-5)


def test_int_output_size_and_module():
    input, rois = make_case(3, seed=0)
    rois = rois.float().double()  # exactly representable in float32
    module = ROIAlign(2, spatial_scale=1.0, sampling_ratio=2)
    assert (
        repr(module) == "ROIAlign(output_size=2, spatial_scale=1.0, sampling_ratio=2, aligned=True)"
    )
    out = module(input, rois.float())  # rois follow the input's dtype
    torch.testing.assert_close(out, roi_align(input, rois, (2, 2, 2), 1.0, 2))
    assert out.dtype == torch.float64


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_gradcheck(ndim, sampling_ratio):
    input, rois = make_case(ndim, seed=1, spatial_scale=0.5)
    input = input[:, :2].clone().requires_grad_(True)
    output_size = (2, 3, 2)[-ndim:]
    assert torch.autograd.gradcheck(
        lambda x: roi_align(x, rois, output_size, 0.5, sampling_ratio, True), (input,)
    )


def test_backward_is_transpose_of_forward():
    # <roi_align(x), g> == <x, roi_align^T(g)> on float32 inputs of realistic shape.
    g = torch.Generator().manual_seed(0)
    input = torch.randn(2, 4, 6, 9, 10, generator=g, requires_grad=True)
    lo = torch.rand(20, 3, generator=g) * 8
    rois = torch.cat([torch.randint(0, 2, (20, 1), generator=g).float(), lo, lo + 3], dim=1)
    out = roi_align(input, rois, (3, 4, 2), 1.0, 0)
    grad = torch.randn(out.shape, generator=g)
    (out * grad).sum().backward()
    ops = _ops()
    expected = ops._roi_align_backward(grad, rois, 1.0, [3, 4, 2], list(input.shape), 0, True)
    torch.testing.assert_close(input.grad, expected)
    torch.testing.assert_close((out * grad).sum(), (input * input.grad).sum(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("ndim", [2, 3])
def test_empty_rois(ndim):
    input = torch.randn((1, 3) + (4, 5, 6)[-ndim:], requires_grad=True)
    rois = torch.zeros(0, 1 + 2 * ndim)
    out = roi_align(input, rois, 2, 1.0, 0)
    assert out.shape == (0, 3) + (2,) * ndim
    out.sum().backward()
    assert torch.equal(input.grad, torch.zeros_like(input))


def test_errors_name_the_argument():
    input, rois = make_case(3, seed=0)
    with pytest.raises(ValueError, match="input"):
        roi_align(input[0], rois, 2)
    with pytest.raises(ValueError, match="rois"):
        roi_align(input, rois[:, :5], 2)
    with pytest.raises(ValueError, match="output_size"):
        roi_align(input, rois, (2, 2))
    with pytest.raises(ValueError, match="spatial_scale"):
        roi_align(input, rois, 2, spatial_scale=0.0)
    bad = rois.clone()
    bad[0, 2] = float("nan")
    with pytest.raises(ValueError, match="rois"):
        roi_align(input, bad, 2)
    bad = rois.clone()
    bad[0, 0] = 2  # batch index out of range
    with pytest.raises(RuntimeError, match="rois"):
        roi_align(input, bad, 2)
    # The compiled op checks on its own too.
    ops = _ops()
    with pytest.raises(RuntimeError, match="input"):
        ops.roi_align(input[0], rois, 1.0, [2, 2, 2], 0, True)
    with pytest.raises(RuntimeError, match="rois"):
        ops.roi_align(input, rois[:, :5], 1.0, [2, 2, 2], 0, True)
    with pytest.raises(RuntimeError, match="rois"):
        ops.roi_align(input, rois.float(), 1.0, [2, 2, 2], 0, True)
    with pytest.raises(RuntimeError, match="output_size"):
        ops.roi_align(input, rois, 1.0, [2, 2], 0, True)
    with pytest.raises(RuntimeError, match="spatial_scale"):
        ops.roi_align(input, rois, -1.0, [2, 2, 2], 0, True)
    with pytest.raises(RuntimeError, match="grad"):
        ops._roi_align_backward(
            torch.zeros(5, 3, 2, 2, 1, dtype=rois.dtype),
            rois,
            1.0,
            [2, 2, 2],
            [2, 3, 4, 5, 6],
            0,
            True,
        )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize("aligned", [True, False])
def test_roi_align_cuda_matches_cpu(ndim, dtype, aligned):
    input, rois = make_case(ndim, seed=3, dtype=torch.float64, spatial_scale=0.5)
    output_size = (2, 3, 4)[-ndim:]
    x_cpu = input.clone().requires_grad_(True)
    x_gpu = input.to("cuda", dtype).requires_grad_(True)
    out_cpu = roi_align(x_cpu, rois, output_size, 0.5, 0, aligned)
    out_gpu = roi_align(x_gpu, rois.cuda(), output_size, 0.5, 0, aligned)
    tol = {torch.float16: 1e-2, torch.float32: 1e-5, torch.float64: 1e-10}[dtype]
    torch.testing.assert_close(out_gpu.double().cpu(), out_cpu, rtol=tol, atol=tol)
    grad = torch.randn(
        out_cpu.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )
    out_cpu.backward(grad)
    out_gpu.backward(grad.to("cuda", dtype))
    torch.testing.assert_close(x_gpu.grad.double().cpu(), x_cpu.grad, rtol=tol, atol=tol)


@pytest.mark.parametrize("ndim", [2, 3])
def test_autocast_computes_in_float32_and_returns_the_input_dtype(ndim):
    g = torch.Generator().manual_seed(0)
    x = torch.randn((2, 3) + (9,) * ndim, generator=g)
    rois = torch.tensor([[0] + [0.5] * ndim + [7.0] * ndim, [1] + [2.0] * ndim + [8.5] * ndim])
    ref = roi_align(x, rois, 3, sampling_ratio=2)
    # under autocast (bfloat16 features from a conv): float32 inside, bfloat16 back
    xb = x.bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = roi_align(xb, rois, 3, sampling_ratio=2)
    assert out.dtype == torch.bfloat16
    # the only error is bfloat16's rounding of the input and of the output
    torch.testing.assert_close(out.float(), ref, rtol=0.02, atol=0.02)
    out.float().sum().backward()
    assert xb.grad.dtype == torch.bfloat16
    # the gradient is the float32 op's, rounded to bfloat16
    x32 = xb.detach().float().requires_grad_()
    roi_align(x32, rois, 3, sampling_ratio=2).sum().backward()
    torch.testing.assert_close(xb.grad.float(), x32.grad, rtol=0.01, atol=1e-3)
    # float32 input under autocast stays float32; reduced precision without autocast works too
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert roi_align(x, rois, 3, sampling_ratio=2).dtype == torch.float32
    assert roi_align(x.half(), rois, 3, sampling_ratio=2).dtype == torch.float16
