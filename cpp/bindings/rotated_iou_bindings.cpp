// Bindings of the rotated BEV / 3D box overlaps: validation, GIL release.
#include <cmath>
#include <sstream>
#include <vector>

#include "deformdetr/rotated_iou.h"
#include "validation.h"

namespace deformdetr::bindings {

namespace {

constexpr const char* kCpuOnly = "the rotated box overlaps run on the CPU (call .cpu() first)";

// Above this many pairs the GIL is released (and the pool may split the work).
constexpr int64_t kReleaseGilPairs = 1024;

using Kernel = void (*)(const double*, int64_t, const double*, int64_t, int, double*, int);

// A kind of box: its overlap kernel, its row of `width` numbers (`layout` names them) and the
// columns that hold its dimensions.
struct BoxKind {
  Kernel kernel;
  int64_t width;
  const char* layout;
  std::vector<int> dim_columns;
};

// A contiguous float64 CPU array (N, width) whose dimension columns are non-negative numbers.
ArgInfo check_boxes(const char* name, const ConstArray& boxes, const BoxKind& kind) {
  ArgInfo a = ArgInfo::of(name, boxes);
  check_cpu(a, kCpuOnly);
  check_rank(a, 2, kind.layout);
  check_dim(a, 1, kind.width, kind.layout);
  check_dtype(a, {DType::float64});
  check_contiguous(a);
  const double* data = static_cast<const double*>(a.data);
  for (int64_t i = 0; i < a.dim(0); ++i) {
    for (int c : kind.dim_columns) {
      const double value = data[i * kind.width + c];
      if (!(value >= 0)) {  // negative or NaN
        std::ostringstream out;
        out << name << "[" << i << "] " << kind.layout << " has dimension " << value
            << " in column " << c << "; box dimensions must be non-negative numbers";
        fail_value(out.str());
      }
    }
  }
  return a;
}

void check_criterion(int criterion) {
  if (criterion < -1 || criterion > 2)
    fail_value("criterion must be -1 (union), 0, 1 or 2 (intersection only), got " +
               std::to_string(criterion));
}

void pairwise(const ConstArray& boxes1, const ConstArray& boxes2, nb::ndarray<> out,
              int criterion, int num_threads, const BoxKind& kind) {
  const ArgInfo a = check_boxes("boxes1", boxes1, kind);
  const ArgInfo b = check_boxes("boxes2", boxes2, kind);
  check_criterion(criterion);
  ArgInfo o = ArgInfo::of("out", out);
  check_cpu(o, kCpuOnly);
  check_dtype(o, {DType::float64});
  check_shape(o, {a.dim(0), b.dim(0)});
  check_contiguous(o);
  const double* p1 = static_cast<const double*>(a.data);
  const double* p2 = static_cast<const double*>(b.data);
  double* po = static_cast<double*>(out.data());
  if (a.dim(0) * b.dim(0) >= kReleaseGilPairs) {
    nb::gil_scoped_release release;
    kind.kernel(p1, a.dim(0), p2, b.dim(0), criterion, po, num_threads);
  } else {
    kind.kernel(p1, a.dim(0), p2, b.dim(0), criterion, po, 1);
  }
}

void def_pairwise(nb::module_& m, const char* name, BoxKind kind, const char* doc) {
  m.def(
      name,
      [kind](const ConstArray& boxes1, const ConstArray& boxes2, nb::ndarray<> out, int criterion,
             int num_threads) { pairwise(boxes1, boxes2, out, criterion, num_threads, kind); },
      nb::arg("boxes1"), nb::arg("boxes2"), nb::arg("out"), nb::arg("criterion") = -1,
      nb::arg("num_threads") = 0, doc);
}

}  // namespace

void register_rotated_iou(nb::module_& m) {
  def_pairwise(
      m, "bev_box_iou", {&deformdetr::bev_box_iou, 5, "(N, 5) (x, z, l, w, ry)", {2, 3}},
      "Writes the (N, M) rotated bird's-eye-view overlap of float64 boxes1 (N, 5) and boxes2 "
      "(M, 5), (x, z, l, w, ry), into out, as the KITTI devkit's rotate_iou_gpu_eval: criterion "
      "-1 divides the intersection by the union, 0 by the area of boxes2[j], 1 by the area of "
      "boxes1[i], 2 by nothing.");
  def_pairwise(
      m, "box3d_iou", {&deformdetr::box3d_iou, 7, "(N, 7) (x, y, z, l, h, w, ry)", {3, 4, 5}},
      "Writes the (N, M) 3D overlap of float64 KITTI camera boxes boxes1 (N, 7) and boxes2 "
      "(M, 7), (x, y, z, l, h, w, ry) with y the bottom and the box spanning [y - h, y], into "
      "out, as the KITTI devkit's d3_box_overlap: criterion -1 divides the intersection volume by "
      "the union, 0 by the volume of boxes1[i], 1 by that of boxes2[j], 2 by nothing.");
}

}  // namespace deformdetr::bindings
