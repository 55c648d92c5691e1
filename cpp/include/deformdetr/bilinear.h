// Bilinear sampling with zero padding, as grid_sample(align_corners=False, padding_mode="zeros")
// and the official deformable attention kernels do it: the maths of one sampling point, written
// once and compiled for the host (the CPU kernels) and the device (the CUDA kernels), so that the
// CPU tests exercise what the GPU runs.
#pragma once

#include <cmath>
#include <cstdint>

// Device code needs __host__ __device__; to a plain C++ compiler the macro is `static inline`.
// Static: the CPU kernels compile this header once per instruction set (baseline, AVX2), and an
// out-of-line copy shared between those files could run AVX2 code on a CPU without it.
#ifdef __CUDACC__
#define DEFORMDETR_HOST_DEVICE static __host__ __device__ __forceinline__
#else
#define DEFORMDETR_HOST_DEVICE static inline
#endif

namespace deformdetr {

// A sampling point with at least one of its four corners inside its height x width map: the
// pixel (x0, y0) at or left/above of it, and its offset (lx, ly) in [0, 1) from there. I is the
// integer type of pixel indices: 64-bit on the CPU; the CUDA kernels take 32 bits where every
// offset fits (64-bit integer arithmetic is emulated on GPUs).
template <typename A, typename I = int64_t>
struct BilinearPoint {
  I x0, y0, width, height;
  A lx, ly;
};

// The point (loc_x, loc_y), normalised to [0, 1] over the map, at pixel coordinates
// x = loc_x * W - 0.5, y = loc_y * H - 0.5. Returns false, leaving `p` unwritten, when no corner
// is inside: the point lies a whole pixel or more outside the map, or its location is not finite
// (NaN and the infinities fail the comparisons). Such a point contributes nothing to the output
// or to any gradient, its own included.
template <typename A, typename I>
DEFORMDETR_HOST_DEVICE bool bilinear_point(A loc_x, A loc_y, I height, I width,
                                           BilinearPoint<A, I>& p) {
  const A x = loc_x * (A)width - (A)0.5;
  const A y = loc_y * (A)height - (A)0.5;
  if (!(x > (A)-1 && y > (A)-1 && x < (A)width && y < (A)height)) return false;
  const A x0 = std::floor(x), y0 = std::floor(y);
  p = {(I)x0, (I)y0, width, height, x - x0, y - y0};
  return true;
}

// Corner k of a point: 0 (x0, y0), 1 (x0 + 1, y0), 2 (x0, y0 + 1), 3 (x0 + 1, y0 + 1). Outside
// the map it is zero padding: inside is false and its weights are 0.
template <typename A, typename I = int64_t>
struct BilinearCorner {
  bool inside;
  I offset;  // h * W + w in the map; only meaningful where inside
  A weight;
  A dweight_dx;  // d(weight)/dx, x in pixels: for the gradient of the location
  A dweight_dy;
};

template <typename A, typename I>
DEFORMDETR_HOST_DEVICE BilinearCorner<A, I> bilinear_corner(const BilinearPoint<A, I>& p, int k) {
  const bool right = k & 1, below = k >> 1;
  const I x = p.x0 + right, y = p.y0 + below;
  // x0 lies in [-1, W - 1] (the point is inside (-1, W)): only x0 >= 0 and x0 + 1 < W can fail.
  const bool inside = (right ? x < p.width : x >= 0) && (below ? y < p.height : y >= 0);
  const A wx = right ? p.lx : 1 - p.lx, wy = below ? p.ly : 1 - p.ly;
  if (!inside) return {false, 0, (A)0, (A)0, (A)0};
  return {true, y * p.width + x, wy * wx, right ? wy : -wy, below ? wx : -wx};
}

}  // namespace deformdetr
