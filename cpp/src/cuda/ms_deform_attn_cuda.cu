// CUDA kernels of multi-scale deformable attention.
//
// One warp serves one (n, q, m) triple: lanes stride over the D channels, so each corner read of
// value is one coalesced row of D contiguous elements. All arithmetic is in accum_t (float for
// 16-bit inputs). The backward pass scatters into grad_value with atomics in accum_t and reduces
// the location/weight gradients over channels with warp shuffles.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>

#include "cuda_check.h"
#include "deformdetr/ms_deform_attn.h"

namespace deformdetr {

namespace {

constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = 8;

template <typename T>
struct Accum {
  using type = float;
};
template <>
struct Accum<double> {
  using type = double;
};

template <typename T>
__device__ __forceinline__ float to_accum(T x) {
  return static_cast<float>(x);
}
template <>
__device__ __forceinline__ float to_accum<__half>(__half x) {
  return __half2float(x);
}
template <>
__device__ __forceinline__ float to_accum<__nv_bfloat16>(__nv_bfloat16 x) {
  return __bfloat162float(x);
}
__device__ __forceinline__ double to_accum(double x) { return x; }

template <typename T, typename A>
__device__ __forceinline__ T from_accum(A x) {
  return static_cast<T>(x);
}
template <>
__device__ __forceinline__ __half from_accum<__half, float>(float x) {
  return __float2half(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_accum<__nv_bfloat16, float>(float x) {
  return __float2bfloat16(x);
}

template <typename A>
struct Corners {
  int64_t offset[4];
  A weight[4];
  A dweight_dx[4];
  A dweight_dy[4];
  bool inside[4];
  bool any;
};

// Same convention as grid_sample(align_corners=False, padding_mode="zeros").
template <typename A>
__device__ __forceinline__ Corners<A> bilinear_corners(A loc_x, A loc_y, int64_t height,
                                                       int64_t width) {
  Corners<A> c;
  const A x = loc_x * (A)width - (A)0.5;
  const A y = loc_y * (A)height - (A)0.5;
  c.any = x > (A)-1 && y > (A)-1 && x < (A)width && y < (A)height;
  if (!c.any) return c;
  const A x0f = floor(x), y0f = floor(y);
  const int64_t x0 = (int64_t)x0f, y0 = (int64_t)y0f;
  const A lx = x - x0f, ly = y - y0f, hx = 1 - lx, hy = 1 - ly;
  const int64_t xs[4] = {x0, x0 + 1, x0, x0 + 1};
  const int64_t ys[4] = {y0, y0, y0 + 1, y0 + 1};
  const A w[4] = {hy * hx, hy * lx, ly * hx, ly * lx};
  const A dx[4] = {-hy, hy, -ly, ly};
  const A dy[4] = {-hx, -lx, hx, lx};
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const bool inside = xs[k] >= 0 && xs[k] < width && ys[k] >= 0 && ys[k] < height;
    c.inside[k] = inside;
    c.offset[k] = inside ? ys[k] * width + xs[k] : 0;
    c.weight[k] = inside ? w[k] : (A)0;
    c.dweight_dx[k] = inside ? dx[k] : (A)0;
    c.dweight_dy[k] = inside ? dy[k] : (A)0;
  }
  return c;
}

// A level whose (start, H, W) would reach outside value is skipped rather than read out of
// bounds: the host cannot check device-side spatial shapes without a synchronisation.
// Written so that no product can overflow: H = W = 2^32 must not pass as H * W = 0.
__device__ __forceinline__ bool level_in_bounds(int64_t start, int64_t h, int64_t w,
                                                int64_t value_len) {
  return h > 0 && w > 0 && start >= 0 && start <= value_len && w <= (value_len - start) / h;
}

template <typename T>
__global__ void forward_kernel(MsDeformAttnDims dims, const T* __restrict__ value,
                               const int64_t* __restrict__ shapes,
                               const int64_t* __restrict__ starts, const T* __restrict__ locations,
                               const T* __restrict__ weights, T* __restrict__ output) {
  using A = typename Accum<T>::type;
  const int64_t M = dims.heads, L = dims.levels, P = dims.points, D = dims.channels;
  const int64_t S = dims.value_len;
  const int lane = threadIdx.x % kWarp;
  const int64_t rows = dims.batch * dims.queries * M;
  // Grid-stride over head rows (n * Lq + q) * M + m; the whole warp shares one row.
  for (int64_t head_row = (int64_t)blockIdx.x * kWarpsPerBlock + threadIdx.x / kWarp;
       head_row < rows; head_row += (int64_t)gridDim.x * kWarpsPerBlock) {
    const int64_t m = head_row % M;
    const int64_t n = head_row / (M * dims.queries);
    const T* loc = locations + head_row * L * P * 2;
    const T* attw = weights + head_row * L * P;
    T* out = output + head_row * D;
    for (int64_t d0 = 0; d0 < D; d0 += kWarp) {
      const int64_t d = d0 + lane;
      const bool active = d < D;
      A acc = 0;
      for (int64_t l = 0; l < L; ++l) {
        const int64_t H = shapes[2 * l], W = shapes[2 * l + 1], start = starts[l];
        if (!level_in_bounds(start, H, W, S)) continue;
        const T* level_value = value + ((n * S + start) * M + m) * D + d;
        for (int64_t p = 0; p < P; ++p) {
          const int64_t i = l * P + p;
          const Corners<A> c =
              bilinear_corners<A>(to_accum(loc[2 * i]), to_accum(loc[2 * i + 1]), H, W);
          if (!c.any || !active) continue;
          const A w = to_accum(attw[i]);
#pragma unroll
          for (int k = 0; k < 4; ++k)
            if (c.inside[k]) acc += w * c.weight[k] * to_accum(level_value[c.offset[k] * M * D]);
        }
      }
      if (active) out[d] = from_accum<T, A>(acc);
    }
  }
}

template <typename A>
__device__ __forceinline__ A warp_sum(A x) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2)
    x += __shfl_down_sync(0xffffffffu, x, offset);
  return x;
}

template <typename T>
__global__ void backward_kernel(MsDeformAttnDims dims, const T* __restrict__ value,
                                const int64_t* __restrict__ shapes,
                                const int64_t* __restrict__ starts, const T* __restrict__ locations,
                                const T* __restrict__ weights, const T* __restrict__ grad_output,
                                typename Accum<T>::type* __restrict__ grad_value,
                                T* __restrict__ grad_locations, T* __restrict__ grad_weights) {
  using A = typename Accum<T>::type;
  const int64_t M = dims.heads, L = dims.levels, P = dims.points, D = dims.channels;
  const int64_t S = dims.value_len;
  const int lane = threadIdx.x % kWarp;
  const int64_t rows = dims.batch * dims.queries * M;
  // Grid-stride over head rows; the whole warp shares one row, so the shuffles below always see
  // 32 active lanes.
  for (int64_t head_row = (int64_t)blockIdx.x * kWarpsPerBlock + threadIdx.x / kWarp;
       head_row < rows; head_row += (int64_t)gridDim.x * kWarpsPerBlock) {
    const int64_t m = head_row % M;
    const int64_t n = head_row / (M * dims.queries);
    const T* loc = locations + head_row * L * P * 2;
    const T* attw = weights + head_row * L * P;
    const T* go = grad_output + head_row * D;
    T* gloc = grad_locations + head_row * L * P * 2;
    T* gw = grad_weights + head_row * L * P;
    for (int64_t l = 0; l < L; ++l) {
      const int64_t H = shapes[2 * l], W = shapes[2 * l + 1], start = starts[l];
      const bool level_ok = level_in_bounds(start, H, W, S);
      const int64_t level_offset = ((n * S + (level_ok ? start : 0)) * M + m) * D;
      for (int64_t p = 0; p < P; ++p) {
        const int64_t i = l * P + p;
        const A w = to_accum(attw[i]);
        Corners<A> c;
        c.any = false;
        if (level_ok) c = bilinear_corners<A>(to_accum(loc[2 * i]), to_accum(loc[2 * i + 1]), H, W);
        A grad_weight = 0, grad_x = 0, grad_y = 0;
        if (c.any) {
          for (int64_t d = lane; d < D; d += kWarp) {
            const A g = to_accum(go[d]);
#pragma unroll
            for (int k = 0; k < 4; ++k) {
              if (!c.inside[k]) continue;
              const int64_t at = level_offset + c.offset[k] * M * D + d;
              const A dot = g * to_accum(value[at]);
              grad_weight += c.weight[k] * dot;
              grad_x += c.dweight_dx[k] * dot;
              grad_y += c.dweight_dy[k] * dot;
              atomicAdd(grad_value + at, w * c.weight[k] * g);
            }
          }
        }
        grad_weight = warp_sum(grad_weight);
        grad_x = warp_sum(grad_x);
        grad_y = warp_sum(grad_y);
        // With no corner inside, the gradients are 0 whatever the attention weight (inf * 0
        // would be NaN).
        if (lane == 0) {
          gw[i] = from_accum<T, A>(grad_weight);
          gloc[2 * i] = from_accum<T, A>(c.any ? w * grad_x * (A)W : (A)0);
          gloc[2 * i + 1] = from_accum<T, A>(c.any ? w * grad_y * (A)H : (A)0);
        }
      }
    }
  }
}

// Enough blocks to fill any current GPU many times over; larger problems grid-stride.
constexpr int64_t kMaxBlocks = 1 << 20;

int64_t num_blocks(const MsDeformAttnDims& d) {
  const int64_t rows = d.batch * d.queries * d.heads;
  return std::min<int64_t>((rows + kWarpsPerBlock - 1) / kWarpsPerBlock, kMaxBlocks);
}

template <typename T>
void launch_forward(const MsDeformAttnDims& d, const void* value, const int64_t* shapes,
                    const int64_t* starts, const void* loc, const void* attw, void* out,
                    cudaStream_t stream) {
  const int64_t blocks = num_blocks(d);
  if (blocks == 0) return;
  forward_kernel<T><<<(unsigned)blocks, kWarp * kWarpsPerBlock, 0, stream>>>(
      d, static_cast<const T*>(value), shapes, starts, static_cast<const T*>(loc),
      static_cast<const T*>(attw), static_cast<T*>(out));
  cuda_check(cudaGetLastError(), "forward kernel launch");
}

template <typename T>
void launch_backward(const MsDeformAttnDims& d, const void* value, const int64_t* shapes,
                     const int64_t* starts, const void* loc, const void* attw, const void* go,
                     void* grad_value, void* grad_loc, void* grad_w, cudaStream_t stream) {
  using A = typename Accum<T>::type;
  // An empty grad_value may have no storage at all: nothing to clear, no null pointer to pass.
  const size_t bytes = sizeof(A) * d.batch * d.value_len * d.heads * d.channels;
  if (bytes > 0)
    cuda_check(cudaMemsetAsync(grad_value, 0, bytes, stream), "memset of grad_value");
  const int64_t blocks = num_blocks(d);
  if (blocks == 0) return;
  backward_kernel<T><<<(unsigned)blocks, kWarp * kWarpsPerBlock, 0, stream>>>(
      d, static_cast<const T*>(value), shapes, starts, static_cast<const T*>(loc),
      static_cast<const T*>(attw), static_cast<const T*>(go), static_cast<A*>(grad_value),
      static_cast<T*>(grad_loc), static_cast<T*>(grad_w));
  cuda_check(cudaGetLastError(), "backward kernel launch");
}

}  // namespace

