// RoIAlign on the GPU for 2D and 3D inputs: one thread per output element (forward) or per
// output gradient element (backward, scattering with atomicAdd). The sample points and border
// rule are roi_align_sampling.h, shared with roi_align_cpu.cpp; arithmetic in float for half
// inputs. The 2D and 3D launches go through one helper, dispatch_ndim.
#include <ATen/AccumulateType.h>
#include <ATen/ceil_div.h>
#include <ATen/cuda/Atomic.cuh>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common/dispatch_ndim.h"
#include "roi_align.h"
#include "roi_align_sampling.h"

namespace det3d {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 4096;

template <int NDIM>
struct Geometry {
  int64_t size[NDIM];  // input spatial shape, array axis order
  int64_t out[NDIM];   // output_size, array axis order
  int64_t channels;
  int64_t n_bins;
  int sampling_ratio;
  bool aligned;
};

// Bins along every array axis for one RoI (roi_align_sampling.h); returns samples per bin.
template <typename T, int NDIM>
__device__ inline int64_t roi_bins(const T* roi, const Geometry<NDIM>& geo,
                                   at::acc_type<T, true> spatial_scale,
                                   AxisBins<at::acc_type<T, true>>* bins) {
  using acc_t = at::acc_type<T, true>;
  int64_t per_bin = 1;
  for (int a = 0; a < NDIM; ++a) {
    const int k = NDIM - 1 - a;  // box coordinate along array axis a
    bins[a] = axis_bins<acc_t>(static_cast<acc_t>(roi[1 + k]),
                               static_cast<acc_t>(roi[1 + NDIM + k]), spatial_scale, geo.out[a],
                               geo.sampling_ratio, geo.aligned);
    per_bin *= bins[a].grid;
  }
  return per_bin;
}

// Corner offsets and weights of sample `s` of bin `p`; false when it lies outside the border.
template <typename acc_t, int NDIM>
__device__ inline bool corners(const AxisBins<acc_t>* bins, const int64_t* p, const int64_t* s,
                               const int64_t* size, int64_t* offset, acc_t* weight) {
  AxisSample<acc_t> samp[NDIM];
  for (int a = 0; a < NDIM; ++a) {
    samp[a] = axis_sample<acc_t>(sample_coord(bins[a], p[a], s[a]), size[a]);
    if (samp[a].w_lo == acc_t(0) && samp[a].w_hi == acc_t(0)) {
      return false;  // outside [-1, size]: contributes nothing
    }
  }
  for (int m = 0; m < (1 << NDIM); ++m) {
    int64_t off = 0;
    acc_t w = 1;
    int64_t stride = 1;
    for (int a = NDIM - 1; a >= 0; --a) {
      const bool high = (m >> a) & 1;
      off += (high ? samp[a].hi : samp[a].lo) * stride;
      w *= high ? samp[a].w_hi : samp[a].w_lo;
      stride *= size[a];
    }
    offset[m] = off;
    weight[m] = w;
  }
  return true;
}

// Decodes the linear index of a bin (or of a sample within a bin) into per-axis indices.
template <int NDIM>
__device__ inline void unravel(int64_t index, const int64_t* extent, int64_t* out) {
  for (int a = NDIM - 1; a >= 0; --a) {
    out[a] = index % extent[a];
    index /= extent[a];
  }
}

template <typename T, int NDIM>
__global__ void roi_align_forward_kernel(int64_t total, const T* input, const T* rois, T* output,
                                         Geometry<NDIM> geo, at::acc_type<T, true> spatial_scale) {
  using acc_t = at::acc_type<T, true>;
  int64_t volume = 1;
  for (int a = 0; a < NDIM; ++a) {
    volume *= geo.size[a];
  }
  for (int64_t index = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; index < total;
       index += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t bin_index = index % geo.n_bins;
    const int64_t c = (index / geo.n_bins) % geo.channels;
    const int64_t k = index / (geo.n_bins * geo.channels);
    const T* roi = rois + k * (1 + 2 * NDIM);
    const T* data = input + (static_cast<int64_t>(roi[0]) * geo.channels + c) * volume;

    AxisBins<acc_t> bins[NDIM];
    const int64_t per_bin = roi_bins<T, NDIM>(roi, geo, spatial_scale, bins);
    int64_t p[NDIM], g[NDIM], s[NDIM];
    unravel<NDIM>(bin_index, geo.out, p);
    for (int a = 0; a < NDIM; ++a) {
      g[a] = bins[a].grid;
    }
    acc_t sum = 0;
    for (int64_t sample = 0; sample < per_bin; ++sample) {
      unravel<NDIM>(sample, g, s);
      int64_t offset[1 << NDIM];
      acc_t weight[1 << NDIM];
      if (corners<acc_t, NDIM>(bins, p, s, geo.size, offset, weight)) {
        for (int m = 0; m < (1 << NDIM); ++m) {
          sum += weight[m] * static_cast<acc_t>(data[offset[m]]);
        }
      }
    }
    output[index] = static_cast<T>(sum / static_cast<acc_t>(per_bin > 0 ? per_bin : 1));
  }
}

template <typename T, int NDIM>
__global__ void roi_align_backward_kernel(int64_t total, const T* grad, const T* rois,
                                          T* grad_input, Geometry<NDIM> geo,
                                          at::acc_type<T, true> spatial_scale) {
  using acc_t = at::acc_type<T, true>;
  int64_t volume = 1;
  for (int a = 0; a < NDIM; ++a) {
    volume *= geo.size[a];
  }
  for (int64_t index = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; index < total;
       index += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t bin_index = index % geo.n_bins;
    const int64_t c = (index / geo.n_bins) % geo.channels;
    const int64_t k = index / (geo.n_bins * geo.channels);
    const T* roi = rois + k * (1 + 2 * NDIM);
    T* dst = grad_input + (static_cast<int64_t>(roi[0]) * geo.channels + c) * volume;

    AxisBins<acc_t> bins[NDIM];
    const int64_t per_bin = roi_bins<T, NDIM>(roi, geo, spatial_scale, bins);
    if (per_bin == 0) {
      continue;
    }
    const acc_t g_bin = static_cast<acc_t>(grad[index]) / static_cast<acc_t>(per_bin);
    int64_t p[NDIM], g[NDIM], s[NDIM];
    unravel<NDIM>(bin_index, geo.out, p);
    for (int a = 0; a < NDIM; ++a) {
      g[a] = bins[a].grid;
    }
    for (int64_t sample = 0; sample < per_bin; ++sample) {
      unravel<NDIM>(sample, g, s);
      int64_t offset[1 << NDIM];
      acc_t weight[1 << NDIM];
      if (corners<acc_t, NDIM>(bins, p, s, geo.size, offset, weight)) {
        for (int m = 0; m < (1 << NDIM); ++m) {
          gpuAtomicAdd(dst + offset[m], static_cast<T>(weight[m] * g_bin));
        }
      }
    }
  }
}

// Same contract as on the CPU: every batch index must be an integer in [0, batch).
void check_batch_indices(const at::Tensor& rois, int64_t batch) {
  if (rois.size(0) == 0) {
    return;
  }
  const at::Tensor b = rois.select(1, 0);
  const bool bad = ((b < 0) | (b >= batch) | (b != b.floor())).any().item<bool>();
  TORCH_CHECK(!bad, "roi_align: rois batch indices must be integers in [0, ", batch, ")");
}

template <int NDIM>
Geometry<NDIM> make_geometry(at::IntArrayRef spatial, at::IntArrayRef output_size,
                             int64_t channels, int64_t sampling_ratio, bool aligned) {
  Geometry<NDIM> geo;
  geo.n_bins = 1;
  for (int a = 0; a < NDIM; ++a) {
    geo.size[a] = spatial[a];
    geo.out[a] = output_size[a];
    geo.n_bins *= output_size[a];
  }
  geo.channels = channels;
  geo.sampling_ratio = static_cast<int>(sampling_ratio);
  geo.aligned = aligned;
  return geo;
}

int64_t num_blocks(int64_t total) {
  return std::min(at::ceil_div(total, static_cast<int64_t>(kThreads)), kMaxBlocks);
}

}  // namespace

