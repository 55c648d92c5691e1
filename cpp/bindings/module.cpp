// The native module deformdetr._C. Each concept registers its own functions.
#include <nanobind/nanobind.h>

#include "deformdetr/parallel.h"

namespace nb = nanobind;

namespace deformdetr::bindings {
void register_ms_deform_attn(nb::module_& m);
void register_matching(nb::module_& m);
void register_boxes(nb::module_& m);
void register_rotated_iou(nb::module_& m);
}  // namespace deformdetr::bindings

NB_MODULE(_C, m) {
  m.doc() = "deformdetr native core: deformable attention, Hungarian matching, box geometry";
#ifdef DEFORMDETR_WITH_CUDA
  m.attr("cuda_compiled") = true;
#else
  m.attr("cuda_compiled") = false;
#endif
  m.def("hardware_threads", &deformdetr::hardware_threads);
  deformdetr::bindings::register_ms_deform_attn(m);
  deformdetr::bindings::register_matching(m);
  deformdetr::bindings::register_boxes(m);
  deformdetr::bindings::register_rotated_iou(m);
}
