// Schemas of det3d's compiled ops, and the module init that makes `import det3d._C` work.
// Kernels register themselves per device in nms/ and roi_align/ (TORCH_LIBRARY_IMPL).
#include <Python.h>

#include <torch/library.h>

// A plain (pybind-free) module: importing it runs the static registrations below and in the
// kernel files; the ops are then reached through torch.ops.det3d.*.
static struct PyModuleDef det3d_c_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};

PyMODINIT_FUNC PyInit__C(void) {
  return PyModule_Create(&det3d_c_module);
}

TORCH_LIBRARY(det3d, m) {
  m.def("nms(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor");
  m.def(
      "roi_align(Tensor input, Tensor rois, float spatial_scale, int[] output_size, "
      "int sampling_ratio, bool aligned) -> Tensor");
  m.def(
      "_roi_align_backward(Tensor grad, Tensor rois, float spatial_scale, int[] output_size, "
      "int[] input_shape, int sampling_ratio, bool aligned) -> Tensor");
}
