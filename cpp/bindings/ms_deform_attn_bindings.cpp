// Bindings of multi-scale deformable attention: validation, GIL release, dispatch by device/dtype.
#include <sstream>

#include "deformdetr/ms_deform_attn.h"
#include "dispatch.h"
#include "validation.h"

namespace deformdetr::bindings {

namespace {

struct AttnArgs {
  ArgInfo value, spatial_shapes, level_start_index, sampling_locations, attention_weights;
  MsDeformAttnDims dims;
};

// The levels must tile value exactly: positive (H, W), each starting where the one before ends,
// together as long as value (S). Areas are compared by division: H * W itself may overflow
// (H = W = 2^32 multiplies to 0).
void check_level_geometry(const int64_t* shapes, const int64_t* starts, int64_t levels,
                          int64_t value_len) {
  int64_t offset = 0;
  for (int64_t l = 0; l < levels; ++l) {
    const int64_t h = shapes[2 * l], w = shapes[2 * l + 1];
    if (h < 1 || w < 1) {
      std::ostringstream out;
      out << "spatial_shapes[" << l << "] = (" << h << ", " << w << ") must be positive (H, W)";
      fail_value(out.str());
    }
    if (starts[l] != offset) {
      std::ostringstream out;
      out << "level_start_index[" << l << "] must be " << offset
          << " (the sum of H*W of the levels before it), got " << starts[l];
      fail_value(out.str());
    }
    if (w > (value_len - offset) / h) {
      std::ostringstream out;
      out << "spatial_shapes[" << l << "] = (" << h << ", " << w
          << ") reaches past the end of value: the levels' H*W add up to more than its length S = "
          << value_len;
      fail_value(out.str());
    }
    offset += h * w;
  }
  if (offset != value_len) {
    std::ostringstream out;
    out << "the length S = " << value_len
        << " of value (its dimension 1) must equal the sum of H*W over spatial_shapes = "
        << offset;
    fail_value(out.str());
  }
}

// spatial_shapes (L, 2) and level_start_index (L,), int64, at least one level; returns L.
int64_t check_level_arrays(const ArgInfo& shapes, const ArgInfo& starts) {
  check_rank(shapes, 2, "(L, 2)");
  check_rank(starts, 1, "(L,)");
  check_dtype(shapes, {DType::int64});
  check_dtype(starts, {DType::int64});
  if (shapes.dim(0) < 1)
    fail_value("spatial_shapes must hold at least one level, got shape (0, 2)");
  check_dim(shapes, 1, 2, "(H, W)");
  check_dim(starts, 0, shapes.dim(0), "levels L of spatial_shapes");
  return shapes.dim(0);
}

// Checks the five inputs against each other and against the official layouts; returns the sizes.
AttnArgs check_inputs(const ConstArray& value, const ConstArray& spatial_shapes,
                      const ConstArray& level_start_index, const ConstArray& sampling_locations,
                      const ConstArray& attention_weights) {
  AttnArgs a{ArgInfo::of("value", value),
             ArgInfo::of("spatial_shapes", spatial_shapes),
             ArgInfo::of("level_start_index", level_start_index),
             ArgInfo::of("sampling_locations", sampling_locations),
             ArgInfo::of("attention_weights", attention_weights),
             {}};
  check_cuda_available(a.value);
  check_rank(a.value, 4, "(N, S, M, D)");
  a.dims.levels = check_level_arrays(a.spatial_shapes, a.level_start_index);
  check_rank(a.sampling_locations, 6, "(N, Lq, M, L, P, 2)");
  check_rank(a.attention_weights, 5, "(N, Lq, M, L, P)");
  if (a.value.on_cuda())
    check_dtype(a.value, CudaFloats());
  else
    check_dtype(a.value, CpuFloats());
  check_same_dtype(a.sampling_locations, a.value);
  check_same_dtype(a.attention_weights, a.value);
  for (const ArgInfo* x :
       {&a.spatial_shapes, &a.level_start_index, &a.sampling_locations, &a.attention_weights})
    check_same_device(*x, a.value);
  for (const ArgInfo* x : {&a.value, &a.spatial_shapes, &a.level_start_index, &a.sampling_locations,
                           &a.attention_weights})
    check_contiguous(*x);

  MsDeformAttnDims& d = a.dims;
  d.batch = a.value.dim(0);
  d.value_len = a.value.dim(1);
  d.heads = a.value.dim(2);
  d.channels = a.value.dim(3);
  d.queries = a.sampling_locations.dim(1);
  d.points = a.sampling_locations.dim(4);
  check_dim(a.sampling_locations, 0, d.batch, "batch N of value");
  check_dim(a.sampling_locations, 2, d.heads, "heads M of value");
  check_dim(a.sampling_locations, 3, d.levels, "levels L of spatial_shapes");
  check_dim(a.sampling_locations, 5, 2, "(x, y)");
  const int64_t expected_weights[5] = {d.batch, d.queries, d.heads, d.levels, d.points};
  const char* weight_dims[5] = {"batch N", "queries Lq", "heads M", "levels L", "points P"};
  for (size_t i = 0; i < 5; ++i)
    check_dim(a.attention_weights, i, expected_weights[i], weight_dims[i]);

  // Level geometry can only be read on the host; on CUDA the kernels skip any level that would
  // fall outside value instead of reading out of bounds.
  if (!a.value.on_cuda())
    check_level_geometry(static_cast<const int64_t*>(a.spatial_shapes.data),
                         static_cast<const int64_t*>(a.level_start_index.data), d.levels,
                         d.value_len);
  return a;
}

// An output buffer: contiguous, on the inputs' device, of the expected shape and dtype.
ArgInfo check_output(const char* name, const nb::ndarray<>& array, const ArgInfo& like,
                     std::initializer_list<int64_t> shape, DType dtype) {
  ArgInfo out = ArgInfo::of(name, array);
  check_same_device(out, like);
  check_dtype(out, {dtype});
  check_shape(out, std::vector<int64_t>(shape));
  check_contiguous(out);
  return out;
}

template <typename T>
MsDeformAttnInputs<T> typed_inputs(const AttnArgs& a) {
  return {a.dims,
          static_cast<const T*>(a.value.data),
          static_cast<const int64_t*>(a.spatial_shapes.data),
          static_cast<const int64_t*>(a.level_start_index.data),
          static_cast<const T*>(a.sampling_locations.data),
          static_cast<const T*>(a.attention_weights.data)};
}

// Runs one pass on value's device: make_args(Type<T>()) gives the pass's arguments for the
// element type T of value, among the types that device has kernels for. (check_inputs refuses
// CUDA tensors in builds without CUDA.)
template <typename MakeArgs>
void run_on_device(const AttnArgs& a, int num_threads, uintptr_t stream, MakeArgs&& make_args) {
#ifdef DEFORMDETR_WITH_CUDA
  if (a.value.on_cuda())
    return dispatch(a.value.dtype, CudaFloats(), [&](auto type) {
      ms_deform_attn_cuda(make_args(type), a.value.device_id, reinterpret_cast<void*>(stream));
    });
#endif
  (void)stream;
  dispatch(a.value.dtype, CpuFloats(),
           [&](auto type) { ms_deform_attn_cpu(make_args(type), num_threads); });
}

void forward(const ConstArray& value, const ConstArray& spatial_shapes,
             const ConstArray& level_start_index, const ConstArray& sampling_locations,
             const ConstArray& attention_weights, nb::ndarray<> output, int num_threads,
             uintptr_t stream) {
  const AttnArgs a =
      check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  const MsDeformAttnDims& d = a.dims;
  check_output("output", output, a.value, {d.batch, d.queries, d.heads, d.channels},
               a.value.dtype);
  nb::gil_scoped_release release;
  run_on_device(a, num_threads, stream, [&](auto type) {
    using T = typename decltype(type)::type;
    return MsDeformAttnForwardArgs<T>{typed_inputs<T>(a), static_cast<T*>(output.data())};
  });
}

void backward(const ConstArray& value, const ConstArray& spatial_shapes,
              const ConstArray& level_start_index, const ConstArray& sampling_locations,
              const ConstArray& attention_weights, const ConstArray& grad_output,
              nb::ndarray<> grad_value, nb::ndarray<> grad_sampling_locations,
              nb::ndarray<> grad_attention_weights, int num_threads, uintptr_t stream) {
  const AttnArgs a =
      check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  const MsDeformAttnDims& d = a.dims;
  const ArgInfo go = ArgInfo::of("grad_output", grad_output);
  check_same_device(go, a.value);
  check_same_dtype(go, a.value);
  check_shape(go, {d.batch, d.queries, d.heads, d.channels});
  check_contiguous(go);
  // 16-bit CUDA inputs accumulate grad_value in float32 (atomics in half precision lose sums).
  const bool wide_accum = a.value.dtype == DType::float16 || a.value.dtype == DType::bfloat16;
  check_output("grad_value", grad_value, a.value, {d.batch, d.value_len, d.heads, d.channels},
               wide_accum ? DType::float32 : a.value.dtype);
  check_output("grad_sampling_locations", grad_sampling_locations, a.value,
               {d.batch, d.queries, d.heads, d.levels, d.points, 2}, a.value.dtype);
  check_output("grad_attention_weights", grad_attention_weights, a.value,
               {d.batch, d.queries, d.heads, d.levels, d.points}, a.value.dtype);
  nb::gil_scoped_release release;
  run_on_device(a, num_threads, stream, [&](auto type) {
    using T = typename decltype(type)::type;
    return MsDeformAttnBackwardArgs<T>{
        typed_inputs<T>(a), static_cast<const T*>(go.data),
        static_cast<typename GradValueAccum<T>::type*>(grad_value.data()),
        static_cast<T*>(grad_sampling_locations.data()),
        static_cast<T*>(grad_attention_weights.data())};
  });
}

// The level checks of the CPU path, on their own: for CUDA inputs, whose geometry the kernels do
// not check (the Python side copies the two small tensors to the host first).
void check_levels(const ConstArray& spatial_shapes, const ConstArray& level_start_index,
                  int64_t value_len) {
  const ArgInfo shapes = ArgInfo::of("spatial_shapes", spatial_shapes);
  const ArgInfo starts = ArgInfo::of("level_start_index", level_start_index);
  for (const ArgInfo* x : {&shapes, &starts}) {
    check_cpu(*x, "copy it to the host first (.cpu())");
    check_contiguous(*x);
  }
  const int64_t levels = check_level_arrays(shapes, starts);
  if (value_len < 0) fail_value("value_len must be >= 0, got " + std::to_string(value_len));
  check_level_geometry(static_cast<const int64_t*>(shapes.data),
                       static_cast<const int64_t*>(starts.data), levels, value_len);
}

}  // namespace

void register_ms_deform_attn(nb::module_& m) {
  m.def("ms_deform_attn_forward", &forward, nb::arg("value"), nb::arg("spatial_shapes"),
        nb::arg("level_start_index"), nb::arg("sampling_locations"), nb::arg("attention_weights"),
        nb::arg("output"), nb::arg("num_threads") = 0, nb::arg("stream") = 0,
        "Writes multi-scale deformable attention of the inputs into `output` (N, Lq, M, D).");
  m.def("ms_deform_attn_backward", &backward, nb::arg("value"), nb::arg("spatial_shapes"),
        nb::arg("level_start_index"), nb::arg("sampling_locations"), nb::arg("attention_weights"),
        nb::arg("grad_output"), nb::arg("grad_value"), nb::arg("grad_sampling_locations"),
        nb::arg("grad_attention_weights"), nb::arg("num_threads") = 0, nb::arg("stream") = 0,
        "Writes the gradients of multi-scale deformable attention into the three grad buffers.");
  m.def("ms_deform_attn_check_levels", &check_levels, nb::arg("spatial_shapes"),
        nb::arg("level_start_index"), nb::arg("value_len"),
        "Raises ValueError, as the CPU kernels do, unless the levels (host int64 spatial_shapes "
        "(L, 2) and level_start_index (L,)) tile a value of length value_len exactly.");
}

}  // namespace deformdetr::bindings
