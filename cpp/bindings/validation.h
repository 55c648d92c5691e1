// Argument checks shared by the bindings. Every failure raises a Python exception (ValueError or
// TypeError) whose message names the argument, what it is, and what was expected.
#pragma once

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

namespace deformdetr::bindings {

namespace nb = nanobind;
using AnyArray = nb::ndarray<>;
using ConstArray = nb::ndarray<nb::ro>;

enum class DType { float16, bfloat16, float32, float64, int32, int64, uint8, boolean, other };

DType dtype_of(const nb::dlpack::dtype& dt);
const char* dtype_name(DType dtype);

bool is_cuda(int32_t device_type);
std::string device_string(int32_t device_type, int32_t device_id);

// The properties of one array argument, read once, checked by name.
struct ArgInfo {
  const char* name;
  DType dtype;
  int32_t device_type;
  int32_t device_id;
  std::vector<int64_t> shape;
  std::vector<int64_t> strides;
  const void* data;

  template <typename A>
  static ArgInfo of(const char* name, const A& a) {
    ArgInfo info;
    info.name = name;
    info.dtype = dtype_of(a.dtype());
    info.device_type = a.device_type();
    info.device_id = a.device_id();
    for (size_t i = 0; i < a.ndim(); ++i) {
      info.shape.push_back((int64_t)a.shape(i));
      info.strides.push_back((int64_t)a.stride(i));
    }
    info.data = a.data();
    return info;
  }

  std::string shape_str() const;
  int64_t dim(size_t i) const { return shape[i]; }
  int64_t numel() const;
  bool contiguous() const;
  bool on_cuda() const { return is_cuda(device_type); }
};

[[noreturn]] void fail_value(const std::string& message);
[[noreturn]] void fail_type(const std::string& message);

void check_rank(const ArgInfo& a, size_t rank, const char* layout);
void check_contiguous(const ArgInfo& a);
void check_dtype(const ArgInfo& a, std::initializer_list<DType> allowed);
void check_same_dtype(const ArgInfo& a, const ArgInfo& reference);
void check_same_device(const ArgInfo& a, const ArgInfo& reference);
// Checks a.shape(i) == expected, with `what` naming the size in the message.
void check_dim(const ArgInfo& a, size_t i, int64_t expected, const char* what);
// Raises if a is on CUDA and this build has no CUDA kernels.
void check_cuda_available(const ArgInfo& a);
// Raises unless a lives in host memory (for functions that only have CPU kernels).
void check_cpu(const ArgInfo& a, const char* hint);
// Checks the whole shape, with a message that shows both shapes.
void check_shape(const ArgInfo& a, const std::vector<int64_t>& expected);

}  // namespace deformdetr::bindings
