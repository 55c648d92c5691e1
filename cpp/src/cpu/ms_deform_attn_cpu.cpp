// Public CPU entry points: pick the fastest compiled variant this CPU supports.
#include "deformdetr/ms_deform_attn.h"

namespace deformdetr {

#define DEFORMDETR_DECLARE_VARIANT(NS)                          \
  namespace NS {                                                \
  template <typename T>                                         \
  void run(const MsDeformAttnForwardArgs<T>&, int num_threads); \
  template <typename T>                                         \
  void run(const MsDeformAttnBackwardArgs<T>&, int num_threads); \
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

template <typename Args>
void run_fastest_variant(const Args& args, int num_threads) {
#ifdef DEFORMDETR_CPU_AVX2
  if (use_avx2()) return cpu_avx2::run(args, num_threads);
#endif
  cpu_baseline::run(args, num_threads);
}

}  // namespace

template <typename T>
void ms_deform_attn_cpu(const MsDeformAttnForwardArgs<T>& args, int num_threads) {
  run_fastest_variant(args, num_threads);
}

template <typename T>
void ms_deform_attn_cpu(const MsDeformAttnBackwardArgs<T>& args, int num_threads) {
  run_fastest_variant(args, num_threads);
}

template void ms_deform_attn_cpu<float>(const MsDeformAttnForwardArgs<float>&, int);
template void ms_deform_attn_cpu<double>(const MsDeformAttnForwardArgs<double>&, int);
template void ms_deform_attn_cpu<float>(const MsDeformAttnBackwardArgs<float>&, int);
template void ms_deform_attn_cpu<double>(const MsDeformAttnBackwardArgs<double>&, int);

}  // namespace deformdetr