at::Tensor roi_align_forward_cuda(const at::Tensor& input_, const at::Tensor& rois_,
                                  double spatial_scale, at::IntArrayRef output_size,
                                  int64_t sampling_ratio, bool aligned) {
  check_roi_align_forward(input_, rois_, spatial_scale, output_size, sampling_ratio);
  TORCH_CHECK(input_.is_cuda(), "roi_align: input must be a CUDA tensor");
  c10::cuda::CUDAGuard device_guard(input_.device());
  const int ndim = static_cast<int>(input_.dim()) - 2;
  std::vector<int64_t> out_shape{rois_.size(0), input_.size(1)};
  out_shape.insert(out_shape.end(), output_size.begin(), output_size.end());
  at::Tensor output = at::zeros(out_shape, input_.options());
  if (output.numel() == 0) {
    return output;
  }
  check_batch_indices(rois_, input_.size(0));
  const at::Tensor input = input_.contiguous();
  const at::Tensor rois = rois_.contiguous();
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t total = output.numel();
  AT_DISPATCH_FLOATING_TYPES_AND_HALF(input.scalar_type(), "roi_align_forward_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    dispatch_ndim(ndim, "roi_align", [&](auto nd) {
      constexpr int NDIM = decltype(nd)::value;
      roi_align_forward_kernel<scalar_t, NDIM><<<num_blocks(total), kThreads, 0, stream>>>(
          total, input.data_ptr<scalar_t>(), rois.data_ptr<scalar_t>(),
          output.data_ptr<scalar_t>(),
          make_geometry<NDIM>(input.sizes().slice(2), output_size, input.size(1),
                              sampling_ratio, aligned),
          static_cast<acc_t>(spatial_scale));
    });
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return output;
}

