#pragma once
// Non-maximum suppression of axis-aligned boxes in 2D (N, 4) or 3D (N, 6).
//
// Returns the int64 indices of the kept boxes in decreasing score order (equal scores: lower
// index first). A box is suppressed when its IoU with a kept box is > iou_threshold.
#include <ATen/ATen.h>

namespace det3d {

at::Tensor nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold);
#ifdef WITH_CUDA
at::Tensor nms_cuda(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold);
#endif

// Checks shared by every backend; messages name the argument at fault.
inline void check_nms_inputs(const at::Tensor& boxes, const at::Tensor& scores) {
  TORCH_CHECK(boxes.dim() == 2, "nms: boxes must be 2-D (N, 4) or (N, 6), got shape ",
              boxes.sizes());
  TORCH_CHECK(boxes.size(1) == 4 || boxes.size(1) == 6,
              "nms: boxes must have 4 (2D) or 6 (3D) columns, got shape ", boxes.sizes());
  TORCH_CHECK(boxes.is_floating_point(), "nms: boxes must be a floating point tensor, got ",
              boxes.scalar_type());
  TORCH_CHECK(scores.dim() == 1, "nms: scores must be 1-D, got shape ", scores.sizes());
  TORCH_CHECK(scores.size(0) == boxes.size(0), "nms: scores has ", scores.size(0),
              " elements but boxes has ", boxes.size(0), " rows");
  TORCH_CHECK(scores.is_floating_point(), "nms: scores must be a floating point tensor, got ",
              scores.scalar_type());
  TORCH_CHECK(boxes.device() == scores.device(), "nms: boxes (", boxes.device(),
              ") and scores (", scores.device(), ") must be on the same device");
}

}  // namespace det3d
