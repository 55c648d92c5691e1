// Bindings of the CPU dropout kernel: validation, GIL release, dispatch by dtype.
#include <cmath>
#include <string>

#include "deformdetr/dropout.h"
#include "dispatch.h"
#include "validation.h"

namespace deformdetr::bindings {

namespace {

constexpr const char* kCpuOnly =
    "the dropout kernel runs on the CPU (deformdetr.ops.dropout sends other tensors to torch's)";

void dropout(const ConstArray& input, double p, uint64_t seed, nb::ndarray<> output,
             nb::ndarray<> keep_mask, int num_threads) {
  if (!(p >= 0 && p <= 1)) fail_value("p must be in [0, 1], got " + std::to_string(p));
  const ArgInfo in = ArgInfo::of("input", input);
  check_cpu(in, kCpuOnly);
  check_dtype(in, CpuFloats());
  check_contiguous(in);
  const ArgInfo out = ArgInfo::of("output", output);
  check_cpu(out, kCpuOnly);
  check_same_dtype(out, in);
  check_shape(out, in.shape);
  check_contiguous(out);
  const ArgInfo mask = ArgInfo::of("keep_mask", keep_mask);
  check_cpu(mask, kCpuOnly);
  check_dtype(mask, {DType::boolean});
  check_shape(mask, in.shape);
  check_contiguous(mask);
  nb::gil_scoped_release release;
  dispatch(in.dtype, CpuFloats(), [&](auto type) {
    using T = typename decltype(type)::type;
    dropout_cpu<T>(static_cast<const T*>(in.data), in.numel(), p, seed,
                   static_cast<T*>(output.data()), static_cast<bool*>(keep_mask.data()), num_threads);
  });
}

void dropout_backward(const ConstArray& grad_output, const ConstArray& keep_mask, double scale,
                      nb::ndarray<> grad_input, int num_threads) {
  const ArgInfo grad = ArgInfo::of("grad_output", grad_output);
  check_cpu(grad, kCpuOnly);
  check_dtype(grad, CpuFloats());
  check_contiguous(grad);
  const ArgInfo mask = ArgInfo::of("keep_mask", keep_mask);
  check_cpu(mask, kCpuOnly);
  check_dtype(mask, {DType::boolean});
  check_shape(mask, grad.shape);
  check_contiguous(mask);
  const ArgInfo out = ArgInfo::of("grad_input", grad_input);
  check_cpu(out, kCpuOnly);
  check_same_dtype(out, grad);
  check_shape(out, grad.shape);
  check_contiguous(out);
  nb::gil_scoped_release release;
  dispatch(grad.dtype, CpuFloats(), [&](auto type) {
    using T = typename decltype(type)::type;
    dropout_backward_cpu<T>(static_cast<const T*>(grad.data), static_cast<const bool*>(mask.data),
                            grad.numel(), scale, static_cast<T*>(grad_input.data()), num_threads);
  });
}

}  // namespace

void register_dropout(nb::module_& m) {
  m.def("dropout", &dropout, nb::arg("input"), nb::arg("p"), nb::arg("seed"), nb::arg("output"),
        nb::arg("keep_mask"), nb::arg("num_threads") = 0,
        "Writes input's dropout (each element dropped with probability p, the rest scaled by "
        "1 / (1 - p); the random stream a function of seed and the element's index) into output "
        "and which elements were kept into keep_mask (bool).");
  m.def("dropout_backward", &dropout_backward, nb::arg("grad_output"), nb::arg("keep_mask"),
        nb::arg("scale"), nb::arg("grad_input"), nb::arg("num_threads") = 0,
        "Writes grad_output * (keep_mask ? scale : 0) into grad_input.");
}

}  // namespace deformdetr::bindings
