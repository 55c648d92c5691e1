// Axis-aligned box geometry: format conversions, pairwise IoU and generalized IoU (Rezatofighi et
// al. 2019), with the same formulas and operation order as torchvision's box_iou and DETR's
// generalized_box_iou, so float32 results agree with torch's to the last bit or two.
//
// Layouts: boxes are contiguous rows of 4 numbers, (cx, cy, w, h) or (x0, y0, x1, y1).
// The caller validates shapes; kernels assume valid input.
#pragma once

#include <cstdint>

namespace deformdetr {

// ---- Per-box helpers, shared with the matcher.

// torch.maximum / torch.minimum semantics: NaN in either argument gives NaN.
template <typename T>
inline T max_propagating_nan(T a, T b) {
  return (a < b || b != b) ? b : a;
}
template <typename T>
inline T min_propagating_nan(T a, T b) {
  return (b < a || b != b) ? b : a;
}
// clamp(min=0), which keeps NaN.
template <typename T>
inline T clamp_non_negative(T x) {
  return x < T(0) ? T(0) : x;
}

template <typename T>
inline void cxcywh_to_xyxy(const T* in, T* out) {
  const T cx = in[0], cy = in[1], half_w = T(0.5) * in[2], half_h = T(0.5) * in[3];
  out[0] = cx - half_w;
  out[1] = cy - half_h;
  out[2] = cx + half_w;
  out[3] = cy + half_h;
}

template <typename T>
inline void xyxy_to_cxcywh(const T* in, T* out) {
  const T x0 = in[0], y0 = in[1], x1 = in[2], y1 = in[3];
  out[0] = (x0 + x1) / T(2);
  out[1] = (y0 + y1) / T(2);
  out[2] = x1 - x0;
  out[3] = y1 - y0;
}

template <typename T>
inline T xyxy_area(const T* box) {
  return (box[2] - box[0]) * (box[3] - box[1]);
}

// The intersection and union areas of two xyxy boxes, given their areas.
template <typename T>
inline void intersection_and_union(const T* a, const T* b, T area_a, T area_b, T& inter,
                                   T& uni) {
  const T w = clamp_non_negative(min_propagating_nan(a[2], b[2]) - max_propagating_nan(a[0], b[0]));
  const T h = clamp_non_negative(min_propagating_nan(a[3], b[3]) - max_propagating_nan(a[1], b[1]));
  inter = w * h;
  uni = area_a + area_b - inter;
}

// Generalized IoU of two xyxy boxes: IoU minus the share of their enclosing box that neither covers.
template <typename T>
inline T generalized_iou_of_pair(const T* a, const T* b, T area_a, T area_b) {
  T inter, uni;
  intersection_and_union(a, b, area_a, area_b, inter, uni);
  const T iou = inter / uni;
  const T w = clamp_non_negative(max_propagating_nan(a[2], b[2]) - min_propagating_nan(a[0], b[0]));
  const T h = clamp_non_negative(max_propagating_nan(a[3], b[3]) - min_propagating_nan(a[1], b[1]));
  const T enclosing = w * h;
  return iou - (enclosing - uni) / enclosing;
}

// A box the generalized IoU is not defined for: x1 < x0 or y1 < y0, or NaN (as DETR's assert).
template <typename T>
inline bool is_degenerate_xyxy(const T* box) {
  return !(box[2] >= box[0] && box[3] >= box[1]);
}

// ---- Kernels over arrays (T = float or double), multi-threaded on num_threads (<= 0: all).

template <typename T>
void box_cxcywh_to_xyxy(const T* boxes, int64_t count, T* out, int num_threads);

template <typename T>
void box_xyxy_to_cxcywh(const T* boxes, int64_t count, T* out, int num_threads);

// out (n, m) = IoU of every box of boxes1 (n, 4) with every box of boxes2 (m, 4), xyxy.
template <typename T>
void box_iou(const T* boxes1, int64_t n, const T* boxes2, int64_t m, T* out, int num_threads);

template <typename T>
void generalized_box_iou(const T* boxes1, int64_t n, const T* boxes2, int64_t m, T* out,
                         int num_threads);

// Index of the first degenerate xyxy box (see is_degenerate_xyxy), or -1 when there is none.
template <typename T>
int64_t first_degenerate_xyxy_box(const T* boxes, int64_t count);

// The same for cxcywh boxes, judged after conversion to xyxy as DETR does.
template <typename T>
int64_t first_degenerate_cxcywh_box(const T* boxes, int64_t count);

}  // namespace deformdetr
