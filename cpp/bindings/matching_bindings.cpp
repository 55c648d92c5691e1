#include <nanobind/nanobind.h>
namespace nb = nanobind;
namespace deformdetr::bindings {
void register_matching(nb::module_&) {}
}  // namespace deformdetr::bindings
