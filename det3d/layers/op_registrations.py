"""
What torch needs, besides the kernels, to treat det3d's compiled ops as it treats its own (as
torchvision does for its ops), so that ``torch.compile`` traces a det3d model end to end:

* **fake kernels** (``torch.library.register_fake``): output shapes and dtypes from input shapes,
  without data, for tracing; ``nms`` keeps a data-dependent number of boxes, an unbacked size;
* **autograd** (``torch.library.register_autograd``): ``roi_align``'s backward is
  ``torch.ops.det3d._roi_align_backward``, so no Python ``autograd.Function`` hides the op;
* **autocast**: under ``torch.autocast`` (CUDA or CPU, e.g. bf16) both ops run in float32, as
  torchvision's do: box coordinates and interpolation weights lose too much in half precision,
  and the CPU kernels have no half/bf16 path.

Imported once by :func:`det3d.layers.nms._ops`, after the library that defines the ops.
"""

import torch

import det3d._C  # noqa: F401  (defines torch.ops.det3d.*)

__all__ = []


@torch.library.register_fake("det3d::nms")
def _nms_fake(boxes, scores, iou_threshold):
    torch._check(boxes.dim() == 2 and boxes.shape[1] in (4, 6), lambda: "nms: boxes (N, 4|6)")
    torch._check(scores.dim() == 1 and scores.shape[0] == boxes.shape[0], lambda: "nms: scores")
    kept = torch.library.get_ctx().new_dynamic_size()  # how many survive depends on the data
    return boxes.new_empty((kept,), dtype=torch.int64)


@torch.library.register_fake("det3d::roi_align")
def _roi_align_fake(input, rois, spatial_scale, output_size, sampling_ratio, aligned):
    ndim = input.dim() - 2
    torch._check(ndim in (2, 3), lambda: f"roi_align: input must be 4-D or 5-D, got {ndim + 2}-D")
    torch._check(rois.dim() == 2 and rois.shape[1] == 1 + 2 * ndim, lambda: "roi_align: rois")
    torch._check(len(output_size) == ndim, lambda: "roi_align: output_size")
    return input.new_empty((rois.shape[0], input.shape[1], *output_size))


@torch.library.register_fake("det3d::_roi_align_backward")
def _roi_align_backward_fake(
    grad, rois, spatial_scale, output_size, input_shape, sampling_ratio, aligned
):
    return grad.new_empty(tuple(input_shape))


def _roi_align_setup_context(ctx, inputs, output):
    input, rois, spatial_scale, output_size, sampling_ratio, aligned = inputs
    ctx.save_for_backward(rois)
    ctx.args = (spatial_scale, list(output_size), sampling_ratio, aligned)
    ctx.input_shape = list(input.shape)


def _roi_align_backward(ctx, grad_output):
    (rois,) = ctx.saved_tensors
    spatial_scale, output_size, sampling_ratio, aligned = ctx.args
    grad_input = torch.ops.det3d._roi_align_backward(
        grad_output.contiguous(),
        rois,
        spatial_scale,
        output_size,
        ctx.input_shape,
        sampling_ratio,
        aligned,
    )
    # no gradient for the boxes (as Detectron2 and torchvision) nor the non-tensor arguments
    return grad_input, None, None, None, None, None


torch.library.register_autograd(
    "det3d::roi_align", _roi_align_backward, setup_context=_roi_align_setup_context
)

for _device in ("cuda", "cpu"):
    torch.library.register_autocast("det3d::roi_align", _device, torch.float32)
    torch.library.register_autocast("det3d::nms", _device, torch.float32)
