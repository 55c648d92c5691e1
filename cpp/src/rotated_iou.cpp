#include "deformdetr/rotated_iou.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "deformdetr/parallel.h"

namespace deformdetr {

namespace {

// Below this many pairs per thread, waking threads costs more than it saves.
constexpr int64_t kMinPairsPerThread = 1 << 11;

struct Point {
  double x, z;
};

// A BEV box prepared once: its corners (counter-clockwise in the x-z plane), centre,
// circumradius, and area from its dimensions.
struct Rect {
  Point corner[4];
  double cx, cz, radius, area;
};

Rect make_rect(const double* box) {
  Rect r;
  r.cx = box[0];
  r.cz = box[1];
  const double half_l = 0.5 * box[2], half_w = 0.5 * box[3];
  const double c = std::cos(box[4]), s = std::sin(box[4]);
  // Counter-clockwise in local (u, v); the map (u, v) -> (c u + s v, -s u + c v) is a rotation,
  // so the order stays counter-clockwise in (x, z).
  const double u[4] = {-half_l, half_l, half_l, -half_l};
  const double v[4] = {-half_w, -half_w, half_w, half_w};
  for (int k = 0; k < 4; ++k)
    r.corner[k] = {r.cx + c * u[k] + s * v[k], r.cz - s * u[k] + c * v[k]};
  r.radius = std::sqrt(half_l * half_l + half_w * half_w);
  r.area = box[2] * box[3];
  return r;
}

inline double cross(const Point& o, const Point& a, const Point& b) {
  return (a.x - o.x) * (b.z - o.z) - (a.z - o.z) * (b.x - o.x);
}

// Area of the intersection of two convex quadrilaterals: Sutherland-Hodgman clipping of a by
// the four half-planes of b, then the shoelace formula. Coordinates are taken relative to a's
// centre so that boxes far from the origin lose no precision.
double intersection_area(const Rect& a, const Rect& b) {
  const double dx = b.cx - a.cx, dz = b.cz - a.cz;
  const double reach = a.radius + b.radius;
  if (!(dx * dx + dz * dz <= reach * reach)) return 0.0;  // too far apart (or NaN)
  Point poly[16], next[16];
  int count = 4;
  for (int k = 0; k < 4; ++k) poly[k] = {a.corner[k].x - a.cx, a.corner[k].z - a.cz};
  Point clip[4];
  for (int k = 0; k < 4; ++k) clip[k] = {b.corner[k].x - a.cx, b.corner[k].z - a.cz};
  for (int e = 0; e < 4 && count > 0; ++e) {
    const Point& p0 = clip[e];
    const Point& p1 = clip[(e + 1) & 3];
    int out = 0;
    for (int k = 0; k < count; ++k) {
      const Point& cur = poly[k];
      const Point& prev = poly[(k + count - 1) % count];
      const double side_cur = cross(p0, p1, cur);
      const double side_prev = cross(p0, p1, prev);
      const bool in_cur = side_cur >= 0, in_prev = side_prev >= 0;
      if (in_cur != in_prev) {
        const double t = side_prev / (side_prev - side_cur);
        next[out++] = {prev.x + t * (cur.x - prev.x), prev.z + t * (cur.z - prev.z)};
      }
      if (in_cur) next[out++] = cur;
    }
    count = out;
    std::copy(next, next + count, poly);
  }
  if (count < 3) return 0.0;
  double twice_area = 0.0;
  for (int k = 0; k < count; ++k) {
    const Point& p = poly[k];
    const Point& q = poly[(k + 1) % count];
    twice_area += p.x * q.z - q.x * p.z;
  }
  return std::abs(0.5 * twice_area);
}

inline double apply_criterion(double inter, double size1, double size2, int criterion) {
  switch (criterion) {
    case -1:
      return inter / (size1 + size2 - inter);
    case 0:
      return inter / size1;
    case 1:
      return inter / size2;
    default:
      return inter;
  }
}

std::vector<Rect> make_rects(const double* boxes, int64_t count, int64_t stride,
                             const int* bev_axes) {
  std::vector<Rect> rects((size_t)count);
  for (int64_t i = 0; i < count; ++i) {
    const double* box = boxes + stride * i;
    const double bev[5] = {box[bev_axes[0]], box[bev_axes[1]], box[bev_axes[2]],
                           box[bev_axes[3]], box[bev_axes[4]]};
    rects[(size_t)i] = make_rect(bev);
  }
  return rects;
}

int64_t rows_per_chunk(int64_t m) {
  return std::max<int64_t>(1, kMinPairsPerThread / std::max<int64_t>(m, 1));
}

}  // namespace

double rotated_rect_intersection_area(const double* a, const double* b) {
  return intersection_area(make_rect(a), make_rect(b));
}

void bev_box_iou(const double* boxes1, int64_t n, const double* boxes2, int64_t m, int criterion,
                 double* out, int num_threads) {
  static const int kAxes[5] = {0, 1, 2, 3, 4};
  const std::vector<Rect> r1 = make_rects(boxes1, n, 5, kAxes);
  const std::vector<Rect> r2 = make_rects(boxes2, m, 5, kAxes);
  parallel_for(n, rows_per_chunk(m), num_threads, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const Rect& a = r1[(size_t)i];
      double* row = out + i * m;
      for (int64_t j = 0; j < m; ++j) {
        const Rect& b = r2[(size_t)j];
        // The devkit's kernel passes the second box first: criterion 0 divides by its area.
        row[j] = apply_criterion(intersection_area(a, b), b.area, a.area, criterion);
      }
    }
  });
}

void box3d_iou(const double* boxes1, int64_t n, const double* boxes2, int64_t m, int criterion,
               double* out, int num_threads) {
  static const int kAxes[5] = {0, 2, 3, 5, 6};  // (x, z, l, w, ry)
  const std::vector<Rect> r1 = make_rects(boxes1, n, 7, kAxes);
  const std::vector<Rect> r2 = make_rects(boxes2, m, 7, kAxes);
  parallel_for(n, rows_per_chunk(m), num_threads, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const double* a = boxes1 + 7 * i;
      const double volume_a = a[3] * a[4] * a[5];
      double* row = out + i * m;
      for (int64_t j = 0; j < m; ++j) {
        const double* b = boxes2 + 7 * j;
        double value = 0.0;
        // Vertical overlap: each box spans [y - h, y] (y points down, y is the bottom).
        const double overlap_y = std::min(a[1], b[1]) - std::max(a[1] - a[4], b[1] - b[4]);
        if (overlap_y > 0) {
          const double bev_inter = intersection_area(r1[(size_t)i], r2[(size_t)j]);
          if (bev_inter > 0) {
            const double volume_b = b[3] * b[4] * b[5];
            value = apply_criterion(overlap_y * bev_inter, volume_a, volume_b, criterion);
          }
        }
        row[j] = value;
      }
    }
  });
}

}  // namespace deformdetr
