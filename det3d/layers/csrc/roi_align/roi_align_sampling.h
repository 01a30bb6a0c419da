#pragma once
// The sampling rule of RoIAlign (Detectron2's), shared by the CPU and CUDA kernels: where the
// samples of a bin lie along one array axis, and how a sample is interpolated at the border.
#include <cmath>
#include <cstdint>

#include "common/host_device.h"

namespace det3d {

// Bins of one RoI along one array axis.
template <typename T>
struct AxisBins {
  T start;       // first bin's start, in feature-map voxels
  T bin;         // bin length
  int64_t grid;  // samples per bin along this axis
};

// roi_lo / roi_hi: the box's coordinates along this axis, in image voxels.
template <typename T>
HOST_DEVICE inline AxisBins<T> axis_bins(T roi_lo, T roi_hi, T spatial_scale, int64_t out,
                                         int64_t sampling_ratio, bool aligned) {
  const T offset = aligned ? T(0.5) : T(0);
  const T start = roi_lo * spatial_scale - offset;
  T len = roi_hi * spatial_scale - offset - start;
  if (!aligned) {
    len = len > T(1) ? len : T(1);  // legacy behaviour: force malformed RoIs to be 1 voxel
  }
  const T bin = len / static_cast<T>(out);
  int64_t grid = sampling_ratio > 0 ? sampling_ratio : static_cast<int64_t>(ceil(bin));
  return {start, bin, grid > 0 ? grid : 0};
}

// Coordinate of sample s of bin p.
template <typename T>
HOST_DEVICE inline T sample_coord(const AxisBins<T>& b, int64_t p, int64_t s) {
  return b.start + static_cast<T>(p) * b.bin +
         (static_cast<T>(s) + T(0.5)) * b.bin / static_cast<T>(b.grid);
}

// Linear interpolation along one axis at coordinate c, with Detectron2's border rule.
template <typename T>
struct AxisSample {
  int64_t lo, hi;
  T w_lo, w_hi;  // both 0 when the sample lies outside [-1, size]
};

template <typename T>
HOST_DEVICE inline AxisSample<T> axis_sample(T c, int64_t size) {
  if (c < T(-1) || c > static_cast<T>(size)) {
    return {0, 0, T(0), T(0)};
  }
  if (c <= 0) {
    c = 0;
  }
  int64_t lo = static_cast<int64_t>(c);
  int64_t hi;
  if (lo >= size - 1) {
    lo = hi = size - 1;
    c = static_cast<T>(lo);
  } else {
    hi = lo + 1;
  }
  const T l = c - static_cast<T>(lo);
  return {lo, hi, T(1) - l, l};
}

}  // namespace det3d
