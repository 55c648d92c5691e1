#include "validation.h"

#include <sstream>

namespace deformdetr::bindings {

namespace {

// Each DType with its name and its DLPack (code, bits).
struct DTypeEntry {
  DType dtype;
  const char* name;
  nb::dlpack::dtype_code code;
  uint8_t bits;
};

using Code = nb::dlpack::dtype_code;
constexpr DTypeEntry kDTypes[] = {
    {DType::float16, "float16", Code::Float, 16}, {DType::bfloat16, "bfloat16", Code::Bfloat, 16},
    {DType::float32, "float32", Code::Float, 32}, {DType::float64, "float64", Code::Float, 64},
    {DType::int32, "int32", Code::Int, 32},       {DType::int64, "int64", Code::Int, 64},
    {DType::uint8, "uint8", Code::UInt, 8},       {DType::boolean, "bool", Code::Bool, 8},
};

}  // namespace

DType dtype_of(const nb::dlpack::dtype& dt) {
  if (dt.lanes == 1)
    for (const DTypeEntry& e : kDTypes)
      if (dt.code == (uint8_t)e.code && dt.bits == e.bits) return e.dtype;
  return DType::other;
}

const char* dtype_name(DType dtype) {
  for (const DTypeEntry& e : kDTypes)
    if (e.dtype == dtype) return e.name;
  return "an unsupported dtype";
}

bool is_cuda(int32_t device_type) {
  return device_type == nb::device::cuda::value || device_type == nb::device::cuda_managed::value;
}

std::string device_string(int32_t device_type, int32_t device_id) {
  if (device_type == nb::device::cpu::value) return "cpu";
  if (is_cuda(device_type)) return "cuda:" + std::to_string(device_id);
  return "device type " + std::to_string(device_type);
}

std::string ArgInfo::shape_str() const {
  std::ostringstream out;
  out << "(";
  for (size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
  if (shape.size() == 1) out << ",";
  out << ")";
  return out.str();
}

int64_t ArgInfo::numel() const {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

bool ArgInfo::contiguous() const {
  if (numel() == 0) return true;  // an empty array has no layout (numpy gives it stride 0)
  int64_t expected = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    if (shape[i] != 1 && strides[i] != expected) return false;
    expected *= shape[i];
  }
  return true;
}

void fail_value(const std::string& message) { throw nb::value_error(message.c_str()); }
void fail_type(const std::string& message) { throw nb::type_error(message.c_str()); }

void check_rank(const ArgInfo& a, size_t rank, const char* layout) {
  if (a.shape.size() != rank) {
    std::ostringstream out;
    out << a.name << " must have " << rank << " dimensions " << layout << ", got shape "
        << a.shape_str();
    fail_value(out.str());
  }
}

void check_contiguous(const ArgInfo& a) {
  if (!a.contiguous())
    fail_value(std::string(a.name) + " must be contiguous (call .contiguous()), got shape " +
               a.shape_str() + " with non-contiguous strides");
}

void check_dtype(const ArgInfo& a, std::initializer_list<DType> allowed) {
  for (DType d : allowed)
    if (d == a.dtype) return;
  std::string expected;
  for (DType d : allowed) expected += std::string(expected.empty() ? "" : " or ") + dtype_name(d);
  fail_type(std::string(a.name) + " must be " + expected + " on " +
            device_string(a.device_type, a.device_id) + ", got " + dtype_name(a.dtype));
}

void check_same_dtype(const ArgInfo& a, const ArgInfo& reference) {
  if (a.dtype != reference.dtype)
    fail_type(std::string(a.name) + " must have the dtype of " + reference.name + " (" +
              dtype_name(reference.dtype) + "), got " + dtype_name(a.dtype));
}

void check_same_device(const ArgInfo& a, const ArgInfo& reference) {
  if (a.device_type != reference.device_type || a.device_id != reference.device_id)
    fail_value(std::string(a.name) + " must be on the device of " + reference.name + " (" +
               device_string(reference.device_type, reference.device_id) + "), got " +
               device_string(a.device_type, a.device_id));
}

void check_dim(const ArgInfo& a, size_t i, int64_t expected, const char* what) {
  if (a.shape[i] != expected) {
    std::ostringstream out;
    out << a.name << " has shape " << a.shape_str() << ": dimension " << i << " (" << what
        << ") must be " << expected << ", got " << a.shape[i];
    fail_value(out.str());
  }
}

void check_cuda_available(const ArgInfo& a) {
#ifndef DEFORMDETR_WITH_CUDA
  if (a.on_cuda())
    fail_value(std::string(a.name) +
               " is a CUDA tensor, but this deformdetr build has no CUDA kernels. Rebuild with a "
               "CUDA compiler on PATH (nvcc), e.g. `pip install --no-build-isolation "
               "--force-reinstall .`, and make sure -Cmake.define.DEFORMDETR_CUDA=OFF is not set.");
#else
  (void)a;
#endif
  if (a.device_type != nb::device::cpu::value && !a.on_cuda())
    fail_value(std::string(a.name) + " is on " + device_string(a.device_type, a.device_id) +
               "; deformdetr kernels run on CPU and CUDA tensors only");
}

void check_cpu(const ArgInfo& a, const char* hint) {
  if (a.device_type != nb::device::cpu::value)
    fail_value(std::string(a.name) + " must be on the CPU, got a tensor on " +
               device_string(a.device_type, a.device_id) + "; " + hint);
}

void check_shape(const ArgInfo& a, const std::vector<int64_t>& expected) {
  if (a.shape != expected) {
    ArgInfo e = a;
    e.shape = expected;
    fail_value(std::string(a.name) + " must have shape " + e.shape_str() + ", got " +
               a.shape_str());
  }
}

}  // namespace deformdetr::bindings
