// The one dtype dispatch of the bindings: maps an array's DType to the C++ type the kernels take
// and calls a generic lambda with it, e.g.
//
//   dispatch(a.dtype, CpuFloats(), [&](auto type) {
//     using T = typename decltype(type)::type;
//     kernel(static_cast<const T*>(a.data), ...);
//   });
//
// The type lists also say which dtypes an argument may have (check_dtype(a, CpuFloats())), so
// the set a kernel accepts is written once.
#pragma once

#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

#include "deformdetr/float16.h"
#include "validation.h"

namespace deformdetr::bindings {

template <typename T>
struct Type {
  using type = T;
};

template <typename... Ts>
struct Types {};

using CpuFloats = Types<float, double>;
using CudaFloats = Types<float, double, Float16, BFloat16>;

template <typename T>
constexpr DType dtype_of() {
  if constexpr (std::is_same_v<T, float>) {
    return DType::float32;
  } else if constexpr (std::is_same_v<T, double>) {
    return DType::float64;
  } else if constexpr (std::is_same_v<T, Float16>) {
    return DType::float16;
  } else {
    static_assert(std::is_same_v<T, BFloat16>, "a kernel type without a DType");
    return DType::bfloat16;
  }
}

template <typename... Ts>
void check_dtype(const ArgInfo& a, Types<Ts...>) {
  check_dtype(a, {dtype_of<Ts>()...});
}

// Calls fn(Type<T>()) for the T of Ts whose DType is `dtype`, and returns what it returns. The
// caller has checked the dtype (check_dtype above): another one is a bug in the bindings.
template <typename T, typename... Rest, typename Fn>
decltype(auto) dispatch(DType dtype, Types<T, Rest...>, Fn&& fn) {
  if (dtype == dtype_of<T>()) return fn(Type<T>());
  if constexpr (sizeof...(Rest) > 0)
    return dispatch(dtype, Types<Rest...>(), std::forward<Fn>(fn));
  else
    throw std::logic_error(std::string("deformdetr bindings: no kernel for dtype ") +
                           dtype_name(dtype));
}

}  // namespace deformdetr::bindings
