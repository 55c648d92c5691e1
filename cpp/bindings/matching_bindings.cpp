// Bindings of the assignment solver and the Hungarian matcher: validation, GIL release, dispatch.
#include <nanobind/stl/vector.h>

#include <optional>
#include <sstream>

#include "deformdetr/boxes.h"
#include "deformdetr/hungarian.h"
#include "deformdetr/matcher.h"
#include "dispatch.h"
#include "validation.h"

namespace deformdetr::bindings {

namespace {

constexpr const char* kCpuOnly =
    "the solver runs on the CPU (copy it with .cpu(); the Python wrappers do this for you)";

// scipy's wording, so that code catching scipy's errors reads the same.
void raise_for_status(AssignmentStatus status, const std::string& which) {
  if (status == AssignmentStatus::invalid_entries)
    fail_value(which + "matrix contains invalid numeric entries (NaN, or -inf when minimizing / "
                       "+inf when maximizing)");
  if (status == AssignmentStatus::infeasible)
    fail_value(which + "cost matrix is infeasible (+inf entries leave no complete assignment)");
}

// A cost matrix: 2-D, float32/float64, on the CPU, any strides.
ArgInfo check_cost(const char* name, const ConstArray& cost) {
  ArgInfo a = ArgInfo::of(name, cost);
  check_cpu(a, kCpuOnly);
  check_rank(a, 2, "(rows, cols)");
  check_dtype(a, CpuFloats());
  return a;
}

// An int64 output vector of `length` elements in host memory.
ArgInfo check_index_output(const char* name, const nb::ndarray<>& array, int64_t length) {
  ArgInfo a = ArgInfo::of(name, array);
  check_cpu(a, kCpuOnly);
  check_dtype(a, {DType::int64});
  check_shape(a, {length});
  check_contiguous(a);
  return a;
}

AssignmentProblem problem_of(const ArgInfo& cost, const nb::ndarray<>& row_ind,
                             const nb::ndarray<>& col_ind, int64_t offset) {
  return AssignmentProblem{cost.data,
                           cost.dtype == DType::float32 ? CostType::float32 : CostType::float64,
                           cost.dim(0),
                           cost.dim(1),
                           cost.strides[0],
                           cost.strides[1],
                           static_cast<int64_t*>(row_ind.data()) + offset,
                           static_cast<int64_t*>(col_ind.data()) + offset};
}

void solve(const ConstArray& cost, bool maximize, nb::ndarray<> row_ind, nb::ndarray<> col_ind) {
  const ArgInfo c = check_cost("cost", cost);
  const int64_t k = assignment_size(c.dim(0), c.dim(1));
  check_index_output("row_ind", row_ind, k);
  check_index_output("col_ind", col_ind, k);
  auto* rows_out = static_cast<int64_t*>(row_ind.data());
  auto* cols_out = static_cast<int64_t*>(col_ind.data());
  AssignmentStatus status;
  {
    // Only large problems are worth the release: a 300x7 solve takes about as long as the
    // release and re-acquire themselves.
    const bool release = c.dim(0) * c.dim(1) >= 4096;
    std::optional<nb::gil_scoped_release> unlocked;
    if (release) unlocked.emplace();
    status = dispatch(c.dtype, CpuFloats(), [&](auto type) {
      using T = typename decltype(type)::type;
      return linear_sum_assignment(static_cast<const T*>(c.data), c.dim(0), c.dim(1),
                                   c.strides[0], c.strides[1], maximize, rows_out, cols_out);
    });
  }
  raise_for_status(status, "");
}

void solve_batch(const std::vector<ConstArray>& costs, bool maximize, nb::ndarray<> row_ind,
                 nb::ndarray<> col_ind, int num_threads) {
  std::vector<std::string> names(costs.size());
  std::vector<AssignmentProblem> problems;
  problems.reserve(costs.size());
  std::vector<ArgInfo> infos;
  int64_t total = 0;
  for (size_t i = 0; i < costs.size(); ++i) {
    names[i] = "costs[" + std::to_string(i) + "]";
    infos.push_back(check_cost(names[i].c_str(), costs[i]));
    total += assignment_size(infos.back().dim(0), infos.back().dim(1));
  }
  check_index_output("row_ind", row_ind, total);
  check_index_output("col_ind", col_ind, total);
  int64_t offset = 0;
  for (const ArgInfo& c : infos) {
    problems.push_back(problem_of(c, row_ind, col_ind, offset));
    offset += assignment_size(c.dim(0), c.dim(1));
  }
  std::vector<AssignmentStatus> status;
  {
    nb::gil_scoped_release release;
    status = batched_linear_sum_assignment(problems, maximize, num_threads);
  }
  for (size_t i = 0; i < status.size(); ++i) raise_for_status(status[i], names[i] + ": ");
}

// ---- The matcher.

struct MatchArgs {
  ArgInfo logits, pred_boxes, target_sizes, target_labels, target_boxes;
  MatcherDims dims;
  int64_t pairs;
};

// Every target label must name a class of the logits: an out-of-range label would read
// another query's logits.
void check_labels(const MatchArgs& a) {
  const auto* sizes = static_cast<const int64_t*>(a.target_sizes.data);
  const auto* labels = static_cast<const int64_t*>(a.target_labels.data);
  int64_t k = 0;
  for (int64_t b = 0; b < a.dims.batch; ++b) {
    for (int64_t t = 0; t < sizes[b]; ++t, ++k) {
      if (labels[k] < 0 || labels[k] >= a.dims.classes) {
        std::ostringstream out;
        out << "target_labels[" << k << "] (image " << b << ", target " << t << ") is "
            << labels[k] << ", out of range for " << a.dims.classes
            << " classes: labels must be in [0, " << a.dims.classes
            << ") to index pred_logits of shape " << a.logits.shape_str();
        fail_value(out.str());
      }
    }
  }
}

// DETR's generalized IoU asserts x1 >= x0 and y1 >= y0; a negative width or NaN is a bug upstream.
template <typename T>
void check_boxes(const ArgInfo& boxes, int64_t count) {
  const int64_t bad = first_degenerate_cxcywh_box(static_cast<const T*>(boxes.data), count);
  if (bad >= 0) {
    const T* box = static_cast<const T*>(boxes.data) + 4 * bad;
    std::ostringstream out;
    out << boxes.name << " has a degenerate box at flat index " << bad << ": (cx, cy, w, h) = ("
        << box[0] << ", " << box[1] << ", " << box[2] << ", " << box[3]
        << "); widths and heights must be >= 0 and not NaN";
    fail_value(out.str());
  }
}

MatchArgs check_match_inputs(const ConstArray& logits, const ConstArray& pred_boxes,
                             const ConstArray& target_sizes, const ConstArray& target_labels,
                             const ConstArray& target_boxes) {
  MatchArgs a{ArgInfo::of("pred_logits", logits),
              ArgInfo::of("pred_boxes", pred_boxes),
              ArgInfo::of("target_sizes", target_sizes),
              ArgInfo::of("target_labels", target_labels),
              ArgInfo::of("target_boxes", target_boxes),
              {},
              0};
  for (const ArgInfo* x : {&a.logits, &a.pred_boxes, &a.target_sizes, &a.target_labels,
                           &a.target_boxes}) {
    check_cpu(*x, kCpuOnly);
    check_contiguous(*x);
  }
  check_rank(a.logits, 3, "(B, Q, C)");
  check_rank(a.pred_boxes, 3, "(B, Q, 4)");
  check_rank(a.target_sizes, 1, "(B,)");
  check_rank(a.target_labels, 1, "(S,)");
  check_rank(a.target_boxes, 2, "(S, 4)");
  check_dtype(a.logits, CpuFloats());
  check_same_dtype(a.pred_boxes, a.logits);
  check_same_dtype(a.target_boxes, a.logits);
  check_dtype(a.target_sizes, {DType::int64});
  check_dtype(a.target_labels, {DType::int64});
  MatcherDims& d = a.dims;
  d.batch = a.logits.dim(0);
  d.queries = a.logits.dim(1);
  d.classes = a.logits.dim(2);
  check_dim(a.pred_boxes, 0, d.batch, "batch B of pred_logits");
  check_dim(a.pred_boxes, 1, d.queries, "queries Q of pred_logits");
  check_dim(a.pred_boxes, 2, 4, "(cx, cy, w, h)");
  check_dim(a.target_sizes, 0, d.batch, "batch B of pred_logits");
  check_dim(a.target_boxes, 1, 4, "(cx, cy, w, h)");
  const auto* sizes = static_cast<const int64_t*>(a.target_sizes.data);
  const int64_t labels = a.target_labels.dim(0);
  int64_t total = 0;
  for (int64_t b = 0; b < d.batch; ++b) {
    if (sizes[b] < 0) fail_value("target_sizes[" + std::to_string(b) + "] is negative");
    // Against the labels given, before adding: a sum that wraps around int64 could match them.
    if (sizes[b] > labels - total)
      fail_value("target_sizes[0.." + std::to_string(b) + "] add up to more than the " +
                 std::to_string(labels) + " target_labels given");
    total += sizes[b];
    a.pairs += assignment_size(d.queries, sizes[b]);
  }
  check_dim(a.target_labels, 0, total, "the sum of target_sizes");
  check_dim(a.target_boxes, 0, total, "the sum of target_sizes");
  if (total > 0 && d.classes < 1)
    fail_value("pred_logits has shape " + a.logits.shape_str() +
               ": there are targets but no classes to score them");
  check_labels(a);
  dispatch(a.logits.dtype, CpuFloats(), [&](auto type) {
    using T = typename decltype(type)::type;
    check_boxes<T>(a.pred_boxes, d.batch * d.queries);
    check_boxes<T>(a.target_boxes, total);
  });
  return a;
}

void match(const ConstArray& logits, const ConstArray& pred_boxes, const ConstArray& target_sizes,
           const ConstArray& target_labels, const ConstArray& target_boxes, double cost_class,
           double cost_bbox, double cost_giou, double focal_alpha, nb::ndarray<> query_ind,
           nb::ndarray<> target_ind, int num_threads) {
  const MatchArgs a =
      check_match_inputs(logits, pred_boxes, target_sizes, target_labels, target_boxes);
  check_index_output("query_ind", query_ind, a.pairs);
  check_index_output("target_ind", target_ind, a.pairs);
  const MatcherWeights weights{cost_class, cost_bbox, cost_giou, focal_alpha};
  std::vector<AssignmentStatus> status;
  {
    nb::gil_scoped_release release;
    status = dispatch(a.logits.dtype, CpuFloats(), [&](auto type) {
      using T = typename decltype(type)::type;
      const HungarianMatchArgs<T> args{a.dims,
                                       static_cast<const T*>(a.logits.data),
                                       static_cast<const T*>(a.pred_boxes.data),
                                       static_cast<const int64_t*>(a.target_sizes.data),
                                       static_cast<const int64_t*>(a.target_labels.data),
                                       static_cast<const T*>(a.target_boxes.data),
                                       weights,
                                       static_cast<int64_t*>(query_ind.data()),
                                       static_cast<int64_t*>(target_ind.data())};
      return hungarian_match(args, num_threads);
    });
  }
  for (size_t b = 0; b < status.size(); ++b)
    raise_for_status(status[b], "image " + std::to_string(b) + ": matching cost ");
}

}  // namespace

void register_matching(nb::module_& m) {
  m.def("linear_sum_assignment", &solve, nb::arg("cost"), nb::arg("maximize"),
        nb::arg("row_ind"), nb::arg("col_ind"),
        "Solves the assignment problem of a 2-D float32/float64 cost matrix; writes the "
        "min(rows, cols) pairs, rows ascending, into the int64 vectors row_ind and col_ind.");
  m.def("batched_linear_sum_assignment", &solve_batch, nb::arg("costs"), nb::arg("maximize"),
        nb::arg("row_ind"), nb::arg("col_ind"), nb::arg("num_threads") = 0,
        "Solves every cost matrix of the list in parallel; the pairs of costs[i] follow those of "
        "costs[0..i-1] in row_ind and col_ind.");
  m.def("hungarian_match", &match, nb::arg("pred_logits"), nb::arg("pred_boxes"),
        nb::arg("target_sizes"), nb::arg("target_labels"), nb::arg("target_boxes"),
        nb::arg("cost_class"), nb::arg("cost_bbox"), nb::arg("cost_giou"),
        nb::arg("focal_alpha"), nb::arg("query_ind"), nb::arg("target_ind"),
        nb::arg("num_threads") = 0,
        "Deformable DETR matching of every image against its own targets (see matcher.h); "
        "writes each image's min(Q, T_b) pairs, queries ascending, image after image.");
}

}  // namespace deformdetr::bindings
