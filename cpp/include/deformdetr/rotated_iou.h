// Rotated bird's-eye-view (BEV) and 3D box overlaps with the semantics of the KITTI evaluation
// (the devkit's python port: rotate_iou_gpu_eval and d3_box_overlap), computed exactly in double
// precision by convex polygon clipping.
//
// Layouts (the devkit's annotation order, camera coordinates: x right, y down, z forward):
//   BEV box (5 numbers):  (x, z, l, w, ry). The rectangle has extent l along its local x axis and
//                         w along its local z axis; rotating by ry maps a local offset (u, v) to
//                         (x + cos(ry) u + sin(ry) v, z - sin(ry) u + cos(ry) v), as the devkit's
//                         corner construction does (a rotation about the camera's y axis).
//   3D box (7 numbers):   (x, y, z, l, h, w, ry): location is the centre of the bottom face,
//                         the box extends upward from y to y - h (y points down); its BEV
//                         footprint is (x, z, l, w, ry).
//
// Criterion (what the intersection is divided by), as in the devkit:
//   BEV (rotate_iou_gpu_eval(boxes1, boxes2, criterion)):
//     -1: the union  area1 + area2 - inter;
//      0: the area of boxes2[j] (the devkit's kernel passes the query box first: its criterion 0
//         divides by the query (second) box's area);
//      1: the area of boxes1[i];
//      2: nothing (the intersection area itself).
//   3D (d3_box_overlap(boxes1, boxes2, criterion)):
//     -1: the union volume;  0: the volume of boxes1[i];  1: the volume of boxes2[j];
//      2: nothing (the intersection volume itself).
// Areas and volumes come from the dimensions (l * w, l * h * w), as in the devkit.
// The caller validates shapes and that dimensions are non-negative.
#pragma once

#include <cstdint>

namespace deformdetr {

// Area of the intersection of two BEV boxes (5 numbers each).
double rotated_rect_intersection_area(const double* a, const double* b);

// out (n, m) = overlap of every BEV box of boxes1 (n, 5) with every box of boxes2 (m, 5).
void bev_box_iou(const double* boxes1, int64_t n, const double* boxes2, int64_t m, int criterion,
                 double* out, int num_threads);

// out (n, m) = overlap of every 3D box of boxes1 (n, 7) with every box of boxes2 (m, 7).
void box3d_iou(const double* boxes1, int64_t n, const double* boxes2, int64_t m, int criterion,
               double* out, int num_threads);

}  // namespace deformdetr
