// The native module deformdetr._C. Each concept registers its own functions.
#include <nanobind/nanobind.h>

#include "deformdetr/parallel.h"
#ifdef DEFORMDETR_WITH_CUDA
#include "deformdetr/cuda_info.h"
#endif

namespace nb = nanobind;

namespace deformdetr::bindings {
void register_ms_deform_attn(nb::module_& m);
void register_matching(nb::module_& m);
void register_boxes(nb::module_& m);
void register_rotated_iou(nb::module_& m);
void register_dropout(nb::module_& m);
}  // namespace deformdetr::bindings

NB_MODULE(_C, m) {
  m.doc() = "deformdetr native core: deformable attention, Hungarian matching, box geometry, dropout";
#ifdef DEFORMDETR_WITH_CUDA
  m.attr("cuda_compiled") = true;
  m.attr("cuda_runtime_version") = deformdetr::cuda_runtime_version();
  m.attr("cuda_minimum_driver_branch") = deformdetr::cuda_minimum_driver_branch();
  m.def("cuda_driver_version", &deformdetr::cuda_driver_version,
        "The newest CUDA version the installed driver supports (12040 for 12.4); 0 without one.");
#else
  // 0: no CUDA runtime in this build, so nothing asked of the driver.
  m.attr("cuda_compiled") = false;
  m.attr("cuda_runtime_version") = 0;
  m.attr("cuda_minimum_driver_branch") = 0;
  m.def("cuda_driver_version", [] { return 0; });
#endif
  m.def("hardware_threads", &deformdetr::hardware_threads);
  deformdetr::bindings::register_ms_deform_attn(m);
  deformdetr::bindings::register_matching(m);
  deformdetr::bindings::register_boxes(m);
  deformdetr::bindings::register_rotated_iou(m);
  deformdetr::bindings::register_dropout(m);
}
