// Public CPU entry points: pick the fastest compiled variant this CPU supports.
#include "deformdetr/ms_deform_attn.h"

namespace deformdetr {

#define DEFORMDETR_DECLARE_VARIANT(NS)                                                       \
  namespace NS {                                                                             \
  template <typename T>                                                                      \
  void forward(const MsDeformAttnDims&, const T*, const int64_t*, const int64_t*, const T*,  \
               const T*, T*, int);                                                           \
  template <typename T>                                                                      \
  void backward(const MsDeformAttnDims&, const T*, const int64_t*, const int64_t*, const T*, \
                const T*, const T*, T*, T*, T*, int);                                        \
  }
DEFORMDETR_DECLARE_VARIANT(cpu_baseline)
#ifdef DEFORMDETR_CPU_AVX2
DEFORMDETR_DECLARE_VARIANT(cpu_avx2)
#endif
#undef DEFORMDETR_DECLARE_VARIANT

namespace {
bool use_avx2() {
#ifdef DEFORMDETR_CPU_AVX2
  static const bool supported = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return supported;
#else
  return false;
#endif
}
}  // namespace

template <typename scalar_t>
void ms_deform_attn_forward_cpu(const MsDeformAttnDims& dims, const scalar_t* value,
                                const int64_t* spatial_shapes, const int64_t* level_start_index,
                                const scalar_t* sampling_locations,
                                const scalar_t* attention_weights, scalar_t* output,
                                int num_threads) {
#ifdef DEFORMDETR_CPU_AVX2
  if (use_avx2())
    return cpu_avx2::forward<scalar_t>(dims, value, spatial_shapes, level_start_index,
                                       sampling_locations, attention_weights, output, num_threads);
#endif
  cpu_baseline::forward<scalar_t>(dims, value, spatial_shapes, level_start_index,
                                  sampling_locations, attention_weights, output, num_threads);
}

template <typename scalar_t>
void ms_deform_attn_backward_cpu(const MsDeformAttnDims& dims, const scalar_t* value,
                                 const int64_t* spatial_shapes, const int64_t* level_start_index,
                                 const scalar_t* sampling_locations,
                                 const scalar_t* attention_weights, const scalar_t* grad_output,
                                 scalar_t* grad_value, scalar_t* grad_sampling_locations,
                                 scalar_t* grad_attention_weights, int num_threads) {
#ifdef DEFORMDETR_CPU_AVX2
  if (use_avx2())
    return cpu_avx2::backward<scalar_t>(
        dims, value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
        grad_output, grad_value, grad_sampling_locations, grad_attention_weights, num_threads);
#endif
  cpu_baseline::backward<scalar_t>(dims, value, spatial_shapes, level_start_index,
                                   sampling_locations, attention_weights, grad_output, grad_value,
                                   grad_sampling_locations, grad_attention_weights, num_threads);
}

template void ms_deform_attn_forward_cpu<float>(const MsDeformAttnDims&, const float*,
                                                const int64_t*, const int64_t*, const float*,
                                                const float*, float*, int);
template void ms_deform_attn_forward_cpu<double>(const MsDeformAttnDims&, const double*,
                                                 const int64_t*, const int64_t*, const double*,
                                                 const double*, double*, int);
template void ms_deform_attn_backward_cpu<float>(const MsDeformAttnDims&, const float*,
                                                 const int64_t*, const int64_t*, const float*,
                                                 const float*, const float*, float*, float*, float*,
                                                 int);
template void ms_deform_attn_backward_cpu<double>(const MsDeformAttnDims&, const double*,
                                                  const int64_t*, const int64_t*, const double*,
                                                  const double*, const double*, double*, double*,
                                                  double*, int);

}  // namespace deformdetr
