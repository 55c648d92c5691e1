// The CPU kernels of multi-scale deformable attention, written once and compiled once per
// instruction set (see ms_deform_attn_cpu_*.cpp): the including file defines
// DEFORMDETR_CPU_VARIANT, the namespace its copy lives in.
// Not a public header: include only from those files.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

#include "deformdetr/ms_deform_attn.h"
#include "deformdetr/parallel.h"

#ifndef DEFORMDETR_CPU_VARIANT
#error "define DEFORMDETR_CPU_VARIANT before including ms_deform_attn_cpu_kernels.h"
#endif

namespace deformdetr::DEFORMDETR_CPU_VARIANT {

namespace {

// The four bilinear corners of one sampling point: a pointer to each corner's row of D channels
// and the corner's weight and weight derivatives. A corner outside the map (zero padding) points
// at a row of zeros with zero weights, so the channel loops below need no branches and a
// non-finite value elsewhere in the map never leaks into a padded sample.
template <typename scalar_t>
struct Corners {
  const scalar_t* row[4];
  int64_t offset[4];  // position (h * W + w) in the level; -1 outside
  scalar_t weight[4];
  scalar_t dweight_dx[4];  // d(weight)/dx in pixels, for the location gradient
  scalar_t dweight_dy[4];
};

// Pixel coordinates follow grid_sample(align_corners=False): x = loc_x * W - 0.5.
// Returns false when the point is so far outside that every corner is padding.
template <typename scalar_t>
inline bool bilinear_corners(scalar_t loc_x, scalar_t loc_y, int64_t height, int64_t width,
                             const scalar_t* level_value, int64_t value_row,
                             const scalar_t* zero_row, Corners<scalar_t>& c) {
  const scalar_t x = loc_x * (scalar_t)width - (scalar_t)0.5;
  const scalar_t y = loc_y * (scalar_t)height - (scalar_t)0.5;
  if (!(x > (scalar_t)-1 && y > (scalar_t)-1 && x < (scalar_t)width && y < (scalar_t)height))
    return false;
  const scalar_t x0f = std::floor(x), y0f = std::floor(y);
  const int64_t x0 = (int64_t)x0f, y0 = (int64_t)y0f;
  const scalar_t lx = x - x0f, ly = y - y0f, hx = 1 - lx, hy = 1 - ly;
  const bool x0_in = x0 >= 0, x1_in = x0 + 1 < width, y0_in = y0 >= 0, y1_in = y0 + 1 < height;
  const bool inside[4] = {y0_in && x0_in, y0_in && x1_in, y1_in && x0_in, y1_in && x1_in};
  const int64_t base = y0 * width + x0;
  const int64_t offset[4] = {base, base + 1, base + width, base + width + 1};
  const scalar_t w[4] = {hy * hx, hy * lx, ly * hx, ly * lx};
  const scalar_t dx[4] = {-hy, hy, -ly, ly};
  const scalar_t dy[4] = {-hx, -lx, hx, lx};
  for (int k = 0; k < 4; ++k) {
    c.offset[k] = inside[k] ? offset[k] : -1;
    c.row[k] = inside[k] ? level_value + offset[k] * value_row : zero_row;
    c.weight[k] = inside[k] ? w[k] : 0;
    c.dweight_dx[k] = inside[k] ? dx[k] : 0;
    c.dweight_dy[k] = inside[k] ? dy[k] : 0;
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

template <typename scalar_t, int kChannels>
void forward_rows(const MsDeformAttnDims& dims, const scalar_t* value, const int64_t* shapes,
                  const int64_t* starts, const scalar_t* locations, const scalar_t* weights,
                  scalar_t* output, int64_t row_begin, int64_t row_end) {
  const int64_t M = dims.heads, L = dims.levels, P = dims.points, S = dims.value_len;
  const int64_t D = channels<kChannels>(dims.channels);
  const int64_t value_row = M * D;  // stride between consecutive positions of the value map
  const std::vector<scalar_t> zero_row(D, scalar_t(0));
  Corners<scalar_t> c;
  for (int64_t row = row_begin; row < row_end; ++row) {  // row = n * Lq + q
    const int64_t n = row / dims.queries;
    for (int64_t m = 0; m < M; ++m) {
      const int64_t head_row = row * M + m;
      const scalar_t* loc = locations + head_row * L * P * 2;
      const scalar_t* attw = weights + head_row * L * P;
      // A fixed D accumulates in a local array (registers); the generic path in the output.
      scalar_t local[kChannels > 0 ? kChannels : 1] = {};
      scalar_t* out = output + head_row * D;
      scalar_t* acc = kChannels > 0 ? local : out;
      if (kChannels == 0) std::fill(out, out + D, scalar_t(0));
      for (int64_t l = 0; l < L; ++l) {
        const int64_t H = shapes[2 * l], W = shapes[2 * l + 1];
        const scalar_t* level_value = value + ((n * S + starts[l]) * M + m) * D;
        for (int64_t p = 0; p < P; ++p, loc += 2, ++attw)
          if (bilinear_corners(loc[0], loc[1], H, W, level_value, value_row, zero_row.data(), c))
            accumulate_sample<scalar_t, kChannels>(D, *attw, c, acc);
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
void backward_queries(const MsDeformAttnDims& dims, const scalar_t* value_nm, int64_t value_row,
                      const int64_t* shapes, const int64_t* starts, const scalar_t* locations,
                      const scalar_t* weights, const scalar_t* grad_output, scalar_t* grad_nm,
                      int64_t grad_row, scalar_t* grad_locations, scalar_t* grad_weights, int64_t n,
                      int64_t m, int64_t q_begin, int64_t q_end) {
  const int64_t M = dims.heads, L = dims.levels, P = dims.points;
  const int64_t D = channels<kChannels>(dims.channels);
  const std::vector<scalar_t> zero_row(D, scalar_t(0));
  std::vector<scalar_t> sink_rows(4 * D, scalar_t(0));
  Corners<scalar_t> c;
  scalar_t* grad_rows[4];
  scalar_t coefs[16];
  for (int64_t q = q_begin; q < q_end; ++q) {
    const int64_t head_row = (n * dims.queries + q) * M + m;
    const scalar_t* go = grad_output + head_row * D;
    const scalar_t* loc = locations + head_row * L * P * 2;
    const scalar_t* attw = weights + head_row * L * P;
    scalar_t* gloc = grad_locations + head_row * L * P * 2;
    scalar_t* gw = grad_weights + head_row * L * P;
    for (int64_t l = 0; l < L; ++l) {
      const int64_t H = shapes[2 * l], W = shapes[2 * l + 1];
      const scalar_t* level_value = value_nm + starts[l] * value_row;
      scalar_t* level_grad = grad_nm + starts[l] * grad_row;
      for (int64_t p = 0; p < P; ++p, loc += 2, gloc += 2, ++attw, ++gw) {
        gloc[0] = gloc[1] = *gw = scalar_t(0);
        if (!bilinear_corners(loc[0], loc[1], H, W, level_value, value_row, zero_row.data(), c))
          continue;
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
void forward_impl(const MsDeformAttnDims& dims, const scalar_t* value, const int64_t* shapes,
                  const int64_t* starts, const scalar_t* locations, const scalar_t* weights,
                  scalar_t* output, int num_threads) {
  const int64_t rows = dims.batch * dims.queries;
  parallel_for(rows, 8, num_threads, [&](int64_t begin, int64_t end) {
    forward_rows<scalar_t, kChannels>(dims, value, shapes, starts, locations, weights, output,
                                      begin, end);
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
void backward_impl(const MsDeformAttnDims& dims, const scalar_t* value, const int64_t* shapes,
                   const int64_t* starts, const scalar_t* locations, const scalar_t* weights,
                   const scalar_t* grad_output, scalar_t* grad_value, scalar_t* grad_locations,
                   scalar_t* grad_weights, int num_threads) {
  const int64_t N = dims.batch, M = dims.heads, S = dims.value_len, Q = dims.queries;
  const int64_t D = dims.channels;
  const int threads = usable_threads(num_threads);  // also sizes the per-split grad maps
  const int64_t pairs = N * M;
  if (pairs == 0) return;  // every gradient is empty
  const bool head_major = Q * dims.levels * dims.points * 4 >= S;
  if (!head_major) {
    parallel_for(N * S * M * D, 1 << 16, threads, [&](int64_t begin, int64_t end) {
      std::fill(grad_value + begin, grad_value + end, scalar_t(0));
    });
    parallel_for(pairs, 1, threads, [&](int64_t begin, int64_t end) {
      for (int64_t pair = begin; pair < end; ++pair) {
        const int64_t n = pair / M, m = pair % M;
        const int64_t offset = n * S * M * D + m * D;
        backward_queries<scalar_t, kChannels>(dims, value + offset, M * D, shapes, starts,
                                              locations, weights, grad_output, grad_value + offset,
                                              M * D, grad_locations, grad_weights, n, m, 0, Q);
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
        std::copy_n(value + (ns * M + m) * D, D, value_hm.get() + (n * M + m) * map_size + s * D);
    }
  });
  parallel_for(pairs * splits, 1, threads, [&](int64_t begin, int64_t end) {
    std::fill(grad_hm.get() + begin * map_size, grad_hm.get() + end * map_size, scalar_t(0));
  });

  parallel_for(pairs * splits, 1, threads, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t pair = task / splits, split = task % splits;
      const int64_t q_begin = split * split_len, q_end = std::min(Q, q_begin + split_len);
      backward_queries<scalar_t, kChannels>(dims, value_hm.get() + pair * map_size, D, shapes,
                                            starts, locations, weights, grad_output,
                                            grad_hm.get() + task * map_size, D, grad_locations,
                                            grad_weights, pair / M, pair % M, q_begin, q_end);
    }
  });

  parallel_for(N * S, 256, threads, [&](int64_t begin, int64_t end) {
    for (int64_t ns = begin; ns < end; ++ns) {
      const int64_t n = ns / S, s = ns % S;
      for (int64_t m = 0; m < M; ++m) {
        scalar_t* out = grad_value + (ns * M + m) * D;
        const scalar_t* part = grad_hm.get() + (n * M + m) * splits * map_size + s * D;
        std::copy_n(part, D, out);
        for (int64_t split = 1; split < splits; ++split)
          for (int64_t d = 0; d < D; ++d) out[d] += part[split * map_size + d];
      }
    }
  });
}

}  // namespace

template <typename scalar_t>
void forward(const MsDeformAttnDims& dims, const scalar_t* value, const int64_t* spatial_shapes,
             const int64_t* level_start_index, const scalar_t* sampling_locations,
             const scalar_t* attention_weights, scalar_t* output, int num_threads) {
  switch (dims.channels) {
    case 32:
      return forward_impl<scalar_t, 32>(dims, value, spatial_shapes, level_start_index,
                                        sampling_locations, attention_weights, output, num_threads);
    case 64:
      return forward_impl<scalar_t, 64>(dims, value, spatial_shapes, level_start_index,
                                        sampling_locations, attention_weights, output, num_threads);
    default:
      return forward_impl<scalar_t, 0>(dims, value, spatial_shapes, level_start_index,
                                       sampling_locations, attention_weights, output, num_threads);
  }
}

template <typename scalar_t>
void backward(const MsDeformAttnDims& dims, const scalar_t* value, const int64_t* spatial_shapes,
              const int64_t* level_start_index, const scalar_t* sampling_locations,
              const scalar_t* attention_weights, const scalar_t* grad_output, scalar_t* grad_value,
              scalar_t* grad_sampling_locations, scalar_t* grad_attention_weights,
              int num_threads) {
  switch (dims.channels) {
    case 32:
      return backward_impl<scalar_t, 32>(
          dims, value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
          grad_output, grad_value, grad_sampling_locations, grad_attention_weights, num_threads);
    case 64:
      return backward_impl<scalar_t, 64>(
          dims, value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
          grad_output, grad_value, grad_sampling_locations, grad_attention_weights, num_threads);
    default:
      return backward_impl<scalar_t, 0>(
          dims, value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
          grad_output, grad_value, grad_sampling_locations, grad_attention_weights, num_threads);
  }
}

#define DEFORMDETR_INSTANTIATE(T)                                                              \
  template void forward<T>(const MsDeformAttnDims&, const T*, const int64_t*, const int64_t*,  \
                           const T*, const T*, T*, int);                                       \
  template void backward<T>(const MsDeformAttnDims&, const T*, const int64_t*, const int64_t*, \
                            const T*, const T*, const T*, T*, T*, T*, int);
DEFORMDETR_INSTANTIATE(float)
DEFORMDETR_INSTANTIATE(double)
#undef DEFORMDETR_INSTANTIATE

}  // namespace deformdetr::DEFORMDETR_CPU_VARIANT
