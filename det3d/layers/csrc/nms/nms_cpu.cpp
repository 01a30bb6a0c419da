// Greedy NMS on the CPU.
//
// Boxes are visited once in score order; IoU is evaluated in double from precomputed volumes,
// with an early exit for boxes that do not overlap.
//
// With iou_threshold t > 0, a box can only be suppressed by a box whose centre is close: per
// axis, IoU > t needs an overlap > t * max(len_a, len_b), hence len_b < len_a / t and
// |centre_a - centre_b| < (1 - t) * max(len_a, len_b). Box centres are bucketed in a grid and a
// kept box only looks at the buckets within that distance (grid_nms). Otherwise (t <= 0), the
// boxes still alive are kept in a compact index list that each kept box filters in place; long
// lists are filtered in chunks on several threads, then packed (list_nms).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "box_iou.h"
#include "nms.h"

namespace det3d {
namespace {

// Chunk of the alive list filtered by one thread. Below kParallelMin alive boxes a kept box filters
// on one thread: one parallel region per kept box costs more than it saves on short lists, and much
// more when the cores are oversubscribed (measured: 20k sparse 3D boxes ran 1.8x slower on 2 busy
// threads with an 8192 threshold).
constexpr int64_t kParallelChunk = 8192;
constexpr int64_t kParallelMin = 4 * kParallelChunk;

template <int NDIM>
struct BoxND {
  double lo[NDIM];
  double hi[NDIM];
  double volume;
};

// IoU with the rule of box_iou.h (shared with the CUDA kernel), from precomputed volumes and
// with an early exit for boxes that do not overlap.
template <int NDIM>
inline double box_iou(const BoxND<NDIM>& a, const BoxND<NDIM>& b) {
  double inter = 1.0;
  for (int d = 0; d < NDIM; ++d) {
    const double w = overlap_1d(a.lo[d], a.hi[d], b.lo[d], b.hi[d]);
    if (!(w > 0)) {
      return 0.0;
    }
    inter *= w;
  }
  return iou_from_volumes(inter, a.volume, b.volume);
}

// Compacts ids[begin, end) in place to those not suppressed by `a`; returns how many remain.
template <int NDIM>
inline int64_t filter_alive(const BoxND<NDIM>& a, const std::vector<BoxND<NDIM>>& boxes,
                            int64_t* ids, int64_t begin, int64_t end, double threshold) {
  int64_t w = begin;
  for (int64_t r = begin; r < end; ++r) {
    const int64_t j = ids[r];
    if (!(box_iou<NDIM>(a, boxes[j]) > threshold)) {
      ids[w++] = j;
    }
  }
  return w - begin;
}

// Greedy NMS over all alive boxes; `boxes` are in decreasing score order. Returns kept positions.
template <int NDIM>
std::vector<int64_t> list_nms(const std::vector<BoxND<NDIM>>& boxes, double threshold) {
  const int64_t n = static_cast<int64_t>(boxes.size());
  std::vector<int64_t> alive(n);
  for (int64_t i = 0; i < n; ++i) {
    alive[i] = i;
  }
  std::vector<int64_t> keep;
  std::vector<int64_t> counts;
  const bool threaded = at::get_num_threads() > 1;
  int64_t n_alive = n;
  while (n_alive > 0) {
    const BoxND<NDIM> a = boxes[alive[0]];
    keep.push_back(alive[0]);
    int64_t* rest = alive.data() + 1;
    const int64_t m = n_alive - 1;
    if (threaded && m >= kParallelMin) {
      const int64_t n_chunks = (m + kParallelChunk - 1) / kParallelChunk;
      counts.assign(n_chunks, 0);
      at::parallel_for(0, n_chunks, 1, [&](int64_t c0, int64_t c1) {
        for (int64_t c = c0; c < c1; ++c) {
          const int64_t begin = c * kParallelChunk;
          const int64_t end = std::min(m, begin + kParallelChunk);
          counts[c] = filter_alive<NDIM>(a, boxes, rest, begin, end, threshold);
        }
      });
      // Pack the surviving prefix of every chunk to the front (sources never precede targets).
      int64_t w = 0;
      for (int64_t c = 0; c < n_chunks; ++c) {
        std::memmove(alive.data() + w, rest + c * kParallelChunk, counts[c] * sizeof(int64_t));
        w += counts[c];
      }
      n_alive = w;
    } else {
      // Shift by one as we filter: writes stay behind reads.
      int64_t w = 0;
      for (int64_t r = 0; r < m; ++r) {
        const int64_t j = rest[r];
        if (!(box_iou<NDIM>(a, boxes[j]) > threshold)) {
          alive[w++] = j;
        }
      }
      n_alive = w;
    }
  }
  return keep;
}

// Greedy NMS visiting, for every kept box, only the grid buckets that can hold boxes it
// suppresses (see the top of the file). Needs threshold > 0 and finite boxes.
template <int NDIM>
std::vector<int64_t> grid_nms(const std::vector<BoxND<NDIM>>& boxes, double threshold) {
  const int64_t n = static_cast<int64_t>(boxes.size());
  double origin[NDIM], top[NDIM], max_len[NDIM], cell[NDIM];
  int64_t n_cells[NDIM];
  for (int d = 0; d < NDIM; ++d) {
    origin[d] = std::numeric_limits<double>::infinity();
    top[d] = -origin[d];
    max_len[d] = 0;
  }
  std::vector<double> centres(n * NDIM);
  for (int64_t i = 0; i < n; ++i) {
    for (int d = 0; d < NDIM; ++d) {
      const double c = 0.5 * (boxes[i].lo[d] + boxes[i].hi[d]);
      centres[i * NDIM + d] = c;
      origin[d] = std::min(origin[d], c);
      top[d] = std::max(top[d], c);
      max_len[d] = std::max(max_len[d], boxes[i].hi[d] - boxes[i].lo[d]);
    }
  }
  // Buckets of about half the largest search radius, at most ~n buckets in all.
  const int64_t per_axis_cap =
      std::max<int64_t>(1, static_cast<int64_t>(std::pow(static_cast<double>(n), 1.0 / NDIM)));
  int64_t total_cells = 1;
  for (int d = 0; d < NDIM; ++d) {
    const double extent = top[d] - origin[d];
    cell[d] = std::max(0.5 * (1 - threshold) * max_len[d], extent / per_axis_cap);
    cell[d] = std::max(cell[d], 1e-12 * (1 + std::abs(origin[d]) + extent));
    n_cells[d] = std::min<int64_t>(per_axis_cap, static_cast<int64_t>(extent / cell[d]) + 1);
    total_cells *= n_cells[d];
  }
  auto cell_of = [&](double c, int d) {
    const int64_t k = static_cast<int64_t>(std::floor((c - origin[d]) / cell[d]));
    return std::min(std::max<int64_t>(k, 0), n_cells[d] - 1);
  };
  std::vector<std::vector<int64_t>> buckets(total_cells);
  for (int64_t i = 0; i < n; ++i) {
    int64_t flat = 0;
    for (int d = 0; d < NDIM; ++d) {
      flat = flat * n_cells[d] + cell_of(centres[i * NDIM + d], d);
    }
    buckets[flat].push_back(i);  // in score order
  }

  std::vector<uint8_t> suppressed(n, 0);
  std::vector<int64_t> keep;
  for (int64_t i = 0; i < n; ++i) {
    if (suppressed[i]) {
      continue;
    }
    keep.push_back(i);
    const BoxND<NDIM>& a = boxes[i];
    if (!(a.volume > 0)) {
      continue;  // IoU 0 with everything
    }
    int64_t first[NDIM], last[NDIM], at[NDIM];
    for (int d = 0; d < NDIM; ++d) {
      const double len = a.hi[d] - a.lo[d];
      const double radius = (1 - threshold) * std::max(len, std::min(len / threshold, max_len[d]));
      const double c = centres[i * NDIM + d];
      const double margin = 1e-9 * (std::abs(c) + radius) + 1e-12;  // rounding safety
      first[d] = at[d] = cell_of(c - radius - margin, d);
      last[d] = cell_of(c + radius + margin, d);
    }
    while (true) {
      int64_t flat = 0;
      for (int d = 0; d < NDIM; ++d) {
        flat = flat * n_cells[d] + at[d];
      }
      // Drop visited and suppressed boxes from the bucket as we go.
      std::vector<int64_t>& bucket = buckets[flat];
      size_t w = 0;
      for (const int64_t j : bucket) {
        if (j <= i || suppressed[j]) {
          continue;
        }
        if (box_iou<NDIM>(a, boxes[j]) > threshold) {
          suppressed[j] = 1;
        } else {
          bucket[w++] = j;
        }
      }
      bucket.resize(w);
      int d = NDIM - 1;
      for (; d >= 0; --d) {
        if (++at[d] <= last[d]) break;
        at[d] = first[d];
      }
      if (d < 0) break;
    }
  }
  return keep;
}

// `sorted` holds the boxes in decreasing score order; returns kept positions in that order.
template <typename scalar_t, int NDIM>
std::vector<int64_t> greedy_nms(const scalar_t* sorted, int64_t n, double threshold) {
  std::vector<BoxND<NDIM>> boxes(n);
  bool finite = true;
  for (int64_t i = 0; i < n; ++i) {
    const scalar_t* b = sorted + i * 2 * NDIM;
    double volume = 1.0;
    for (int d = 0; d < NDIM; ++d) {
      boxes[i].lo[d] = static_cast<double>(b[d]);
      boxes[i].hi[d] = static_cast<double>(b[NDIM + d]);
      volume *= side_1d(boxes[i].lo[d], boxes[i].hi[d]);
      finite = finite && std::isfinite(boxes[i].lo[d]) && std::isfinite(boxes[i].hi[d]);
    }
    boxes[i].volume = volume;
  }
  if (finite && threshold > 0 && threshold < 1) {
    return grid_nms<NDIM>(boxes, threshold);
  }
  return list_nms<NDIM>(boxes, threshold);
}

at::Tensor nms_cpu_impl(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  check_nms_inputs(boxes, scores);
  TORCH_CHECK(boxes.device().is_cpu(), "nms_cpu: boxes must be a CPU tensor");
  const int64_t n = boxes.size(0);
  if (n == 0) {
    return at::empty({0}, boxes.options().dtype(at::kLong));
  }
  const at::Tensor order =
      std::get<1>(scores.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true));
  const at::Tensor sorted = boxes.index_select(0, order).contiguous();
  const int ndim = static_cast<int>(boxes.size(1) / 2);

  std::vector<int64_t> keep;
  AT_DISPATCH_FLOATING_TYPES(boxes.scalar_type(), "nms_cpu", [&] {
    const scalar_t* data = sorted.data_ptr<scalar_t>();
    keep = ndim == 2 ? greedy_nms<scalar_t, 2>(data, n, iou_threshold)
                     : greedy_nms<scalar_t, 3>(data, n, iou_threshold);
  });
  at::Tensor positions = at::empty({static_cast<int64_t>(keep.size())}, order.options());
  std::copy(keep.begin(), keep.end(), positions.data_ptr<int64_t>());
  return order.index_select(0, positions);
}

}  // namespace

at::Tensor nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  return nms_cpu_impl(boxes, scores, iou_threshold);
}

TORCH_LIBRARY_IMPL(det3d, CPU, m) {
  m.impl("nms", TORCH_FN(nms_cpu));
}

}  // namespace det3d
