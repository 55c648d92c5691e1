// CUDA kernels of multi-scale deformable attention.
//
// One warp serves one (n, q, m) triple: lanes stride over the D channels, so each corner read of
// value is one coalesced row of D contiguous elements. All arithmetic is in accum_t (float for
// 16-bit inputs). The backward pass scatters into grad_value with atomics in accum_t and reduces
// the location/weight gradients over channels with warp shuffles. The sampling maths is
// deformdetr/bilinear.h, the code the CPU kernels run.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <type_traits>

#include "cuda_check.h"
#include "deformdetr/bilinear.h"
#include "deformdetr/ms_deform_attn.h"

namespace deformdetr {

namespace {

constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = 8;

// The CUDA type of each element type of the arguments (the 16-bit ones are plain storage there).
template <typename S>
using CudaType = typename std::conditional<
    std::is_same<S, Float16>::value, __half,
    typename std::conditional<std::is_same<S, BFloat16>::value, __nv_bfloat16, S>::type>::type;
static_assert(sizeof(Float16) == sizeof(__half) && sizeof(BFloat16) == sizeof(__nv_bfloat16),
              "the storage types must have CUDA's layouts");

template <typename S>
__device__ __forceinline__ const CudaType<S>* on_device(const S* p) {
  return reinterpret_cast<const CudaType<S>*>(p);
}
template <typename S>
__device__ __forceinline__ CudaType<S>* on_device(S* p) {
  return reinterpret_cast<CudaType<S>*>(p);
}

// One (n, q, m) triple, the unit of work of a warp: its index (n * Lq + q) * M + m and where its
// sampling locations and attention weights start.
template <typename T>
struct HeadRow {
  int64_t index, n, m;
  const T* locations;
  const T* weights;
};

// Calls fn(HeadRow) for each head row of this warp, grid-striding; the whole warp shares one
// row, so shuffles inside fn always see 32 active lanes.
template <typename S, typename Fn>
__device__ __forceinline__ void for_each_head_row_of_warp(const MsDeformAttnInputs<S>& a,
                                                          Fn&& fn) {
  const MsDeformAttnDims& d = a.dims;
  const int64_t rows = d.batch * d.queries * d.heads, samples = d.levels * d.points;
  for (int64_t row = (int64_t)blockIdx.x * kWarpsPerBlock + threadIdx.x / kWarp; row < rows;
       row += (int64_t)gridDim.x * kWarpsPerBlock)
    fn(HeadRow<CudaType<S>>{row, row / (d.heads * d.queries), row % d.heads,
                            on_device(a.sampling_locations) + row * samples * 2,
                            on_device(a.attention_weights) + row * samples});
}

// Level l as one head row sees it: its size and the offset in value of its position 0 for the
// row's (n, m), or -1 for a level whose (start, H, W) would reach outside value. Such a level is
// skipped rather than read out of bounds: the host cannot check device-side spatial shapes
// without a synchronisation. Written so that no product can overflow: H = W = 2^32 must not
// pass as H * W = 0.
struct Level {
  int64_t height, width, offset;
};

template <typename S, typename T>
__device__ __forceinline__ Level level_of(const MsDeformAttnInputs<S>& a, int64_t l,
                                          const HeadRow<T>& row) {
  const MsDeformAttnDims& d = a.dims;
  const int64_t h = a.spatial_shapes[2 * l], w = a.spatial_shapes[2 * l + 1];
  const int64_t start = a.level_start_index[l];
  const bool inside = h > 0 && w > 0 && start >= 0 && start <= d.value_len &&
                      w <= (d.value_len - start) / h;
  return {h, w, inside ? ((row.n * d.value_len + start) * d.heads + row.m) * d.channels : -1};
}

// Sample i (= l * P + p) of a head row as a point of its level's map, in the arithmetic type A;
// false when no corner is inside the map (see deformdetr/bilinear.h).
template <typename A, typename T>
__device__ __forceinline__ bool point_of(const HeadRow<T>& row, int64_t i, const Level& level,
                                         BilinearPoint<A>& point) {
  return bilinear_point<A>(static_cast<A>(row.locations[2 * i]),
                           static_cast<A>(row.locations[2 * i + 1]), level.height, level.width,
                           point);
}

template <typename S>
__global__ void forward_kernel(MsDeformAttnForwardArgs<S> a) {
  using T = CudaType<S>;
  using A = typename GradValueAccum<S>::type;  // all arithmetic: float for 16-bit inputs
  const int64_t L = a.dims.levels, P = a.dims.points, D = a.dims.channels;
  const int64_t position_stride = a.dims.heads * D;
  const int lane = threadIdx.x % kWarp;
  for_each_head_row_of_warp(a, [&](const HeadRow<T>& row) {
    T* out = on_device(a.output) + row.index * D;
    for (int64_t d0 = 0; d0 < D; d0 += kWarp) {
      const int64_t d = d0 + lane;
      if (d >= D) break;  // no shuffles here: idle lanes may leave
      A acc = 0;
      for (int64_t l = 0; l < L; ++l) {
        const Level level = level_of(a, l, row);
        if (level.offset < 0) continue;
        const T* level_value = on_device(a.value) + level.offset + d;
        for (int64_t i = l * P; i < (l + 1) * P; ++i) {
          BilinearPoint<A> point;
          if (!point_of(row, i, level, point)) continue;
          const A w = static_cast<A>(row.weights[i]);
#pragma unroll
          for (int k = 0; k < 4; ++k) {
            const BilinearCorner<A> c = bilinear_corner(point, k);
            if (c.inside)
              acc += w * c.weight * static_cast<A>(level_value[c.offset * position_stride]);
          }
        }
      }
      out[d] = static_cast<T>(acc);
    }
  });
}

template <typename A>
__device__ __forceinline__ A warp_sum(A x) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2)
    x += __shfl_down_sync(0xffffffffu, x, offset);
  return x;
}

