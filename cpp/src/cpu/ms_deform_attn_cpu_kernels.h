// The CPU kernels of multi-scale deformable attention, written once and compiled once per
// instruction set (see ms_deform_attn_cpu_*.cpp): the including file defines
// DEFORMDETR_CPU_VARIANT, the namespace its copy lives in.
// Not a public header: include only from those files.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

#include "deformdetr/bilinear.h"
#include "deformdetr/ms_deform_attn.h"
#include "deformdetr/parallel.h"

#ifndef DEFORMDETR_CPU_VARIANT
#error "define DEFORMDETR_CPU_VARIANT before including ms_deform_attn_cpu_kernels.h"
#endif

namespace deformdetr::DEFORMDETR_CPU_VARIANT {

namespace {

// The four corners of one sample (deformdetr/bilinear.h) as the channel loops below read them:
// a corner outside the map reads `zero_row`, so those loops need no branches and a non-finite
// value elsewhere in the map never leaks into a padded sample.
template <typename scalar_t>
struct Corners {
  const scalar_t* row[4];
  int64_t offset[4];  // -1 outside the map
  scalar_t weight[4];
  scalar_t dweight_dx[4];
  scalar_t dweight_dy[4];
};

template <typename scalar_t>
inline bool corners_of(const scalar_t* loc, int64_t height, int64_t width,
                       const scalar_t* level_value, int64_t value_row, const scalar_t* zero_row,
                       Corners<scalar_t>& c) {
  BilinearPoint<scalar_t> point;
  if (!bilinear_point(loc[0], loc[1], height, width, point)) return false;
  for (int k = 0; k < 4; ++k) {
    const BilinearCorner<scalar_t> corner = bilinear_corner(point, k);
    c.row[k] = corner.inside ? level_value + corner.offset * value_row : zero_row;
    c.offset[k] = corner.inside ? corner.offset : -1;
    c.weight[k] = corner.weight;
    c.dweight_dx[k] = corner.dweight_dx;
    c.dweight_dy[k] = corner.dweight_dy;
  }
  return true;
}

// kChannels > 0 fixes D at compile time so the channel loops unroll into a few vector
// registers; kChannels == 0 is the generic path.
template <int kChannels>
inline int64_t channels(int64_t D) {
  return kChannels > 0 ? kChannels : D;
}

// Fixed-width vectors through the GCC/Clang vector extension: explicit, so vectorisation does not
// hinge on the optimiser, and each compiled variant maps them onto its own instruction set
// (two SSE registers in the baseline build, one AVX register in the AVX2 build).
template <typename scalar_t>
struct Simd {
  typedef scalar_t vec __attribute__((vector_size(32)));
  static constexpr int kLanes = 32 / sizeof(scalar_t);
  static vec load(const scalar_t* p) {
    vec v;
    std::memcpy(&v, p, sizeof v);
    return v;
  }
  static void store(scalar_t* p, vec v) { std::memcpy(p, &v, sizeof v); }
  static scalar_t sum(vec v) {
    scalar_t total = 0;
    for (int j = 0; j < kLanes; ++j) total += v[j];
    return total;
  }
};

// acc[d] += attw * (bilinear sample of the four corners)[d].
template <typename scalar_t, int kChannels>
inline void accumulate_sample(int64_t D, scalar_t attw, const Corners<scalar_t>& c,
                              scalar_t* __restrict__ acc) {
  using V = Simd<scalar_t>;
  const scalar_t *r0 = c.row[0], *r1 = c.row[1], *r2 = c.row[2], *r3 = c.row[3];
  const scalar_t w0 = c.weight[0], w1 = c.weight[1], w2 = c.weight[2], w3 = c.weight[3];
  const int64_t n = channels<kChannels>(D);
  int64_t d = 0;
  for (; d + V::kLanes <= n; d += V::kLanes) {
    const typename V::vec sample =
        w0 * V::load(r0 + d) + w1 * V::load(r1 + d) + w2 * V::load(r2 + d) + w3 * V::load(r3 + d);
    V::store(acc + d, V::load(acc + d) + attw * sample);
  }
  if constexpr (kChannels == 0 || kChannels % Simd<scalar_t>::kLanes != 0)
    for (; d < n; ++d) acc[d] += attw * (w0 * r0[d] + w1 * r1[d] + w2 * r2[d] + w3 * r3[d]);
}

// Output rows [row_begin, row_end) of (N * Lq), all heads.
template <typename scalar_t, int kChannels>
void forward_rows(const MsDeformAttnForwardArgs<scalar_t>& a, int64_t row_begin,
                  int64_t row_end) {
  const MsDeformAttnDims& dims = a.dims;
  const int64_t M = dims.heads, L = dims.levels, P = dims.points, S = dims.value_len;
  const int64_t D = channels<kChannels>(dims.channels);
  const int64_t value_row = M * D;  // stride between consecutive positions of the value map
  const std::vector<scalar_t> zero_row(D, scalar_t(0));
  for (int64_t row = row_begin; row < row_end; ++row) {  // row = n * Lq + q
    const int64_t n = row / dims.queries;
    for (int64_t m = 0; m < M; ++m) {
      const int64_t head_row = row * M + m;
      const scalar_t* loc = a.sampling_locations + head_row * L * P * 2;
      const scalar_t* attw = a.attention_weights + head_row * L * P;
      // A fixed D accumulates in a local array (registers); the generic path in the output.
      scalar_t local[kChannels > 0 ? kChannels : 1] = {};
      scalar_t* out = a.output + head_row * D;
      scalar_t* acc = kChannels > 0 ? local : out;
      if (kChannels == 0) std::fill(out, out + D, scalar_t(0));
      for (int64_t l = 0; l < L; ++l) {
        const int64_t H = a.spatial_shapes[2 * l], W = a.spatial_shapes[2 * l + 1];
        const scalar_t* level_value = a.value + ((n * S + a.level_start_index[l]) * M + m) * D;
        for (int64_t p = 0; p < P; ++p, loc += 2, ++attw) {
          Corners<scalar_t> c;
          if (corners_of(loc, H, W, level_value, value_row, zero_row.data(), c))
            accumulate_sample<scalar_t, kChannels>(D, *attw, c, acc);
        }
      }
      if (kChannels > 0) std::copy(local, local + D, out);
    }
  }
}

// Gradients of one sample: scatter attw * weight_k * grad_output into the corners' grad rows
// g0..g3 and add (dL/dweight, dL/dx, dL/dy), before the attention-weight and map-size factors,
// to sums[0..2]. Every pointer is distinct (padded corners read a zero row and write private sink
// rows), which __restrict__ tells the compiler.
template <typename scalar_t, int kChannels>
inline void sample_gradients(int64_t D, const scalar_t* __restrict__ w,
                             const scalar_t* __restrict__ r0, const scalar_t* __restrict__ r1,
                             const scalar_t* __restrict__ r2, const scalar_t* __restrict__ r3,
                             const scalar_t* __restrict__ go, scalar_t* __restrict__ g0,
                             scalar_t* __restrict__ g1, scalar_t* __restrict__ g2,
                             scalar_t* __restrict__ g3, scalar_t* __restrict__ sums) {
  using V = Simd<scalar_t>;
  using vec = typename V::vec;
  // w: the 4 weights, 4 d/dx, 4 d/dy, then the 4 weights times the attention weight.
  const scalar_t w0 = w[0], w1 = w[1], w2 = w[2], w3 = w[3];
  const scalar_t x0 = w[4], x1 = w[5], x2 = w[6], x3 = w[7];
  const scalar_t y0 = w[8], y1 = w[9], y2 = w[10], y3 = w[11];
  const scalar_t a0 = w[12], a1 = w[13], a2 = w[14], a3 = w[15];
  vec pw = {}, px = {}, py = {};
  const int64_t n = channels<kChannels>(D);
  int64_t d = 0;
  for (; d + V::kLanes <= n; d += V::kLanes) {
    const vec g = V::load(go + d);
    const vec v0 = V::load(r0 + d), v1 = V::load(r1 + d), v2 = V::load(r2 + d),
              v3 = V::load(r3 + d);
    pw += g * (w0 * v0 + w1 * v1 + w2 * v2 + w3 * v3);
    px += g * (x0 * v0 + x1 * v1 + x2 * v2 + x3 * v3);
    py += g * (y0 * v0 + y1 * v1 + y2 * v2 + y3 * v3);
    V::store(g0 + d, V::load(g0 + d) + a0 * g);
    V::store(g1 + d, V::load(g1 + d) + a1 * g);
    V::store(g2 + d, V::load(g2 + d) + a2 * g);
    V::store(g3 + d, V::load(g3 + d) + a3 * g);
  }
  scalar_t tail_w = 0, tail_x = 0, tail_y = 0;
  if constexpr (kChannels == 0 || kChannels % V::kLanes != 0)
    for (; d < n; ++d) {
      const scalar_t g = go[d];
      const scalar_t v0 = r0[d], v1 = r1[d], v2 = r2[d], v3 = r3[d];
      tail_w += g * (w0 * v0 + w1 * v1 + w2 * v2 + w3 * v3);
      tail_x += g * (x0 * v0 + x1 * v1 + x2 * v2 + x3 * v3);
      tail_y += g * (y0 * v0 + y1 * v1 + y2 * v2 + y3 * v3);
      g0[d] += a0 * g;
      g1[d] += a1 * g;
      g2[d] += a2 * g;
      g3[d] += a3 * g;
    }
  sums[0] += V::sum(pw) + tail_w;
  sums[1] += V::sum(px) + tail_x;
  sums[2] += V::sum(py) + tail_y;
}

// Backward for queries [q_begin, q_end) of one (n, m) pair. value_nm and grad_nm point at
// position 0 of the pair's value map and grad map, whose consecutive positions are value_row and
// grad_row elements apart.
template <typename scalar_t, int kChannels>
void backward_queries(const MsDeformAttnBackwardArgs<scalar_t>& a, const scalar_t* value_nm,
                      int64_t value_row, scalar_t* grad_nm, int64_t grad_row, int64_t n, int64_t m,
                      int64_t q_begin, int64_t q_end) {
  const MsDeformAttnDims& dims = a.dims;
  const int64_t M = dims.heads, L = dims.levels, P = dims.points;
  const int64_t D = channels<kChannels>(dims.channels);
  const std::vector<scalar_t> zero_row(D, scalar_t(0));
  std::vector<scalar_t> sink_rows(4 * D, scalar_t(0));
  scalar_t* grad_rows[4];
  scalar_t coefs[16];
  for (int64_t q = q_begin; q < q_end; ++q) {
    const int64_t head_row = (n * dims.queries + q) * M + m;
    const scalar_t* go = a.grad_output + head_row * D;
    const scalar_t* loc = a.sampling_locations + head_row * L * P * 2;
    const scalar_t* attw = a.attention_weights + head_row * L * P;
    scalar_t* gloc = a.grad_sampling_locations + head_row * L * P * 2;
    scalar_t* gw = a.grad_attention_weights + head_row * L * P;
    for (int64_t l = 0; l < L; ++l) {
      const int64_t H = a.spatial_shapes[2 * l], W = a.spatial_shapes[2 * l + 1];
      const scalar_t* level_value = value_nm + a.level_start_index[l] * value_row;
      scalar_t* level_grad = grad_nm + a.level_start_index[l] * grad_row;
      for (int64_t p = 0; p < P; ++p, loc += 2, gloc += 2, ++attw, ++gw) {
        gloc[0] = gloc[1] = *gw = scalar_t(0);
        Corners<scalar_t> c;
        if (!corners_of(loc, H, W, level_value, value_row, zero_row.data(), c)) continue;
        for (int k = 0; k < 4; ++k) {
          grad_rows[k] =
              c.offset[k] >= 0 ? level_grad + c.offset[k] * grad_row : sink_rows.data() + k * D;
          coefs[k] = c.weight[k];
          coefs[4 + k] = c.dweight_dx[k];
          coefs[8 + k] = c.dweight_dy[k];
          coefs[12 + k] = *attw * c.weight[k];
        }
        scalar_t sums[3] = {0, 0, 0};  // dL/dweight, dL/dx, dL/dy
        sample_gradients<scalar_t, kChannels>(D, coefs, c.row[0], c.row[1], c.row[2], c.row[3], go,
                                              grad_rows[0], grad_rows[1], grad_rows[2],
                                              grad_rows[3], sums);
        *gw = sums[0];
        gloc[0] = *attw * sums[1] * (scalar_t)W;
        gloc[1] = *attw * sums[2] * (scalar_t)H;
      }
    }
  }
}

template <typename scalar_t, int kChannels>
void forward_impl(const MsDeformAttnForwardArgs<scalar_t>& a, int num_threads) {
  const int64_t rows = a.dims.batch * a.dims.queries;
  parallel_for(rows, 8, num_threads, [&](int64_t begin, int64_t end) {
    forward_rows<scalar_t, kChannels>(a, begin, end);
  });
}

// grad_value is scattered, so each task owns the grad map of one (n, m) pair and no two threads
// ever write the same element.
//
// In the (N, S, M, D) layout one head's rows sit M*D apart, a power-of-two stride that maps them
// onto a few cache sets; when the queries touch each position many times (the encoder), that
// thrashes the caches, and the pass runs on head-major copies (N, M, S, D) instead, transposed
// in and out once. When they touch few positions (the decoder), the copies would cost more than
// they save, and the pass works in place.
template <typename scalar_t, int kChannels>
void backward_impl(const MsDeformAttnBackwardArgs<scalar_t>& a, int num_threads) {
  const int64_t N = a.dims.batch, M = a.dims.heads, S = a.dims.value_len, Q = a.dims.queries;
  const int64_t D = a.dims.channels;
  const int threads = usable_threads(num_threads);  // also sizes the per-split grad maps
  const int64_t pairs = N * M;
  if (pairs == 0) return;  // every gradient is empty
  const bool head_major = Q * a.dims.levels * a.dims.points * 4 >= S;
  if (!head_major) {
    parallel_for(N * S * M * D, 1 << 16, threads, [&](int64_t begin, int64_t end) {
      std::fill(a.grad_value + begin, a.grad_value + end, scalar_t(0));
    });
    parallel_for(pairs, 1, threads, [&](int64_t begin, int64_t end) {
      for (int64_t pair = begin; pair < end; ++pair) {
        const int64_t n = pair / M, m = pair % M;
        const int64_t offset = n * S * M * D + m * D;
        backward_queries<scalar_t, kChannels>(a, a.value + offset, M * D, a.grad_value + offset,
                                              M * D, n, m, 0, Q);
      }
    });
    return;
  }
  // With fewer pairs than threads, queries are split further, each split with a grad map of its
  // own; the splits are summed while transposing back. Splits below ~64 queries are not worth it.
  int64_t splits = pairs >= threads ? 1 : (threads + pairs - 1) / pairs;
  splits = std::max<int64_t>(1, std::min<int64_t>(splits, Q / 64));
  const int64_t split_len = (Q + splits - 1) / splits;
  const int64_t map_size = S * D;

  std::unique_ptr<scalar_t[]> value_hm(new scalar_t[pairs * map_size]);
  std::unique_ptr<scalar_t[]> grad_hm(new scalar_t[pairs * splits * map_size]);
  parallel_for(N * S, 256, threads, [&](int64_t begin, int64_t end) {
    for (int64_t ns = begin; ns < end; ++ns) {
      const int64_t n = ns / S, s = ns % S;
      for (int64_t m = 0; m < M; ++m)
        std::copy_n(a.value + (ns * M + m) * D, D,
                    value_hm.get() + (n * M + m) * map_size + s * D);
    }
  });
  parallel_for(pairs * splits, 1, threads, [&](int64_t begin, int64_t end) {
    std::fill(grad_hm.get() + begin * map_size, grad_hm.get() + end * map_size, scalar_t(0));
  });

  parallel_for(pairs * splits, 1, threads, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t pair = task / splits, split = task % splits;
      const int64_t q_begin = split * split_len, q_end = std::min(Q, q_begin + split_len);
      backward_queries<scalar_t, kChannels>(a, value_hm.get() + pair * map_size, D,
                                            grad_hm.get() + task * map_size, D, pair / M, pair % M,
                                            q_begin, q_end);
    }
  });

