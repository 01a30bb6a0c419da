#pragma once
// RoIAlign (Detectron2 semantics) for 2D (N, C, H, W) and 3D (N, C, D, H, W) inputs.
//
// rois (K, 1 + 2*ndim): batch index, then the box (x0, y0[, z0], x1, y1[, z1]) in input voxel
// coordinates before `spatial_scale`. Box coordinate k runs along array axis ndim - 1 - k.
// output_size is per array axis ((D,) H, W). Output (K, C, *output_size).
#include <ATen/ATen.h>

namespace det3d {

at::Tensor roi_align_forward_cpu(const at::Tensor& input, const at::Tensor& rois,
                                 double spatial_scale, at::IntArrayRef output_size,
                                 int64_t sampling_ratio, bool aligned);
at::Tensor roi_align_backward_cpu(const at::Tensor& grad, const at::Tensor& rois,
                                  double spatial_scale, at::IntArrayRef output_size,
                                  at::IntArrayRef input_shape, int64_t sampling_ratio,
                                  bool aligned);
#ifdef WITH_CUDA
at::Tensor roi_align_forward_cuda(const at::Tensor& input, const at::Tensor& rois,
                                  double spatial_scale, at::IntArrayRef output_size,
                                  int64_t sampling_ratio, bool aligned);
at::Tensor roi_align_backward_cuda(const at::Tensor& grad, const at::Tensor& rois,
                                   double spatial_scale, at::IntArrayRef output_size,
                                   at::IntArrayRef input_shape, int64_t sampling_ratio,
                                   bool aligned);
#endif

// Checks shared by every backend. `ndim` is the number of spatial dims of the input;
// messages name the argument at fault.
inline void check_roi_align_args(int64_t ndim, const at::Tensor& like, const char* like_name,
                                 const at::Tensor& rois,
                                 double spatial_scale, at::IntArrayRef output_size,
                                 int64_t sampling_ratio) {
  TORCH_CHECK(rois.dim() == 2 && rois.size(1) == 1 + 2 * ndim, "roi_align: rois must have shape (K, ",
              1 + 2 * ndim, ") (batch index, then the box) for a ", ndim,
              "D input, got shape ", rois.sizes());
  TORCH_CHECK(rois.scalar_type() == like.scalar_type(), "roi_align: rois dtype (",
              rois.scalar_type(), ") must match ", like_name, " dtype (", like.scalar_type(), ")");
  TORCH_CHECK(rois.device() == like.device(), "roi_align: rois (", rois.device(), ") and ",
              like_name, " (", like.device(), ") must be on the same device");
  TORCH_CHECK(static_cast<int64_t>(output_size.size()) == ndim, "roi_align: output_size must have ",
              ndim, " entries (one per spatial axis), got ", output_size);
  for (int64_t s : output_size) {
    TORCH_CHECK(s > 0, "roi_align: output_size entries must be positive, got ", output_size);
  }
  TORCH_CHECK(spatial_scale > 0, "roi_align: spatial_scale must be > 0, got ", spatial_scale);
  TORCH_CHECK(sampling_ratio >= 0, "roi_align: sampling_ratio must be >= 0, got ",
              sampling_ratio);
}

inline void check_roi_align_forward(const at::Tensor& input, const at::Tensor& rois,
                                    double spatial_scale, at::IntArrayRef output_size,
                                    int64_t sampling_ratio) {
  TORCH_CHECK(input.dim() == 4 || input.dim() == 5,
              "roi_align: input must be 4-D (N, C, H, W) or 5-D (N, C, D, H, W), got shape ",
              input.sizes());
  TORCH_CHECK(input.is_floating_point(), "roi_align: input must be a floating point tensor, got ",
              input.scalar_type());
  check_roi_align_args(input.dim() - 2, input, "input", rois, spatial_scale, output_size, sampling_ratio);
}

inline void check_roi_align_backward(const at::Tensor& grad, const at::Tensor& rois,
                                     double spatial_scale, at::IntArrayRef output_size,
                                     at::IntArrayRef input_shape, int64_t sampling_ratio) {
  TORCH_CHECK(input_shape.size() == 4 || input_shape.size() == 5,
              "roi_align backward: input_shape must have 4 or 5 entries, got ", input_shape);
  const int64_t ndim = static_cast<int64_t>(input_shape.size()) - 2;
  TORCH_CHECK(grad.is_floating_point(), "roi_align backward: grad must be floating point, got ",
              grad.scalar_type());
  check_roi_align_args(ndim, grad, "grad", rois, spatial_scale, output_size, sampling_ratio);
  std::vector<int64_t> expected{rois.size(0), input_shape[1]};
  expected.insert(expected.end(), output_size.begin(), output_size.end());
  TORCH_CHECK(grad.sizes() == at::IntArrayRef(expected), "roi_align backward: grad must have shape ",
              at::IntArrayRef(expected), ", got ", grad.sizes());
}

}  // namespace det3d