at::Tensor roi_align_backward_cuda(const at::Tensor& grad_, const at::Tensor& rois_,
                                   double spatial_scale, at::IntArrayRef output_size,
                                   at::IntArrayRef input_shape, int64_t sampling_ratio,
                                   bool aligned) {
  check_roi_align_backward(grad_, rois_, spatial_scale, output_size, input_shape, sampling_ratio);
  TORCH_CHECK(grad_.is_cuda(), "roi_align backward: grad must be a CUDA tensor");
  c10::cuda::CUDAGuard device_guard(grad_.device());
  const int ndim = static_cast<int>(input_shape.size()) - 2;
  at::Tensor grad_input = at::zeros(input_shape, grad_.options());
  if (grad_.numel() == 0 || grad_input.numel() == 0) {
    return grad_input;
  }
  check_batch_indices(rois_, input_shape[0]);
  const at::Tensor grad = grad_.contiguous();
  const at::Tensor rois = rois_.contiguous();
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t total = grad.numel();
  AT_DISPATCH_FLOATING_TYPES_AND_HALF(grad.scalar_type(), "roi_align_backward_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    dispatch_ndim(ndim, "roi_align", [&](auto nd) {
      constexpr int NDIM = decltype(nd)::value;
      roi_align_backward_kernel<scalar_t, NDIM><<<num_blocks(total), kThreads, 0, stream>>>(
          total, grad.data_ptr<scalar_t>(), rois.data_ptr<scalar_t>(),
          grad_input.data_ptr<scalar_t>(),
          make_geometry<NDIM>(input_shape.slice(2), output_size, input_shape[1],
                              sampling_ratio, aligned),
          static_cast<acc_t>(spatial_scale));
    });
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return grad_input;
}

TORCH_LIBRARY_IMPL(det3d, CUDA, m) {
  m.impl("roi_align", TORCH_FN(roi_align_forward_cuda));
  m.impl("_roi_align_backward", TORCH_FN(roi_align_backward_cuda));
}

}  // namespace det3d
