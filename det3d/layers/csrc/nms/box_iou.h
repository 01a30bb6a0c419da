#pragma once
// IoU of axis-aligned boxes (lo[0..NDIM), hi[0..NDIM)), shared by the CPU and CUDA NMS.
// A flipped or empty box has volume 0 and IoU 0 with everything.
#include "common/host_device.h"

namespace det3d {

// Length of the overlap of [a_lo, a_hi) and [b_lo, b_hi), 0 when they do not overlap.
template <typename T>
HOST_DEVICE inline T overlap_1d(T a_lo, T a_hi, T b_lo, T b_hi) {
  const T side = (a_hi < b_hi ? a_hi : b_hi) - (a_lo > b_lo ? a_lo : b_lo);
  return side > T(0) ? side : T(0);
}

// Side of [lo, hi), 0 when flipped.
template <typename T>
HOST_DEVICE inline T side_1d(T lo, T hi) {
  return hi > lo ? hi - lo : T(0);
}

template <typename T>
HOST_DEVICE inline T iou_from_volumes(T inter, T vol_a, T vol_b) {
  const T uni = vol_a + vol_b - inter;
  return uni > T(0) ? inter / uni : T(0);
}

// IoU of boxes stored as (lo..., hi...) (2*NDIM values), computed in acc_t.
template <typename acc_t, int NDIM, typename T>
HOST_DEVICE inline acc_t box_iou_nd(const T* a, const T* b) {
  acc_t inter = 1, vol_a = 1, vol_b = 1;
  for (int d = 0; d < NDIM; ++d) {
    const acc_t a_lo = static_cast<acc_t>(a[d]), a_hi = static_cast<acc_t>(a[NDIM + d]);
    const acc_t b_lo = static_cast<acc_t>(b[d]), b_hi = static_cast<acc_t>(b[NDIM + d]);
    inter *= overlap_1d(a_lo, a_hi, b_lo, b_hi);
    vol_a *= side_1d(a_lo, a_hi);
    vol_b *= side_1d(b_lo, b_hi);
  }
  return iou_from_volumes(inter, vol_a, vol_b);
}

}  // namespace det3d
