"""
det3d's compiled ops as torch sees its own: fake kernels, autograd and autocast registered next to
each op (det3d/layers/op_registrations.py), checked by torch.library.opcheck and by a compiled
graph with no break (tests/modeling/test_compile.py compiles a whole model).
"""

import pytest
import torch

from det3d.layers import roi_align

ops = torch.ops.det3d


def _roi_align_args(ndim, dtype=torch.float64, requires_grad=False):
    g = torch.Generator().manual_seed(0)
    spatial = (5, 9, 11)[-ndim:]
    x = torch.rand((2, 3) + spatial, generator=g, dtype=dtype, requires_grad=requires_grad)
    lo = torch.rand(4, ndim, generator=g, dtype=dtype) * 4
    boxes = torch.cat([lo, lo + 1 + torch.rand(4, ndim, generator=g, dtype=dtype) * 4], 1)
    rois = torch.cat([torch.tensor([[0.0], [1.0], [1.0], [0.0]], dtype=dtype), boxes], 1)
    return (x, rois, 0.5, [2] * ndim, 0, True)


@pytest.mark.parametrize("ndim", [2, 3])
def test_opcheck_roi_align(ndim):
    # schema, fake kernel against the real one, autograd registration, AOT dispatch
    torch.library.opcheck(ops.roi_align, _roi_align_args(ndim, requires_grad=True))


def test_opcheck_nms():
    g = torch.Generator().manual_seed(0)
    lo = torch.rand(20, 3, generator=g) * 10
    boxes = torch.cat([lo, lo + 2 + torch.rand(20, 3, generator=g) * 3], 1)
    scores = torch.rand(20, generator=g)
    checks = ("test_schema", "test_faketensor")  # its output size depends on the data
    torch.library.opcheck(ops.nms, (boxes, scores, 0.3), test_utils=checks)


def test_roi_align_gradient_through_the_registered_autograd():
    args = _roi_align_args(3, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: ops.roi_align(x, *args[1:]), (args[0],))


def test_roi_align_under_autocast_runs_in_float32():
    x, rois, *rest = _roi_align_args(3, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = roi_align(x.bfloat16(), rois, [2, 2, 2], 0.5)  # the CPU kernel has no bf16 path
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, roi_align(x.bfloat16().float(), rois, [2, 2, 2], 0.5))


def test_compiled_ops_trace_without_graph_break():
    x, rois, *rest = _roi_align_args(3, dtype=torch.float32, requires_grad=True)

    def f(x, rois, scores):
        pooled = ops.roi_align(x, rois, 0.5, [2, 2, 2], 0, True)
        keep = ops.nms(rois[:, 1:], scores, 0.5)
        return pooled.sum(), keep

    scores = torch.linspace(1, 0, rois.shape[0])
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager", dynamic=False)
    loss, keep = compiled(x, rois, scores)
    ref_loss, ref_keep = f(x, rois, scores)
    torch.testing.assert_close(loss, ref_loss)
    assert torch.equal(keep, ref_keep)
    (grad,) = torch.autograd.grad(loss, x)
    torch.testing.assert_close(grad, torch.autograd.grad(ref_loss, x)[0])
