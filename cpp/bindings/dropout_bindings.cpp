// Bindings of the CPU dropout kernel: validation, GIL release, dispatch by dtype.
#include <string>

#include "deformdetr/dropout.h"
#include "dispatch.h"
#include "validation.h"

namespace deformdetr::bindings {

namespace {

constexpr const char* kCpuOnly =
    "the dropout kernel runs on the CPU (deformdetr.ops.dropout sends other tensors to torch's)";

template <typename Array>
ArgInfo cpu_array(const char* name, const Array& array) {
  ArgInfo a = ArgInfo::of(name, array);
  check_cpu(a, kCpuOnly);
  check_contiguous(a);
  return a;
}

ArgInfo floats(const char* name, const ConstArray& array) {
  ArgInfo a = cpu_array(name, array);
  check_dtype(a, CpuFloats());
  return a;
}

template <typename Array>
ArgInfo mask_like(const char* name, const Array& array, const ArgInfo& like) {
  ArgInfo a = cpu_array(name, array);
  check_dtype(a, {DType::boolean});
  check_shape(a, like.shape);
  return a;
}

ArgInfo result_like(const char* name, const nb::ndarray<>& array, const ArgInfo& like) {
  ArgInfo a = cpu_array(name, array);
  check_same_dtype(a, like);
  check_shape(a, like.shape);
  return a;
}

template <bool relu>
void dropout(const ConstArray& input, double p, uint64_t seed, nb::ndarray<> output,
             nb::ndarray<> keep_mask, int num_threads) {
  if (!(p >= 0 && p <= 1)) fail_value("p must be in [0, 1], got " + std::to_string(p));
  const ArgInfo in = floats("input", input);
  result_like("output", output, in);
  mask_like("keep_mask", keep_mask, in);
  nb::gil_scoped_release release;
  dispatch(in.dtype, CpuFloats(), [&](auto type) {
    using T = typename decltype(type)::type;
    const auto kernel = relu ? relu_dropout_cpu<T> : dropout_cpu<T>;
    kernel(static_cast<const T*>(in.data), in.numel(), p, seed, static_cast<T*>(output.data()),
           static_cast<bool*>(keep_mask.data()), num_threads);
  });
}

void dropout_backward(const ConstArray& grad_output, const ConstArray& keep_mask, double scale,
                      nb::ndarray<> grad_input, int num_threads) {
  const ArgInfo grad = floats("grad_output", grad_output);
  const ArgInfo mask = mask_like("keep_mask", keep_mask, grad);
  result_like("grad_input", grad_input, grad);
  nb::gil_scoped_release release;
  dispatch(grad.dtype, CpuFloats(), [&](auto type) {
    using T = typename decltype(type)::type;
    dropout_backward_cpu<T>(static_cast<const T*>(grad.data), static_cast<const bool*>(mask.data),
                            grad.numel(), scale, static_cast<T*>(grad_input.data()), num_threads);
  });
}

}  // namespace

void register_dropout(nb::module_& m) {
  m.def("dropout", &dropout<false>, nb::arg("input"), nb::arg("p"), nb::arg("seed"), nb::arg("output"),
        nb::arg("keep_mask"), nb::arg("num_threads") = 0,
        "Writes input's dropout (each element dropped with probability p, the rest scaled by "
        "1 / (1 - p); the random stream a function of seed and the element's index) into output "
        "and which elements were kept into keep_mask (bool).");
  m.def("relu_dropout", &dropout<true>, nb::arg("input"), nb::arg("p"), nb::arg("seed"), nb::arg("output"),
        nb::arg("keep_mask"), nb::arg("num_threads") = 0,
        "dropout of relu(input) in one pass, the same draws as dropout for the same seed; keep_mask "
        "is kept and input > 0, so that dropout_backward with it is the gradient of both.");
  m.def("dropout_backward", &dropout_backward, nb::arg("grad_output"), nb::arg("keep_mask"),
        nb::arg("scale"), nb::arg("grad_input"), nb::arg("num_threads") = 0,
        "Writes grad_output * (keep_mask ? scale : 0) into grad_input.");
}

}  // namespace deformdetr::bindings
