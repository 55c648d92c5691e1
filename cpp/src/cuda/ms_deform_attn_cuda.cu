// CUDA kernels of multi-scale deformable attention.
//
// A group of `lanes` threads (a power of two, at most a warp) serves one (n, q, m) head row, each
// lane V consecutive channels of it: 16 bytes of value where D and the pointers allow (4 floats,
// 8 halves), so a corner read of the row is one coalesced run of D elements, and the sampling
// maths of a point, the same for every channel, is done once per V channels instead of once per
// channel. Indices are 32-bit where every tensor has fewer than 2^31 elements (GPUs emulate 64-bit
// integer arithmetic). The levels' geometry is read and checked once per block, into shared
// memory. All arithmetic is in accum_t (float for 16-bit inputs). The backward pass scatters into
// grad_value with atomics in accum_t (four floats at a time on sm_90) and reduces the location
// and weight gradients over a row's lanes with shuffles. The sampling maths is
// deformdetr/bilinear.h, the code the CPU kernels run.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

#include "cuda_check.h"
#include "deformdetr/bilinear.h"
#include "deformdetr/ms_deform_attn.h"

namespace deformdetr {

namespace {

constexpr int kWarp = 32;
constexpr int kThreads = 256;
// The level table lives in shared memory; far more levels than any detector has.
constexpr int64_t kMaxLevels = 1024;

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

// The channels of one lane: V consecutive elements, loaded and stored as one access.
template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

template <int V, typename A, typename T>
__device__ __forceinline__ void load_pack(const T* p, A (&out)[V]) {
  const Pack<T, V> pack = *reinterpret_cast<const Pack<T, V>*>(p);
#pragma unroll
  for (int j = 0; j < V; ++j) out[j] = static_cast<A>(pack.v[j]);
}

template <int V, typename A, typename T>
__device__ __forceinline__ void store_pack(T* p, const A (&in)[V]) {
  Pack<T, V> pack;
#pragma unroll
  for (int j = 0; j < V; ++j) pack.v[j] = static_cast<T>(in[j]);
  *reinterpret_cast<Pack<T, V>*>(p) = pack;
}

template <int V, typename A>
__device__ __forceinline__ void atomic_add_pack(A* p, const A (&x)[V]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  constexpr bool kFloat4 = std::is_same<A, float>::value && V % 4 == 0;
#else
  constexpr bool kFloat4 = false;
#endif
  if constexpr (kFloat4) {
    // sm_90's float4 atomics: a quarter of the atomic operations.
#pragma unroll
    for (int j = 0; j < V; j += 4)
      atomicAdd(reinterpret_cast<float4*>(p + j), make_float4(x[j], x[j + 1], x[j + 2], x[j + 3]));
  } else {
#pragma unroll
    for (int j = 0; j < V; ++j) atomicAdd(p + j, x[j]);
  }
}

// Level l's size and the offset in value of its position 0 (start * M * D), read once per block.
// A level whose (start, H, W) would reach outside value is not inside, and is skipped rather than
// read out of bounds: the host cannot check device-side spatial shapes without a synchronisation.
// The check is written so that no product can overflow: H = W = 2^32 must not pass as H * W = 0.
template <typename I>
struct LevelGeometry {
  I height, width, start;
  bool inside;
};

template <typename S, typename I>
__device__ __forceinline__ const LevelGeometry<I>* level_table(const MsDeformAttnInputs<S>& a) {
  extern __shared__ __align__(16) unsigned char shared[];
  auto* levels = reinterpret_cast<LevelGeometry<I>*>(shared);
  const MsDeformAttnDims& d = a.dims;
  for (int64_t l = threadIdx.x; l < d.levels; l += blockDim.x) {
    const int64_t h = a.spatial_shapes[2 * l], w = a.spatial_shapes[2 * l + 1];
    const int64_t start = a.level_start_index[l];
    const bool inside = h > 0 && w > 0 && start >= 0 && start <= d.value_len &&
                        w <= (d.value_len - start) / h;
    // Inside, each of these is at most value's size, which fits in I.
    levels[l] = inside ? LevelGeometry<I>{(I)h, (I)w, (I)(start * d.heads * d.channels), true}
                       : LevelGeometry<I>{0, 0, 0, false};
  }
  __syncthreads();
  return levels;
}

// Calls fn(row, active) for the head row of this thread's group, grid-striding. Every thread of
// a block takes the same number of steps (a group past the last row gets row 0 and active false,
// and must write nothing), so that shuffles inside fn always see whole warps.
template <typename I, typename Fn>
__device__ __forceinline__ void for_each_row(int64_t rows, int lanes, Fn&& fn) {
  const int64_t rows_per_block = kThreads / lanes, group = threadIdx.x / lanes;
  for (int64_t first = blockIdx.x * rows_per_block; first < rows;
       first += (int64_t)gridDim.x * rows_per_block) {
    const int64_t row = first + group;
    fn(row < rows ? (I)row : I(0), row < rows);
  }
}

// Where one head row's data starts: value (and grad_value) at its (n, m), its sampling locations
// and attention weights.
template <typename I>
struct RowStart {
  I value, locations, weights;
};

template <typename I>
__device__ __forceinline__ RowStart<I> row_start(const MsDeformAttnDims& d, I row) {
  const I heads = (I)d.heads, per_image = (I)d.queries * heads, samples = (I)(d.levels * d.points);
  const I n = row / per_image, m = row % heads;
  return {(n * (I)d.value_len * heads + m) * (I)d.channels, row * samples * 2, row * samples};
}

template <typename S, typename I, int V>
__global__ void __launch_bounds__(kThreads) forward_kernel(MsDeformAttnForwardArgs<S> a, int lanes) {
  using T = CudaType<S>;
  using A = typename GradValueAccum<S>::type;  // all arithmetic: float for 16-bit inputs
  const LevelGeometry<I>* levels = level_table<S, I>(a);
  const MsDeformAttnDims& d = a.dims;
  const I L = (I)d.levels, P = (I)d.points, D = (I)d.channels, position_stride = (I)d.heads * D;
  const int lane = threadIdx.x % lanes;
  for_each_row<I>(d.batch * d.queries * d.heads, lanes, [&](I row, bool active) {
    if (!active) return;
    const RowStart<I> at = row_start(d, row);
    const T* locations = on_device(a.sampling_locations) + at.locations;
    const T* weights = on_device(a.attention_weights) + at.weights;
    for (I c = lane * V; c < D; c += lanes * V) {
      A acc[V] = {};
      for (I l = 0; l < L; ++l) {
        const LevelGeometry<I> level = levels[l];
        if (!level.inside) continue;
        const T* level_value = on_device(a.value) + at.value + level.start + c;
        for (I i = l * P; i < (l + 1) * P; ++i) {
          BilinearPoint<A, I> point;
          if (!bilinear_point(static_cast<A>(locations[2 * i]), static_cast<A>(locations[2 * i + 1]),
                              level.height, level.width, point))
            continue;
          const A w = static_cast<A>(weights[i]);
#pragma unroll
          for (int k = 0; k < 4; ++k) {
            const BilinearCorner<A, I> corner = bilinear_corner(point, k);
            if (!corner.inside) continue;
            A v[V];
            load_pack<V>(level_value + corner.offset * position_stride, v);
            const A cw = w * corner.weight;
#pragma unroll
            for (int j = 0; j < V; ++j) acc[j] += cw * v[j];
          }
        }
      }
      store_pack<V>(on_device(a.output) + row * D + c, acc);
    }
  });
}

// The sum over the `lanes` lanes of each group, in the group's first lane; all 32 lanes call it.
template <typename A>
__device__ __forceinline__ A group_sum(A x, int lanes) {
  for (int offset = lanes / 2; offset > 0; offset /= 2)
    x += __shfl_down_sync(0xffffffffu, x, offset, lanes);
  return x;
}

template <typename S, typename I, int V>
__global__ void __launch_bounds__(kThreads) backward_kernel(MsDeformAttnBackwardArgs<S> a, int lanes) {
  using T = CudaType<S>;
  using A = typename GradValueAccum<S>::type;  // all arithmetic: float for 16-bit inputs
  const LevelGeometry<I>* levels = level_table<S, I>(a);
  const MsDeformAttnDims& d = a.dims;
  const I L = (I)d.levels, P = (I)d.points, D = (I)d.channels, position_stride = (I)d.heads * D;
  const int lane = threadIdx.x % lanes;
  for_each_row<I>(d.batch * d.queries * d.heads, lanes, [&](I row, bool active) {
    const RowStart<I> at = row_start(d, row);
    const T* locations = on_device(a.sampling_locations) + at.locations;
    const T* weights = on_device(a.attention_weights) + at.weights;
    const T* grad_output = on_device(a.grad_output) + row * D;
    T* grad_locations = on_device(a.grad_sampling_locations) + at.locations;
    T* grad_weights = on_device(a.grad_attention_weights) + at.weights;
    for (I l = 0; l < L; ++l) {
      const LevelGeometry<I> level = levels[l];
      for (I i = l * P; i < (l + 1) * P; ++i) {
        // Uniform within the group: its lanes read the same location.
        BilinearPoint<A, I> point;
        const bool sampled =
            active && level.inside &&
            bilinear_point(static_cast<A>(locations[2 * i]), static_cast<A>(locations[2 * i + 1]),
                           level.height, level.width, point);
        A w = 0, grad_weight = 0, grad_x = 0, grad_y = 0;
        if (sampled) {
          w = static_cast<A>(weights[i]);
          for (I c = lane * V; c < D; c += lanes * V) {
            A g[V];
            load_pack<V>(grad_output + c, g);
#pragma unroll
            for (int k = 0; k < 4; ++k) {
              const BilinearCorner<A, I> corner = bilinear_corner(point, k);
              if (!corner.inside) continue;
              const I offset = at.value + level.start + corner.offset * position_stride + c;
              A v[V], add[V];
              load_pack<V>(on_device(a.value) + offset, v);
              A dot = 0;
#pragma unroll
              for (int j = 0; j < V; ++j) {
                dot += g[j] * v[j];
                add[j] = w * corner.weight * g[j];
              }
              grad_weight += corner.weight * dot;
              grad_x += corner.dweight_dx * dot;
              grad_y += corner.dweight_dy * dot;
              atomic_add_pack<V>(a.grad_value + offset, add);
            }
          }
        }
        // Outside any branch: every lane of the warp takes part.
        grad_weight = group_sum(grad_weight, lanes);
        grad_x = group_sum(grad_x, lanes);
        grad_y = group_sum(grad_y, lanes);
        if (active && lane == 0) {
          // A point with no corner inside gets zero gradients, whatever its attention weight
          // (inf * 0 would be NaN).
          grad_weights[i] = static_cast<T>(grad_weight);
          grad_locations[2 * i] = static_cast<T>(sampled ? w * grad_x * (A)level.width : A(0));
          grad_locations[2 * i + 1] = static_cast<T>(sampled ? w * grad_y * (A)level.height : A(0));
        }
      }
    }
  });
}

// ---- Launch configuration, chosen on the host.

// The channels a lane takes when D and the alignment of every pointer allow: 16 bytes of them.
template <typename S>
constexpr int kPack = 16 / (int)sizeof(S) > 1 ? 16 / (int)sizeof(S) : 1;

bool aligned(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

struct Launch {
  int pack;          // channels per lane: kPack<S> or 1
  int lanes;         // lanes per head row: a power of two, at most a warp
  bool wide_index;   // 64-bit indices: some tensor has 2^31 elements or more
  int64_t blocks;
  size_t shared_bytes;
};

// pointers: every pointer a pack is read from or written to, with its element size.
template <typename S>
Launch launch_of(const MsDeformAttnDims& d, std::initializer_list<std::pair<const void*, size_t>> pointers) {
  if (d.levels > kMaxLevels)
    throw std::invalid_argument("ms_deform_attn on CUDA takes at most " + std::to_string(kMaxLevels) +
                                " levels");
  const int64_t limit = std::numeric_limits<int32_t>::max();
  const int64_t rows = d.batch * d.queries * d.heads;
  const bool wide = d.batch * d.value_len * d.heads * d.channels > limit || rows > limit ||
                    rows * d.levels * d.points * 2 > limit || rows * d.channels > limit;
  bool packed = !wide && kPack<S> > 1 && d.channels % kPack<S> == 0;
  for (const auto& [pointer, size] : pointers) packed = packed && aligned(pointer, size * kPack<S>);
  const int pack = packed ? kPack<S> : 1;
  int lanes = 1;
  while (lanes < kWarp && lanes * pack < d.channels) lanes *= 2;
  const int64_t rows_per_block = kThreads / lanes;
  // Enough blocks to fill any current GPU many times over; larger problems grid-stride.
  const int64_t blocks = std::min<int64_t>((rows + rows_per_block - 1) / rows_per_block, 1 << 20);
  const size_t entry = wide ? sizeof(LevelGeometry<int64_t>) : sizeof(LevelGeometry<int32_t>);
  return {pack, lanes, wide, blocks, entry * (size_t)std::max<int64_t>(d.levels, 1)};
}

// Launches kernel<S, I, V> for the launch's index type and pack.
template <template <typename, typename, int> class Kernel, typename S, typename Args>
void launch(const Launch& l, const Args& args, cudaStream_t stream) {
  const dim3 grid((unsigned)l.blocks), block(kThreads);
  if (l.wide_index)
    Kernel<S, int64_t, 1>::run(grid, block, l.shared_bytes, stream, args, l.lanes);
  else if (l.pack > 1)
    Kernel<S, int32_t, kPack<S>>::run(grid, block, l.shared_bytes, stream, args, l.lanes);
  else
    Kernel<S, int32_t, 1>::run(grid, block, l.shared_bytes, stream, args, l.lanes);
}

template <typename S, typename I, int V>
struct Forward {
  static void run(dim3 grid, dim3 block, size_t shared, cudaStream_t stream,
                  const MsDeformAttnForwardArgs<S>& args, int lanes) {
    forward_kernel<S, I, V><<<grid, block, shared, stream>>>(args, lanes);
  }
};

template <typename S, typename I, int V>
struct Backward {
  static void run(dim3 grid, dim3 block, size_t shared, cudaStream_t stream,
                  const MsDeformAttnBackwardArgs<S>& args, int lanes) {
    backward_kernel<S, I, V><<<grid, block, shared, stream>>>(args, lanes);
  }
};

}  // namespace

template <typename T>
void ms_deform_attn_cuda(const MsDeformAttnForwardArgs<T>& args, int device, void* stream) {
  const Launch l = launch_of<T>(args.dims, {{args.value, sizeof(T)}, {args.output, sizeof(T)}});
  if (l.blocks == 0) return;
  CudaDeviceGuard guard(device);
  launch<Forward, T>(l, args, static_cast<cudaStream_t>(stream));
  cuda_check(cudaGetLastError(), "forward kernel launch");
}

template <typename T>
void ms_deform_attn_cuda(const MsDeformAttnBackwardArgs<T>& args, int device, void* stream) {
  using A = typename GradValueAccum<T>::type;
  const MsDeformAttnDims& d = args.dims;
  const Launch l = launch_of<T>(d, {{args.value, sizeof(T)}, {args.grad_output, sizeof(T)},
                                    {args.grad_value, sizeof(A)}});
  CudaDeviceGuard guard(device);
  auto s = static_cast<cudaStream_t>(stream);
  // An empty grad_value may have no storage at all: nothing to clear, no null pointer to pass.
  const size_t bytes = sizeof(A) * d.batch * d.value_len * d.heads * d.channels;
  if (bytes > 0) cuda_check(cudaMemsetAsync(args.grad_value, 0, bytes, s), "memset of grad_value");
  if (l.blocks == 0) return;
  launch<Backward, T>(l, args, s);
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
