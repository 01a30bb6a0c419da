// RoIAlign on the CPU, one code path for 2D and 3D (template on the number of spatial dims).
// The sampling rule (sample points, border interpolation) is roi_align_sampling.h, shared with
// the CUDA kernels.
//
// Sample coordinates along one axis depend only on the bin and sample index along that axis, so
// the interpolation is first tabulated per axis, then combined into, for every sample of a RoI,
// the 2^ndim corner offsets and weights. That table is shared by all channels.
// Forward runs RoIs in parallel. Backward runs channels in parallel: two RoIs may touch the same
// voxel, but never the same channel from two threads, so there are no write races.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "roi_align.h"
#include "roi_align_sampling.h"

namespace det3d {
namespace {

template <typename T, int NDIM>
struct Corners {
  int64_t offset[1 << NDIM];
  T weight[1 << NDIM];
};

// Per-RoI interpolation table: samples are grouped by output bin (row-major over the output),
// `per_bin` samples each; every sample has 2^NDIM corners. `scale` = 1 / samples per bin.
template <typename T, int NDIM>
struct RoiTable {
  std::vector<Corners<T, NDIM>> corners;
  int64_t per_bin = 0;
  T scale = 0;
};

template <typename T, int NDIM>
void build_roi_table(const T* roi, const int64_t* size, const int64_t* out, T spatial_scale,
                     int64_t sampling_ratio, bool aligned, RoiTable<T, NDIM>& table) {
  int64_t grid[NDIM];
  std::vector<AxisSample<T>> axis[NDIM];  // (out[a] * grid[a]) samples per axis
  int64_t per_bin = 1;
  for (int a = 0; a < NDIM; ++a) {
    const int k = NDIM - 1 - a;  // box coordinate along array axis a
    const AxisBins<T> bins =
        axis_bins<T>(roi[1 + k], roi[1 + NDIM + k], spatial_scale, out[a], sampling_ratio, aligned);
    grid[a] = bins.grid;
    per_bin *= grid[a];
    axis[a].resize(out[a] * grid[a]);
    for (int64_t p = 0; p < out[a]; ++p) {
      for (int64_t s = 0; s < grid[a]; ++s) {
        axis[a][p * grid[a] + s] = axis_sample<T>(sample_coord(bins, p, s), size[a]);
      }
    }
  }
  int64_t stride[NDIM];
  int64_t n_bins = 1;
  for (int a = NDIM - 1, st = 1; a >= 0; --a) {
    stride[a] = st;
    st *= size[a];
    n_bins *= out[a];
  }
  table.per_bin = per_bin;
  table.scale = T(1) / static_cast<T>(std::max<int64_t>(per_bin, 1));
  table.corners.resize(n_bins * per_bin);
  if (per_bin == 0) {
    return;
  }
  // Enumerate (bin, sample) pairs in row-major order over (bin index per axis, sample per axis).
  auto* dst = table.corners.data();
  int64_t bin_idx[NDIM] = {0};
  for (int64_t b = 0; b < n_bins; ++b) {
    int64_t s_idx[NDIM] = {0};
    for (int64_t s = 0; s < per_bin; ++s) {
      const AxisSample<T>* samp[NDIM];
      for (int a = 0; a < NDIM; ++a) {
        samp[a] = &axis[a][bin_idx[a] * grid[a] + s_idx[a]];
      }
      for (int m = 0; m < (1 << NDIM); ++m) {
        int64_t off = 0;
        T w = 1;
        for (int a = 0; a < NDIM; ++a) {
          const bool high = (m >> a) & 1;
          off += (high ? samp[a]->hi : samp[a]->lo) * stride[a];
          w *= high ? samp[a]->w_hi : samp[a]->w_lo;
        }
        dst->offset[m] = off;
        dst->weight[m] = w;
      }
      ++dst;
      for (int a = NDIM - 1; a >= 0; --a) {  // next sample
        if (++s_idx[a] < grid[a]) break;
        s_idx[a] = 0;
      }
    }
    for (int a = NDIM - 1; a >= 0; --a) {  // next bin
      if (++bin_idx[a] < out[a]) break;
      bin_idx[a] = 0;
    }
  }
}

int64_t checked_batch_index(double value, int64_t batch) {
  const int64_t b = static_cast<int64_t>(value);
  TORCH_CHECK(b >= 0 && b < batch && static_cast<double>(b) == value, "roi_align: rois batch index ",
              value, " is not an integer in [0, ", batch, ")");
  return b;
}

// What forward and backward both need first: voxels per input channel, bins per output channel
// and the (checked) batch index of every RoI.
struct KernelExtent {
  int64_t volume = 1, n_bins = 1;
  std::vector<int64_t> batch_of;
};

template <typename T, int NDIM>
KernelExtent kernel_extent(const T* rois, int64_t n_rois, int64_t batch, const int64_t* size,
                           const int64_t* out) {
  KernelExtent e;
  for (int a = 0; a < NDIM; ++a) {
    e.volume *= size[a];
    e.n_bins *= out[a];
  }
  e.batch_of.resize(n_rois);
  for (int64_t k = 0; k < n_rois; ++k) {
    e.batch_of[k] = checked_batch_index(static_cast<double>(rois[k * (1 + 2 * NDIM)]), batch);
  }
  return e;
}

template <typename T, int NDIM>
void forward_kernel(const T* input, const T* rois, T* output, int64_t batch, int64_t channels,
                    const int64_t* size, const int64_t* out, int64_t n_rois, T spatial_scale,
                    int64_t sampling_ratio, bool aligned) {
  const KernelExtent e = kernel_extent<T, NDIM>(rois, n_rois, batch, size, out);
  const int64_t volume = e.volume, n_bins = e.n_bins;
  const std::vector<int64_t>& batch_of = e.batch_of;
  at::parallel_for(0, n_rois, 1, [&](int64_t k0, int64_t k1) {
    RoiTable<T, NDIM> table;
    for (int64_t k = k0; k < k1; ++k) {
      build_roi_table<T, NDIM>(rois + k * (1 + 2 * NDIM), size, out, spatial_scale,
                               sampling_ratio, aligned, table);
      for (int64_t c = 0; c < channels; ++c) {
        const T* src = input + (batch_of[k] * channels + c) * volume;
        T* dst = output + (k * channels + c) * n_bins;
        const Corners<T, NDIM>* corner = table.corners.data();
        for (int64_t b = 0; b < n_bins; ++b) {
          T sum = 0;
          for (int64_t s = 0; s < table.per_bin; ++s, ++corner) {
            for (int m = 0; m < (1 << NDIM); ++m) {
              sum += corner->weight[m] * src[corner->offset[m]];
            }
          }
          dst[b] = sum * table.scale;
        }
      }
    }
  });
}

template <typename T, int NDIM>
void backward_kernel(const T* grad, const T* rois, T* grad_input, int64_t batch, int64_t channels,
                     const int64_t* size, const int64_t* out, int64_t n_rois, T spatial_scale,
                     int64_t sampling_ratio, bool aligned) {
  const KernelExtent e = kernel_extent<T, NDIM>(rois, n_rois, batch, size, out);
  const int64_t volume = e.volume, n_bins = e.n_bins;
  const std::vector<int64_t>& batch_of = e.batch_of;
  // Each thread owns a channel range of grad_input and rebuilds the (channel-independent) tables.
  at::parallel_for(0, channels, 1, [&](int64_t c0, int64_t c1) {
    RoiTable<T, NDIM> table;
    for (int64_t k = 0; k < n_rois; ++k) {
      build_roi_table<T, NDIM>(rois + k * (1 + 2 * NDIM), size, out, spatial_scale,
                               sampling_ratio, aligned, table);
      for (int64_t c = c0; c < c1; ++c) {
        const T* g = grad + (k * channels + c) * n_bins;
        T* dst = grad_input + (batch_of[k] * channels + c) * volume;
        const Corners<T, NDIM>* corner = table.corners.data();
        for (int64_t b = 0; b < n_bins; ++b) {
          const T gb = g[b] * table.scale;
          for (int64_t s = 0; s < table.per_bin; ++s, ++corner) {
            for (int m = 0; m < (1 << NDIM); ++m) {
              dst[corner->offset[m]] += corner->weight[m] * gb;
            }
          }
        }
      }
    }
  });
}

at::Tensor forward_cpu(const at::Tensor& input_, const at::Tensor& rois_, double spatial_scale,
                       at::IntArrayRef output_size, int64_t sampling_ratio, bool aligned) {
  check_roi_align_forward(input_, rois_, spatial_scale, output_size, sampling_ratio);
  TORCH_CHECK(input_.device().is_cpu(), "roi_align: input must be a CPU tensor");
  const int ndim = static_cast<int>(input_.dim()) - 2;
  std::vector<int64_t> out_shape{rois_.size(0), input_.size(1)};
  out_shape.insert(out_shape.end(), output_size.begin(), output_size.end());
  at::Tensor output = at::zeros(out_shape, input_.options());
  if (output.numel() == 0) {
    return output;
  }
  const at::Tensor input = input_.contiguous();
  const at::Tensor rois = rois_.contiguous();
  const auto size = input.sizes().slice(2);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "roi_align_forward_cpu", [&] {
    auto kernel = ndim == 2 ? forward_kernel<scalar_t, 2> : forward_kernel<scalar_t, 3>;
    kernel(input.data_ptr<scalar_t>(), rois.data_ptr<scalar_t>(), output.data_ptr<scalar_t>(),
           input.size(0), input.size(1), size.data(), output_size.data(), rois.size(0),
           static_cast<scalar_t>(spatial_scale), sampling_ratio, aligned);
  });
  return output;
}

at::Tensor backward_cpu(const at::Tensor& grad_, const at::Tensor& rois_, double spatial_scale,
                        at::IntArrayRef output_size, at::IntArrayRef input_shape,
                        int64_t sampling_ratio, bool aligned) {
  check_roi_align_backward(grad_, rois_, spatial_scale, output_size, input_shape, sampling_ratio);
  TORCH_CHECK(grad_.device().is_cpu(), "roi_align backward: grad must be a CPU tensor");
  const int ndim = static_cast<int>(input_shape.size()) - 2;
  at::Tensor grad_input = at::zeros(input_shape, grad_.options());
  if (grad_.numel() == 0 || grad_input.numel() == 0) {
    return grad_input;
  }
  const at::Tensor grad = grad_.contiguous();
  const at::Tensor rois = rois_.contiguous();
  const auto size = input_shape.slice(2);
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "roi_align_backward_cpu", [&] {
    auto kernel = ndim == 2 ? backward_kernel<scalar_t, 2> : backward_kernel<scalar_t, 3>;
    kernel(grad.data_ptr<scalar_t>(), rois.data_ptr<scalar_t>(), grad_input.data_ptr<scalar_t>(),
           input_shape[0], input_shape[1], size.data(), output_size.data(), rois.size(0),
           static_cast<scalar_t>(spatial_scale), sampling_ratio, aligned);
  });
  return grad_input;
}

}  // namespace

at::Tensor roi_align_forward_cpu(const at::Tensor& input, const at::Tensor& rois,
                                 double spatial_scale, at::IntArrayRef output_size,
                                 int64_t sampling_ratio, bool aligned) {
  return forward_cpu(input, rois, spatial_scale, output_size, sampling_ratio, aligned);
}

at::Tensor roi_align_backward_cpu(const at::Tensor& grad, const at::Tensor& rois,
                                  double spatial_scale, at::IntArrayRef output_size,
                                  at::IntArrayRef input_shape, int64_t sampling_ratio,
                                  bool aligned) {
  return backward_cpu(grad, rois, spatial_scale, output_size, input_shape, sampling_ratio,
                      aligned);
}

TORCH_LIBRARY_IMPL(det3d, CPU, m) {
  m.impl("roi_align", TORCH_FN(roi_align_forward_cpu));
  m.impl("_roi_align_backward", TORCH_FN(roi_align_backward_cpu));
}

}  // namespace det3d
