#include "deformdetr/boxes.h"

#include <algorithm>
#include <vector>

#include "deformdetr/parallel.h"

namespace deformdetr {

namespace {

// Below this many output values per thread, waking threads costs more than it saves.
constexpr int64_t kMinPairsPerThread = 1 << 14;

int64_t rows_per_chunk(int64_t row_length) {
  return std::max<int64_t>(1, kMinPairsPerThread / std::max<int64_t>(row_length, 1));
}

template <typename T, typename Convert>
void convert_boxes(const T* boxes, int64_t count, T* out, int num_threads, Convert convert) {
  parallel_for(count, rows_per_chunk(4), num_threads, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) convert(boxes + 4 * i, out + 4 * i);
  });
}

// Fills out (n, m) with pair(box1, box2, area1, area2); the areas of boxes2 are computed once.
template <typename T, typename PairFn>
void pairwise(const T* boxes1, int64_t n, const T* boxes2, int64_t m, T* out, int num_threads,
              PairFn pair) {
  std::vector<T> areas2((size_t)m);
  for (int64_t j = 0; j < m; ++j) areas2[(size_t)j] = xyxy_area(boxes2 + 4 * j);
  parallel_for(n, rows_per_chunk(m), num_threads, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const T* a = boxes1 + 4 * i;
      const T area_a = xyxy_area(a);
      T* row = out + i * m;
      for (int64_t j = 0; j < m; ++j) row[j] = pair(a, boxes2 + 4 * j, area_a, areas2[(size_t)j]);
    }
  });
}

}  // namespace

template <typename T>
void box_cxcywh_to_xyxy(const T* boxes, int64_t count, T* out, int num_threads) {
  convert_boxes(boxes, count, out, num_threads, cxcywh_to_xyxy<T>);
}

template <typename T>
void box_xyxy_to_cxcywh(const T* boxes, int64_t count, T* out, int num_threads) {
  convert_boxes(boxes, count, out, num_threads, xyxy_to_cxcywh<T>);
}

template <typename T>
void box_iou(const T* boxes1, int64_t n, const T* boxes2, int64_t m, T* out, int num_threads) {
  pairwise(boxes1, n, boxes2, m, out, num_threads, [](const T* a, const T* b, T area_a, T area_b) {
    T inter, uni;
    intersection_and_union(a, b, area_a, area_b, inter, uni);
    return inter / uni;
  });
}

template <typename T>
void generalized_box_iou(const T* boxes1, int64_t n, const T* boxes2, int64_t m, T* out,
                         int num_threads) {
  pairwise(boxes1, n, boxes2, m, out, num_threads, generalized_iou_of_pair<T>);
}

template <typename T>
int64_t first_degenerate_xyxy_box(const T* boxes, int64_t count) {
  for (int64_t i = 0; i < count; ++i)
    if (is_degenerate_xyxy(boxes + 4 * i)) return i;
  return -1;
}

template <typename T>
int64_t first_degenerate_cxcywh_box(const T* boxes, int64_t count) {
  for (int64_t i = 0; i < count; ++i) {
    T xyxy[4];
    cxcywh_to_xyxy(boxes + 4 * i, xyxy);
    if (is_degenerate_xyxy(xyxy)) return i;
  }
  return -1;
}

#define DEFORMDETR_INSTANTIATE_BOXES(T)                                                    \
  template void box_cxcywh_to_xyxy<T>(const T*, int64_t, T*, int);                         \
  template void box_xyxy_to_cxcywh<T>(const T*, int64_t, T*, int);                         \
  template void box_iou<T>(const T*, int64_t, const T*, int64_t, T*, int);                 \
  template void generalized_box_iou<T>(const T*, int64_t, const T*, int64_t, T*, int);     \
  template int64_t first_degenerate_xyxy_box<T>(const T*, int64_t);                        \
  template int64_t first_degenerate_cxcywh_box<T>(const T*, int64_t);
DEFORMDETR_INSTANTIATE_BOXES(float)
DEFORMDETR_INSTANTIATE_BOXES(double)
#undef DEFORMDETR_INSTANTIATE_BOXES

}  // namespace deformdetr
