// The CPU kernels compiled for AVX2 + FMA (CMake adds the flags to this file only); chosen at run
// time when the CPU has them, so one build runs everywhere and fast where it can.
#define DEFORMDETR_CPU_VARIANT cpu_avx2
#include "ms_deform_attn_cpu_kernels.h"
