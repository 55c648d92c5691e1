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
// Sampling is bilinear with zero padding and align_corners=False (deformdetr/bilinear.h).
// The caller validates shapes; kernels assume valid input.
#pragma once

#include <cstdint>
#include <type_traits>

#include "deformdetr/float16.h"

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

// The inputs of both passes. T is float or double on the CPU; on CUDA also Float16 or BFloat16.
// On CUDA every pointer, spatial_shapes and level_start_index included, is device memory.
template <typename T>
struct MsDeformAttnInputs {
  MsDeformAttnDims dims;
  const T* value;
  const int64_t* spatial_shapes;
  const int64_t* level_start_index;
  const T* sampling_locations;
  const T* attention_weights;
};

template <typename T>
struct MsDeformAttnForwardArgs : MsDeformAttnInputs<T> {
  T* output;
};

// The type grad_value is summed in: float for the 16-bit types, whose own atomic additions would
// lose the small contributions of many points.
template <typename T>
struct GradValueAccum {
  using type = typename std::conditional<
      std::is_same<T, Float16>::value || std::is_same<T, BFloat16>::value, float, T>::type;
};

// The backward writes every element of the three gradients.
template <typename T>
struct MsDeformAttnBackwardArgs : MsDeformAttnInputs<T> {
  const T* grad_output;
  typename GradValueAccum<T>::type* grad_value;
  T* grad_sampling_locations;
  T* grad_attention_weights;
};

// Each pass is one overload per device; the type of its arguments says which pass it is.

// ---- CPU (float, double). Multi-threaded on num_threads threads (<= 0: all).
template <typename T>
void ms_deform_attn_cpu(const MsDeformAttnForwardArgs<T>& args, int num_threads);
template <typename T>
void ms_deform_attn_cpu(const MsDeformAttnBackwardArgs<T>& args, int num_threads);

// ---- CUDA (float, double, Float16, BFloat16). Work is queued on `stream` (a cudaStream_t) of
// GPU `device`; nothing synchronises. A level whose (start, H, W) would reach outside value is
// skipped, since reading device-side shapes on the host would synchronise; other inconsistent
// geometry (levels that overlap or leave gaps) is computed as given, unlike on the CPU, where the
// bindings refuse it.
template <typename T>
void ms_deform_attn_cuda(const MsDeformAttnForwardArgs<T>& args, int device, void* stream);
template <typename T>
void ms_deform_attn_cuda(const MsDeformAttnBackwardArgs<T>& args, int device, void* stream);

}  // namespace deformdetr
