#pragma once
// The one place that turns the runtime number of spatial dims into the NDIM template argument of
// a kernel: dispatch_ndim(ndim, op, [&](auto nd) { constexpr int NDIM = decltype(nd)::value; ... })
// runs the lambda with std::integral_constant<int, 2> or <int, 3>.
#include <c10/util/Exception.h>

#include <type_traits>

namespace det3d {

template <typename Launch>
inline void dispatch_ndim(int64_t ndim, const char* op, Launch&& launch) {
  TORCH_CHECK(ndim == 2 || ndim == 3, op, ": 2 or 3 spatial dims, got ", ndim);
  if (ndim == 2) {
    launch(std::integral_constant<int, 2>());
  } else {
    launch(std::integral_constant<int, 3>());
  }
}

}  // namespace det3d
