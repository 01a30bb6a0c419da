// NMS on the GPU: the bitmask-block scheme, for 2D and 3D boxes.
//
// Boxes are sorted by score; block (row, col) compares 64 row boxes with 64 column boxes held in
// shared memory and writes, per row box, a 64-bit mask of the column boxes it suppresses. The
// host then walks the boxes in score order and ORs in the masks of the boxes it keeps.
#include <ATen/AccumulateType.h>
#include <ATen/ceil_div.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <vector>

#include "box_iou.h"
#include "common/dispatch_ndim.h"
#include "nms.h"

namespace det3d {
namespace {

constexpr int kBlock = sizeof(unsigned long long) * 8;

template <typename T, int NDIM>
__device__ inline bool iou_above(const T* a, const T* b, at::acc_type<T, true> threshold) {
  return box_iou_nd<at::acc_type<T, true>, NDIM>(a, b) > threshold;  // box_iou.h, as on the CPU
}

template <typename T, int NDIM>
__global__ void nms_mask_kernel(int64_t n, at::acc_type<T, true> threshold, const T* boxes,
                                unsigned long long* mask) {
  const int64_t row = blockIdx.y, col = blockIdx.x;
  if (row > col) {
    return;  // a box is only suppressed by better-scored (earlier) boxes
  }
  const int64_t n_blocks = gridDim.x;
  const int row_size = static_cast<int>(min(n - row * kBlock, static_cast<int64_t>(kBlock)));
  const int col_size = static_cast<int>(min(n - col * kBlock, static_cast<int64_t>(kBlock)));

  __shared__ T col_boxes[kBlock * 2 * NDIM];
  if (threadIdx.x < col_size) {
    for (int e = 0; e < 2 * NDIM; ++e) {
      col_boxes[threadIdx.x * 2 * NDIM + e] = boxes[(col * kBlock + threadIdx.x) * 2 * NDIM + e];
    }
  }
  __syncthreads();

  if (threadIdx.x < row_size) {
    const int64_t i = row * kBlock + threadIdx.x;
    const T* box = boxes + i * 2 * NDIM;
    unsigned long long bits = 0;
    for (int j = (row == col) ? threadIdx.x + 1 : 0; j < col_size; ++j) {
      if (iou_above<T, NDIM>(box, col_boxes + j * 2 * NDIM, threshold)) {
        bits |= 1ULL << j;
      }
    }
    mask[i * n_blocks + col] = bits;
  }
}

}  // namespace

at::Tensor nms_cuda(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  check_nms_inputs(boxes, scores);
  TORCH_CHECK(boxes.is_cuda(), "nms_cuda: boxes must be a CUDA tensor");
  const int64_t n = boxes.size(0);
  if (n == 0) {
    return at::empty({0}, boxes.options().dtype(at::kLong));
  }
  c10::cuda::CUDAGuard device_guard(boxes.device());
  const at::Tensor order =
      std::get<1>(scores.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true));
  const at::Tensor sorted = boxes.index_select(0, order).contiguous();
  const int ndim = static_cast<int>(boxes.size(1) / 2);
  const int64_t n_blocks = at::ceil_div(n, static_cast<int64_t>(kBlock));
  at::Tensor mask = at::empty({n, n_blocks}, boxes.options().dtype(at::kLong));

  const dim3 blocks(n_blocks, n_blocks);
  const dim3 threads(kBlock);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND_HALF(boxes.scalar_type(), "nms_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    auto* out = reinterpret_cast<unsigned long long*>(mask.data_ptr<int64_t>());
    dispatch_ndim(ndim, "nms", [&](auto nd) {
      constexpr int NDIM = decltype(nd)::value;
      nms_mask_kernel<scalar_t, NDIM><<<blocks, threads, 0, stream>>>(
          n, static_cast<acc_t>(iou_threshold), sorted.data_ptr<scalar_t>(), out);
    });
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  const at::Tensor mask_cpu = mask.cpu();
  const auto* mask_data = reinterpret_cast<const unsigned long long*>(mask_cpu.data_ptr<int64_t>());
  std::vector<unsigned long long> removed(n_blocks, 0);
  at::Tensor keep = at::empty({n}, at::TensorOptions().dtype(at::kLong));
  int64_t* keep_data = keep.data_ptr<int64_t>();
  int64_t n_keep = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t block = i / kBlock, bit = i % kBlock;
    if (!(removed[block] & (1ULL << bit))) {
      keep_data[n_keep++] = i;
      const unsigned long long* row = mask_data + i * n_blocks;
      for (int64_t j = block; j < n_blocks; ++j) {
        removed[j] |= row[j];
      }
    }
  }
  return order.index_select(0, keep.narrow(0, 0, n_keep).to(order.device(), /*non_blocking=*/true));
}

TORCH_LIBRARY_IMPL(det3d, CUDA, m) {
  m.impl("nms", TORCH_FN(nms_cuda));
}

}  // namespace det3d