void ms_deform_attn_forward_cuda(CudaDtype dtype, const MsDeformAttnDims& dims, const void* value,
                                 const int64_t* spatial_shapes, const int64_t* level_start_index,
                                 const void* sampling_locations, const void* attention_weights,
                                 void* output, int device, void* stream) {
  CudaDeviceGuard guard(device);
  auto s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case CudaDtype::float32:
      return launch_forward<float>(dims, value, spatial_shapes, level_start_index,
                                   sampling_locations, attention_weights, output, s);
    case CudaDtype::float64:
      return launch_forward<double>(dims, value, spatial_shapes, level_start_index,
                                    sampling_locations, attention_weights, output, s);
    case CudaDtype::float16:
      return launch_forward<__half>(dims, value, spatial_shapes, level_start_index,
                                    sampling_locations, attention_weights, output, s);
    case CudaDtype::bfloat16:
      return launch_forward<__nv_bfloat16>(dims, value, spatial_shapes, level_start_index,
                                           sampling_locations, attention_weights, output, s);
  }
}

void ms_deform_attn_backward_cuda(CudaDtype dtype, const MsDeformAttnDims& dims, const void* value,
                                  const int64_t* spatial_shapes, const int64_t* level_start_index,
                                  const void* sampling_locations, const void* attention_weights,
                                  const void* grad_output, void* grad_value_accum,
                                  void* grad_sampling_locations, void* grad_attention_weights,
                                  int device, void* stream) {
  CudaDeviceGuard guard(device);
  auto s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case CudaDtype::float32:
      return launch_backward<float>(
          dims, value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
          grad_output, grad_value_accum, grad_sampling_locations, grad_attention_weights, s);
    case CudaDtype::float64:
      return launch_backward<double>(
          dims, value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
          grad_output, grad_value_accum, grad_sampling_locations, grad_attention_weights, s);
    case CudaDtype::float16:
      return launch_backward<__half>(
          dims, value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
          grad_output, grad_value_accum, grad_sampling_locations, grad_attention_weights, s);
    case CudaDtype::bfloat16:
      return launch_backward<__nv_bfloat16>(
          dims, value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
          grad_output, grad_value_accum, grad_sampling_locations, grad_attention_weights, s);
  }
}

}  // namespace deformdetr
