#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "deformdetr/ms_deform_attn.h"
#include "deformdetr/parallel.h"

namespace deformdetr {

namespace {

// The four bilinear corners of one sampling point: flat row offsets into a level (h * W + w)
// and their weights; a corner outside the map has weight 0 (zero padding) and offset 0.
template <typename scalar_t>
struct Corners {
  int64_t offset[4];
  scalar_t weight[4];
  // d(weight)/dx and d(weight)/dy in pixel units, for the location gradient.
  scalar_t dweight_dx[4];
  scalar_t dweight_dy[4];
  bool inside[4];
  bool any;
};

// Pixel coordinates follow grid_sample(align_corners=False): x = loc_x * W - 0.5.
template <typename scalar_t>
inline Corners<scalar_t> bilinear_corners(scalar_t loc_x, scalar_t loc_y, int64_t height,
                                          int64_t width) {
  Corners<scalar_t> c;
  const scalar_t x = loc_x * (scalar_t)width - (scalar_t)0.5;
  const scalar_t y = loc_y * (scalar_t)height - (scalar_t)0.5;
  c.any = x > (scalar_t)-1 && y > (scalar_t)-1 && x < (scalar_t)width && y < (scalar_t)height;
  if (!c.any) return c;
  const scalar_t x0f = std::floor(x), y0f = std::floor(y);
  const int64_t x0 = (int64_t)x0f, y0 = (int64_t)y0f;
  const scalar_t lx = x - x0f, ly = y - y0f, hx = 1 - lx, hy = 1 - ly;
  const int64_t xs[4] = {x0, x0 + 1, x0, x0 + 1};
  const int64_t ys[4] = {y0, y0, y0 + 1, y0 + 1};
  const scalar_t w[4] = {hy * hx, hy * lx, ly * hx, ly * lx};
  const scalar_t dx[4] = {-hy, hy, -ly, ly};
  const scalar_t dy[4] = {-hx, -lx, hx, lx};
  for (int k = 0; k < 4; ++k) {
    const bool inside = xs[k] >= 0 && xs[k] < width && ys[k] >= 0 && ys[k] < height;
    c.inside[k] = inside;
    c.offset[k] = inside ? ys[k] * width + xs[k] : 0;
    c.weight[k] = inside ? w[k] : 0;
    c.dweight_dx[k] = inside ? dx[k] : 0;
    c.dweight_dy[k] = inside ? dy[k] : 0;
  }
  return c;
}

// kChannels > 0 fixes D at compile time so the channel loops unroll and vectorise fully;
// kChannels == 0 is the generic path.
template <typename scalar_t, int kChannels>
void forward_rows(const MsDeformAttnDims& dims, const scalar_t* value, const int64_t* shapes,
                  const int64_t* starts, const scalar_t* locations, const scalar_t* weights,
                  scalar_t* output, int64_t row_begin, int64_t row_end) {
  const int64_t M = dims.heads, L = dims.levels, P = dims.points, S = dims.value_len;
  const int64_t D = kChannels > 0 ? kChannels : dims.channels;
  const int64_t value_row = M * D;  // stride between consecutive positions of the value map
  for (int64_t row = row_begin; row < row_end; ++row) {  // row = n * Lq + q
    const int64_t n = row / dims.queries;
    for (int64_t m = 0; m < M; ++m) {
      scalar_t* out = output + (row * M + m) * D;
      std::fill(out, out + D, scalar_t(0));
      const scalar_t* loc = locations + (row * M + m) * L * P * 2;
      const scalar_t* attw = weights + (row * M + m) * L * P;
      for (int64_t l = 0; l < L; ++l) {
        const int64_t H = shapes[2 * l], W = shapes[2 * l + 1];
        const scalar_t* level_value = value + ((n * S + starts[l]) * M + m) * D;
        for (int64_t p = 0; p < P; ++p, loc += 2, ++attw) {
          const Corners<scalar_t> c = bilinear_corners(loc[0], loc[1], H, W);
          if (!c.any) continue;
          for (int k = 0; k < 4; ++k) {
            if (!c.inside[k]) continue;
            const scalar_t coef = *attw * c.weight[k];
            const scalar_t* v = level_value + c.offset[k] * value_row;
            for (int64_t d = 0; d < D; ++d) out[d] += coef * v[d];
          }
        }
      }
    }
  }
}

// Backward for queries [q_begin, q_end) of one (n, m) pair. grad_value_nm points at position 0 of
// this pair's grad map, whose consecutive positions are `grad_value_row` elements apart.
template <typename scalar_t, int kChannels>
void backward_queries(const MsDeformAttnDims& dims, const scalar_t* value, const int64_t* shapes,
                      const int64_t* starts, const scalar_t* locations, const scalar_t* weights,
                      const scalar_t* grad_output, scalar_t* grad_value_nm,
                      int64_t grad_value_row, scalar_t* grad_locations, scalar_t* grad_weights,
                      int64_t n, int64_t m, int64_t q_begin, int64_t q_end) {
  const int64_t M = dims.heads, L = dims.levels, P = dims.points, S = dims.value_len;
  const int64_t D = kChannels > 0 ? kChannels : dims.channels;
  const int64_t value_row = M * D;
  for (int64_t q = q_begin; q < q_end; ++q) {
    const int64_t head_row = (n * dims.queries + q) * M + m;
    const scalar_t* go = grad_output + head_row * D;
    const scalar_t* loc = locations + head_row * L * P * 2;
    const scalar_t* attw = weights + head_row * L * P;
    scalar_t* gloc = grad_locations + head_row * L * P * 2;
    scalar_t* gw = grad_weights + head_row * L * P;
    for (int64_t l = 0; l < L; ++l) {
      const int64_t H = shapes[2 * l], W = shapes[2 * l + 1];
      const scalar_t* level_value = value + ((n * S + starts[l]) * M + m) * D;
      scalar_t* level_grad = grad_value_nm + starts[l] * grad_value_row;
      for (int64_t p = 0; p < P; ++p, loc += 2, gloc += 2, ++attw, ++gw) {
        const Corners<scalar_t> c = bilinear_corners(loc[0], loc[1], H, W);
        gloc[0] = gloc[1] = *gw = scalar_t(0);
        if (!c.any) continue;
        scalar_t grad_weight = 0, grad_x = 0, grad_y = 0;
        for (int k = 0; k < 4; ++k) {
          if (!c.inside[k]) continue;
          const scalar_t* v = level_value + c.offset[k] * value_row;
          scalar_t* gv = level_grad + c.offset[k] * grad_value_row;
          const scalar_t coef = *attw * c.weight[k];
          scalar_t dot = 0;
          for (int64_t d = 0; d < D; ++d) {
            dot += go[d] * v[d];
            gv[d] += coef * go[d];
          }
          grad_weight += c.weight[k] * dot;
          grad_x += c.dweight_dx[k] * dot;
          grad_y += c.dweight_dy[k] * dot;
        }
        *gw = grad_weight;
        gloc[0] = *attw * grad_x * (scalar_t)W;
        gloc[1] = *attw * grad_y * (scalar_t)H;
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

// grad_value is scattered; to stay race-free each task owns one (n, m) slice of it. When there
// are fewer (n, m) pairs than threads, queries are split further and the extra splits accumulate
// into private buffers that are summed at the end.
template <typename scalar_t, int kChannels>
void backward_impl(const MsDeformAttnDims& dims, const scalar_t* value, const int64_t* shapes,
                   const int64_t* starts, const scalar_t* locations, const scalar_t* weights,
                   const scalar_t* grad_output, scalar_t* grad_value, scalar_t* grad_locations,
                   scalar_t* grad_weights, int num_threads) {
  const int64_t N = dims.batch, M = dims.heads, S = dims.value_len, Q = dims.queries;
  const int64_t D = dims.channels;
  const int threads = num_threads > 0 ? num_threads : hardware_threads();
  std::fill(grad_value, grad_value + N * S * M * D, scalar_t(0));
  // Query blocks below ~64 are not worth a private buffer of S*D.
  const int64_t pairs = N * M;
  int64_t splits = pairs >= threads ? 1 : (threads + pairs - 1) / pairs;
  splits = std::max<int64_t>(1, std::min<int64_t>(splits, Q / 64));
  const int64_t split_len = (Q + splits - 1) / splits;
  std::vector<scalar_t> scratch;
  if (splits > 1) scratch.assign((size_t)(pairs * (splits - 1) * S * D), scalar_t(0));

  parallel_for(pairs * splits, 1, threads, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t pair = task / splits, split = task % splits;
      const int64_t n = pair / M, m = pair % M;
      const int64_t q_begin = split * split_len, q_end = std::min(Q, q_begin + split_len);
      scalar_t* target;
      int64_t target_row;
      if (split == 0) {
        target = grad_value + n * S * M * D + m * D;
        target_row = M * D;
      } else {
        target = scratch.data() + (pair * (splits - 1) + split - 1) * S * D;
        target_row = D;
      }
      backward_queries<scalar_t, kChannels>(dims, value, shapes, starts, locations, weights,
                                            grad_output, target, target_row, grad_locations,
                                            grad_weights, n, m, q_begin, q_end);
    }
  });
  if (splits == 1) return;
  parallel_for(N * S, 256, threads, [&](int64_t begin, int64_t end) {
    for (int64_t ns = begin; ns < end; ++ns) {
      const int64_t n = ns / S, s = ns % S;
      for (int64_t m = 0; m < M; ++m) {
        scalar_t* gv = grad_value + (ns * M + m) * D;
        for (int64_t split = 1; split < splits; ++split) {
          const scalar_t* part =
              scratch.data() + ((n * M + m) * (splits - 1) + split - 1) * S * D + s * D;
          for (int64_t d = 0; d < D; ++d) gv[d] += part[d];
        }
      }
    }
  });
}

}  // namespace

template <typename scalar_t>
void ms_deform_attn_forward_cpu(const MsDeformAttnDims& dims, const scalar_t* value,
                                const int64_t* spatial_shapes, const int64_t* level_start_index,
                                const scalar_t* sampling_locations,
                                const scalar_t* attention_weights, scalar_t* output,
                                int num_threads) {
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
void ms_deform_attn_backward_cpu(const MsDeformAttnDims& dims, const scalar_t* value,
                                 const int64_t* spatial_shapes, const int64_t* level_start_index,
                                 const scalar_t* sampling_locations,
                                 const scalar_t* attention_weights, const scalar_t* grad_output,
                                 scalar_t* grad_value, scalar_t* grad_sampling_locations,
                                 scalar_t* grad_attention_weights, int num_threads) {
  switch (dims.channels) {
    case 32:
      return backward_impl<scalar_t, 32>(dims, value, spatial_shapes, level_start_index,
                                         sampling_locations, attention_weights, grad_output,
                                         grad_value, grad_sampling_locations,
                                         grad_attention_weights, num_threads);
    case 64:
      return backward_impl<scalar_t, 64>(dims, value, spatial_shapes, level_start_index,
                                         sampling_locations, attention_weights, grad_output,
                                         grad_value, grad_sampling_locations,
                                         grad_attention_weights, num_threads);
    default:
      return backward_impl<scalar_t, 0>(dims, value, spatial_shapes, level_start_index,
                                        sampling_locations, attention_weights, grad_output,
                                        grad_value, grad_sampling_locations,
                                        grad_attention_weights, num_threads);
  }
}

#define DEFORMDETR_INSTANTIATE(T)                                                               \
  template void ms_deform_attn_forward_cpu<T>(const MsDeformAttnDims&, const T*, const int64_t*, \
                                              const int64_t*, const T*, const T*, T*, int);     \
  template void ms_deform_attn_backward_cpu<T>(const MsDeformAttnDims&, const T*,                \
                                               const int64_t*, const int64_t*, const T*,         \
                                               const T*, const T*, T*, T*, T*, int);
DEFORMDETR_INSTANTIATE(float)
DEFORMDETR_INSTANTIATE(double)
#undef DEFORMDETR_INSTANTIATE

}  // namespace deformdetr