template <typename S>
__global__ void backward_kernel(MsDeformAttnBackwardArgs<S> a) {
  using T = CudaType<S>;
  using A = typename GradValueAccum<S>::type;  // all arithmetic: float for 16-bit inputs
  const int64_t L = a.dims.levels, P = a.dims.points, D = a.dims.channels;
  const int64_t position_stride = a.dims.heads * D;
  const int lane = threadIdx.x % kWarp;
  for_each_head_row_of_warp(a, [&](const HeadRow<T>& row) {
    const T* go = on_device(a.grad_output) + row.index * D;
    T* grad_locations = on_device(a.grad_sampling_locations) + row.index * L * P * 2;
    T* grad_weights = on_device(a.grad_attention_weights) + row.index * L * P;
    for (int64_t l = 0; l < L; ++l) {
      const Level level = level_of(a, l, row);
      for (int64_t i = l * P; i < (l + 1) * P; ++i) {
        BilinearPoint<A> point;
        // Warp-uniform: every lane reads the same location.
        if (level.offset < 0 || !point_of(row, i, level, point)) {
          // No corner inside: zero gradients, whatever the attention weight (inf * 0 is NaN).
          if (lane == 0) grad_weights[i] = grad_locations[2 * i] = grad_locations[2 * i + 1] = T(0);
          continue;
        }
        BilinearCorner<A> corners[4];
#pragma unroll
        for (int k = 0; k < 4; ++k) corners[k] = bilinear_corner(point, k);
        const A w = static_cast<A>(row.weights[i]);
        A grad_weight = 0, grad_x = 0, grad_y = 0;
        for (int64_t d = lane; d < D; d += kWarp) {
          const A g = static_cast<A>(go[d]);
#pragma unroll
          for (int k = 0; k < 4; ++k) {
            const BilinearCorner<A>& c = corners[k];
            if (!c.inside) continue;
            const int64_t at = level.offset + c.offset * position_stride + d;
            const A dot = g * static_cast<A>(on_device(a.value)[at]);
            grad_weight += c.weight * dot;
            grad_x += c.dweight_dx * dot;
            grad_y += c.dweight_dy * dot;
            atomicAdd(a.grad_value + at, w * c.weight * g);
          }
        }
        grad_weight = warp_sum(grad_weight);
        grad_x = warp_sum(grad_x);
        grad_y = warp_sum(grad_y);
        if (lane == 0) {
          grad_weights[i] = static_cast<T>(grad_weight);
          grad_locations[2 * i] = static_cast<T>(w * grad_x * (A)level.width);
          grad_locations[2 * i + 1] = static_cast<T>(w * grad_y * (A)level.height);
        }
      }
    }
  });
}

// Enough blocks to fill any current GPU many times over; larger problems grid-stride.
constexpr int64_t kMaxBlocks = 1 << 20;

int64_t num_blocks(const MsDeformAttnDims& d) {
  const int64_t rows = d.batch * d.queries * d.heads;
  return std::min<int64_t>((rows + kWarpsPerBlock - 1) / kWarpsPerBlock, kMaxBlocks);
}

}  // namespace

template <typename T>
void ms_deform_attn_cuda(const MsDeformAttnForwardArgs<T>& args, int device, void* stream) {
  CudaDeviceGuard guard(device);
  const int64_t blocks = num_blocks(args.dims);
  if (blocks == 0) return;
  forward_kernel<T><<<(unsigned)blocks, kWarp * kWarpsPerBlock, 0,
                      static_cast<cudaStream_t>(stream)>>>(args);
  cuda_check(cudaGetLastError(), "forward kernel launch");
}

template <typename T>
void ms_deform_attn_cuda(const MsDeformAttnBackwardArgs<T>& args, int device, void* stream) {
  CudaDeviceGuard guard(device);
  auto s = static_cast<cudaStream_t>(stream);
  const MsDeformAttnDims& d = args.dims;
  // An empty grad_value may have no storage at all: nothing to clear, no null pointer to pass.
  const size_t bytes = sizeof(*args.grad_value) * d.batch * d.value_len * d.heads * d.channels;
  if (bytes > 0) cuda_check(cudaMemsetAsync(args.grad_value, 0, bytes, s), "memset of grad_value");
  const int64_t blocks = num_blocks(d);
  if (blocks == 0) return;
  backward_kernel<T><<<(unsigned)blocks, kWarp * kWarpsPerBlock, 0, s>>>(args);
  cuda_check(cudaGetLastError(), "backward kernel launch");
}

#define DEFORMDETR_INSTANTIATE_CUDA(T)                                                   \
  template void ms_deform_attn_cuda<T>(const MsDeformAttnForwardArgs<T>&, int, void*); \
  template void ms_deform_attn_cuda<T>(const MsDeformAttnBackwardArgs<T>&, int, void*);
DEFORMDETR_INSTANTIATE_CUDA(float)
DEFORMDETR_INSTANTIATE_CUDA(double)
DEFORMDETR_INSTANTIATE_CUDA(Float16)
DEFORMDETR_INSTANTIATE_CUDA(BFloat16)
#undef DEFORMDETR_INSTANTIATE_CUDA

}  // namespace deformdetr
