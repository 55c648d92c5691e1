// The CPU kernels for any x86-64/ARM CPU (the compiler's default instruction set).
#define DEFORMDETR_CPU_VARIANT cpu_baseline
#include "ms_deform_attn_cpu_kernels.h"
