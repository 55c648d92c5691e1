// Deformable DETR's Hungarian matcher, per image: the (queries x targets) matching cost of one
// image's predictions against that image's targets only, and its optimal assignment.
//
// The cost of query q and target t is
//   cost_bbox  * |box_q - box_t|_1                            (cxcywh, torch.cdist p=1)
// + cost_class * (pos(p) - neg(p)),  p = sigmoid(logit[q, label_t])   (focal-loss style)
//       pos(p) = alpha (1-p)^2 (-log(p + 1e-8)),  neg(p) = (1-alpha) p^2 (-log(1-p + 1e-8))
// + cost_giou  * -GIoU(xyxy(box_q), xyxy(box_t))
// computed in double precision whatever the input type.
//
// Layouts (contiguous, row-major), with B images, Q queries, C classes, S = sum of the images'
// target counts:
//   logits (B, Q, C), pred_boxes (B, Q, 4) cxcywh,
//   target_sizes (B,), target_labels (S,) in [0, C), target_boxes (S, 4) cxcywh: image b's
//   targets are the target_sizes[b] rows after those of images 0..b-1.
// Outputs: image b's min(Q, T_b) pairs, query indices ascending, after those of the images before.
// The caller validates shapes, label ranges and boxes; kernels assume valid input.
#pragma once

#include <cstdint>
#include <vector>

#include "deformdetr/hungarian.h"

namespace deformdetr {

struct MatcherWeights {
  double cost_class;
  double cost_bbox;
  double cost_giou;
  double focal_alpha;
};

struct MatcherDims {
  int64_t batch;
  int64_t queries;
  int64_t classes;
};

// Writes one image's cost, (queries, targets) row-major.
template <typename T>
void matching_cost(const T* logits, const T* pred_boxes, int64_t queries, int64_t classes,
                   const int64_t* target_labels, const T* target_boxes, int64_t targets,
                   const MatcherWeights& weights, double* cost);

// The inputs of a batch (layouts above) and where its pairs go.
template <typename T>
struct HungarianMatchArgs {
  MatcherDims dims;
  const T* logits;
  const T* pred_boxes;
  const int64_t* target_sizes;
  const int64_t* target_labels;
  const T* target_boxes;
  MatcherWeights weights;
  int64_t* query_ind;
  int64_t* target_ind;
};

// Matches every image on up to num_threads threads (<= 0: all); returns one status per image.
template <typename T>
std::vector<AssignmentStatus> hungarian_match(const HungarianMatchArgs<T>& args, int num_threads);

}  // namespace deformdetr
