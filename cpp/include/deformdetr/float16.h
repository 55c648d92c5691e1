// The 16-bit floating types as plain storage, so that plain-C++ code (the headers, the bindings)
// can name them. Only CUDA code computes with them, as __half and __nv_bfloat16, which have the
// same size and layout.
#pragma once

#include <cstdint>

namespace deformdetr {

struct Float16 {
  uint16_t bits;
};

struct BFloat16 {
  uint16_t bits;
};

}  // namespace deformdetr
