#include "deformdetr/matcher.h"

#include <algorithm>
#include <cmath>

#include "deformdetr/boxes.h"
#include "deformdetr/parallel.h"

namespace deformdetr {

namespace {

// pos - neg of the focal-style class cost for one logit.
inline double focal_class_cost(double logit, double alpha) {
  constexpr double kEps = 1e-8;  // the official constant: keeps log finite at p = 0 or 1
  const double p = 1.0 / (1.0 + std::exp(-logit));
  const double q = 1.0 - p;
  const double neg = (1.0 - alpha) * (p * p) * -std::log(q + kEps);
  const double pos = alpha * (q * q) * -std::log(p + kEps);
  return pos - neg;
}

// An image's cost costs a few exp/log per entry: below this many entries per thread, waking
// threads costs more than it saves.
constexpr int64_t kMinCostEntriesPerThread = 1 << 13;

}  // namespace

template <typename T>
void matching_cost(const T* logits, const T* pred_boxes, int64_t queries, int64_t classes,
                   const int64_t* target_labels, const T* target_boxes, int64_t targets,
                   const MatcherWeights& weights, double* cost) {
  // Targets are few (about 7 in COCO): convert them once, outside the loop over queries.
  std::vector<double> targets_cxcywh((size_t)(4 * targets)), targets_xyxy((size_t)(4 * targets)),
      target_areas((size_t)targets);
  for (int64_t t = 0; t < targets; ++t) {
    double* c = &targets_cxcywh[(size_t)(4 * t)];
    for (int k = 0; k < 4; ++k) c[k] = (double)target_boxes[4 * t + k];
    cxcywh_to_xyxy(c, &targets_xyxy[(size_t)(4 * t)]);
    target_areas[(size_t)t] = xyxy_area(&targets_xyxy[(size_t)(4 * t)]);
  }
  for (int64_t q = 0; q < queries; ++q) {
    double box[4], box_xyxy[4];
    for (int k = 0; k < 4; ++k) box[k] = (double)pred_boxes[4 * q + k];
    cxcywh_to_xyxy(box, box_xyxy);
    const double area = xyxy_area(box_xyxy);
    const T* logit_row = logits + q * classes;
    double* cost_row = cost + q * targets;
    for (int64_t t = 0; t < targets; ++t) {
      const double* target = &targets_cxcywh[(size_t)(4 * t)];
      const double l1 = std::abs(box[0] - target[0]) + std::abs(box[1] - target[1]) +
                        std::abs(box[2] - target[2]) + std::abs(box[3] - target[3]);
      const double cls = focal_class_cost((double)logit_row[target_labels[t]], weights.focal_alpha);
      const double giou = generalized_iou_of_pair(box_xyxy, &targets_xyxy[(size_t)(4 * t)], area,
                                                  target_areas[(size_t)t]);
      cost_row[t] = weights.cost_bbox * l1 + weights.cost_class * cls + weights.cost_giou * -giou;
    }
  }
}

template <typename T>
std::vector<AssignmentStatus> hungarian_match(const HungarianMatchArgs<T>& a, int num_threads) {
  const int64_t B = a.dims.batch, Q = a.dims.queries, C = a.dims.classes;
  const int64_t* target_sizes = a.target_sizes;
  std::vector<AssignmentStatus> status((size_t)B, AssignmentStatus::ok);
  std::vector<int64_t> target_offset((size_t)B + 1, 0), pair_offset((size_t)B + 1, 0);
  for (int64_t b = 0; b < B; ++b) {
    target_offset[(size_t)b + 1] = target_offset[(size_t)b] + target_sizes[b];
    pair_offset[(size_t)b + 1] = pair_offset[(size_t)b] + assignment_size(Q, target_sizes[b]);
  }
  const int64_t entries = Q * target_offset[(size_t)B];
  const int64_t grain =
      std::max<int64_t>(1, B * kMinCostEntriesPerThread / std::max<int64_t>(entries, 1));
  parallel_for(B, grain, num_threads, [&](int64_t begin, int64_t end) {
    AssignmentWorkspace workspace;
    std::vector<double> cost;
    for (int64_t b = begin; b < end; ++b) {
      const int64_t targets = target_sizes[b];
      if (targets == 0) continue;
      const int64_t first = target_offset[(size_t)b];
      cost.resize((size_t)(Q * targets));
      matching_cost(a.logits + b * Q * C, a.pred_boxes + b * Q * 4, Q, C, a.target_labels + first,
                    a.target_boxes + 4 * first, targets, a.weights, cost.data());
      const int64_t out = pair_offset[(size_t)b];
      status[(size_t)b] = linear_sum_assignment(cost.data(), Q, targets, targets, 1, false,
                                                a.query_ind + out, a.target_ind + out, workspace);
    }
  });
  return status;
}

#define DEFORMDETR_INSTANTIATE_MATCHER(T)                                              \
  template void matching_cost<T>(const T*, const T*, int64_t, int64_t, const int64_t*, \
                                 const T*, int64_t, const MatcherWeights&, double*);   \
  template std::vector<AssignmentStatus> hungarian_match<T>(const HungarianMatchArgs<T>&, int);
DEFORMDETR_INSTANTIATE_MATCHER(float)
DEFORMDETR_INSTANTIATE_MATCHER(double)
#undef DEFORMDETR_INSTANTIATE_MATCHER

}  // namespace deformdetr