  parallel_for(N * S, 256, threads, [&](int64_t begin, int64_t end) {
    for (int64_t ns = begin; ns < end; ++ns) {
      const int64_t n = ns / S, s = ns % S;
      for (int64_t m = 0; m < M; ++m) {
        scalar_t* out = a.grad_value + (ns * M + m) * D;
        const scalar_t* part = grad_hm.get() + (n * M + m) * splits * map_size + s * D;
        std::copy_n(part, D, out);
        for (int64_t split = 1; split < splits; ++split)
          for (int64_t d = 0; d < D; ++d) out[d] += part[split * map_size + d];
      }
    }
  });
}

// Calls fn(std::integral_constant<int, kChannels>) with D fixed at compile time for the common
// head widths, 0 (generic) otherwise.
template <typename Fn>
void with_channels(int64_t D, Fn&& fn) {
  switch (D) {
    case 32:
      return fn(std::integral_constant<int, 32>());
    case 64:
      return fn(std::integral_constant<int, 64>());
    default:
      return fn(std::integral_constant<int, 0>());
  }
}

}  // namespace

template <typename scalar_t>
void run(const MsDeformAttnForwardArgs<scalar_t>& args, int num_threads) {
  with_channels(args.dims.channels, [&](auto kChannels) {
    forward_impl<scalar_t, decltype(kChannels)::value>(args, num_threads);
  });
}

template <typename scalar_t>
void run(const MsDeformAttnBackwardArgs<scalar_t>& args, int num_threads) {
  with_channels(args.dims.channels, [&](auto kChannels) {
    backward_impl<scalar_t, decltype(kChannels)::value>(args, num_threads);
  });
}

template void run<float>(const MsDeformAttnForwardArgs<float>&, int);
template void run<double>(const MsDeformAttnForwardArgs<double>&, int);
template void run<float>(const MsDeformAttnBackwardArgs<float>&, int);
template void run<double>(const MsDeformAttnBackwardArgs<double>&, int);

}  // namespace deformdetr::DEFORMDETR_CPU_VARIANT
