// Bindings of the box geometry kernels: validation, GIL release, dispatch by dtype.
#include <sstream>

#include "deformdetr/boxes.h"
#include "dispatch.h"
#include "validation.h"

namespace deformdetr::bindings {

namespace {

constexpr const char* kCpuOnly =
    "the box kernels run on the CPU (deformdetr.ops sends CUDA tensors to the torch reference)";

// A contiguous float32/float64 CPU array of boxes, (..., 4) or exactly (N, 4) when `rows_only`.
ArgInfo check_boxes(const char* name, const ConstArray& boxes, bool rows_only) {
  ArgInfo a = ArgInfo::of(name, boxes);
  check_cpu(a, kCpuOnly);
  if (rows_only) check_rank(a, 2, "(N, 4)");
  if (a.shape.empty() || a.shape.back() != 4)
    fail_value(std::string(name) + " must have a last dimension of 4 box coordinates, got shape " +
               a.shape_str());
  check_dtype(a, CpuFloats());
  check_contiguous(a);
  return a;
}

ArgInfo check_result(const char* name, const nb::ndarray<>& out, const ArgInfo& like,
                     const std::vector<int64_t>& shape) {
  ArgInfo a = ArgInfo::of(name, out);
  check_cpu(a, kCpuOnly);
  check_same_dtype(a, like);
  check_shape(a, shape);
  check_contiguous(a);
  return a;
}

template <typename T>
void check_not_degenerate(const ArgInfo& boxes) {
  const T* data = static_cast<const T*>(boxes.data);
  const int64_t bad = first_degenerate_xyxy_box(data, boxes.dim(0));
  if (bad >= 0) {
    const T* box = data + 4 * bad;
    std::ostringstream out;
    out << boxes.name << "[" << bad << "] = (" << box[0] << ", " << box[1] << ", " << box[2]
        << ", " << box[3] << ") is degenerate: generalized IoU needs x1 >= x0 and y1 >= y0 "
        << "(xyxy boxes)";
    fail_value(out.str());
  }
}

enum class Conversion { cxcywh_to_xyxy, xyxy_to_cxcywh };

template <Conversion conversion>
void convert(const ConstArray& boxes, nb::ndarray<> out, int num_threads) {
  const ArgInfo in = check_boxes("boxes", boxes, false);
  check_result("out", out, in, in.shape);
  const int64_t count = in.numel() / 4;
  nb::gil_scoped_release release;
  dispatch(in.dtype, CpuFloats(), [&](auto type) {
    using T = typename decltype(type)::type;
    const auto kernel = conversion == Conversion::cxcywh_to_xyxy ? box_cxcywh_to_xyxy<T>
                                                                 : box_xyxy_to_cxcywh<T>;
    kernel(static_cast<const T*>(in.data), count, static_cast<T*>(out.data()), num_threads);
  });
}

template <bool generalized>
void pairwise(const ConstArray& boxes1, const ConstArray& boxes2, nb::ndarray<> out,
              int num_threads) {
  const ArgInfo a = check_boxes("boxes1", boxes1, true);
  const ArgInfo b = check_boxes("boxes2", boxes2, true);
  check_same_dtype(b, a);
  check_result("out", out, a, {a.dim(0), b.dim(0)});
  dispatch(a.dtype, CpuFloats(), [&](auto type) {
    using T = typename decltype(type)::type;
    if (generalized) {
      check_not_degenerate<T>(a);
      check_not_degenerate<T>(b);
    }
    nb::gil_scoped_release release;
    const auto kernel = generalized ? generalized_box_iou<T> : box_iou<T>;
    kernel(static_cast<const T*>(a.data), a.dim(0), static_cast<const T*>(b.data), b.dim(0),
           static_cast<T*>(out.data()), num_threads);
  });
}

}  // namespace

void register_boxes(nb::module_& m) {
  m.def("box_cxcywh_to_xyxy", &convert<Conversion::cxcywh_to_xyxy>, nb::arg("boxes"),
        nb::arg("out"), nb::arg("num_threads") = 0,
        "Writes the (x0, y0, x1, y1) form of (..., 4) (cx, cy, w, h) boxes into out.");
  m.def("box_xyxy_to_cxcywh", &convert<Conversion::xyxy_to_cxcywh>, nb::arg("boxes"),
        nb::arg("out"), nb::arg("num_threads") = 0,
        "Writes the (cx, cy, w, h) form of (..., 4) (x0, y0, x1, y1) boxes into out.");
  m.def("box_iou", &pairwise<false>, nb::arg("boxes1"), nb::arg("boxes2"), nb::arg("out"),
        nb::arg("num_threads") = 0,
        "Writes the (N, M) IoU of xyxy boxes1 (N, 4) and boxes2 (M, 4) into out.");
  m.def("generalized_box_iou", &pairwise<true>, nb::arg("boxes1"), nb::arg("boxes2"),
        nb::arg("out"), nb::arg("num_threads") = 0,
        "Writes the (N, M) generalized IoU of xyxy boxes1 (N, 4) and boxes2 (M, 4) into out; "
        "raises ValueError for a degenerate box (x1 < x0 or y1 < y0).");
}

}  // namespace deformdetr::bindings
