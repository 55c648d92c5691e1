// Multi-scale deformable attention (Zhu et al., Deformable DETR), forward and backward.
//
// Layouts (all contiguous, row-major), with N batch, S value length (sum of H*W over levels),
// M heads, D channels per head, L levels, Lq queries, P points:
//   value               (N, S, M, D)
//   spatial_shapes      (L, 2) int64, (H, W) per level
//   level_start_index   (L,)   int64, offset of each level in S
//   sampling_locations  (N, Lq, M, L, P, 2), normalised (x, y) in [0, 1]
//   attention_weights   (N, Lq, M, L, P)
//   output              (N, Lq, M, D)
// Sampling is bilinear with zero padding and align_corners=False: pixel x = loc_x * W - 0.5.
// The caller validates shapes; kernels assume valid input.
#pragma once

#include <cstdint>

namespace deformdetr {

struct MsDeformAttnDims {
  int64_t batch;
  int64_t value_len;
  int64_t heads;
  int64_t channels;
  int64_t levels;
  int64_t queries;
  int64_t points;
};

// ---- CPU (float, double). Multi-threaded on num_threads threads (<= 0: all).
template <typename scalar_t>
void ms_deform_attn_forward_cpu(const MsDeformAttnDims& dims, const scalar_t* value,
                                const int64_t* spatial_shapes, const int64_t* level_start_index,
                                const scalar_t* sampling_locations,
                                const scalar_t* attention_weights, scalar_t* output,
                                int num_threads);

// Writes every element of grad_value, grad_sampling_locations and grad_attention_weights.
template <typename scalar_t>
void ms_deform_attn_backward_cpu(const MsDeformAttnDims& dims, const scalar_t* value,
                                 const int64_t* spatial_shapes, const int64_t* level_start_index,
                                 const scalar_t* sampling_locations,
                                 const scalar_t* attention_weights, const scalar_t* grad_output,
                                 scalar_t* grad_value, scalar_t* grad_sampling_locations,
                                 scalar_t* grad_attention_weights, int num_threads);

// ---- CUDA. scalar_t is float, double, __half or __nv_bfloat16 (passed as void pointers with a
// CudaDtype tag so that this header stays plain C++). Work is queued on `stream` (a cudaStream_t)
// of GPU `device`; nothing synchronises. grad_value is accumulated in `accum_t` (float for 16-bit
// types): the caller passes a buffer of that type and converts it. spatial_shapes and
// level_start_index live on the device, so they are not checked: a level whose (start, H, W)
// would reach outside value is skipped, and other inconsistent geometry (levels that overlap or
// leave gaps) is computed as given, unlike on the CPU, where the bindings refuse it.
enum class CudaDtype { float32, float64, float16, bfloat16 };

void ms_deform_attn_forward_cuda(CudaDtype dtype, const MsDeformAttnDims& dims, const void* value,
                                 const int64_t* spatial_shapes, const int64_t* level_start_index,
                                 const void* sampling_locations, const void* attention_weights,
                                 void* output, int device, void* stream);

// grad_value_accum is float for float16/bfloat16/float32 and double for float64.
void ms_deform_attn_backward_cuda(CudaDtype dtype, const MsDeformAttnDims& dims, const void* value,
                                  const int64_t* spatial_shapes, const int64_t* level_start_index,
                                  const void* sampling_locations, const void* attention_weights,
                                  const void* grad_output, void* grad_value_accum,
                                  void* grad_sampling_locations, void* grad_attention_weights,
                                  int device, void* stream);

}  // namespace deformdetr
