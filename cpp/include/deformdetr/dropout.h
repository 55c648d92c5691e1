// Dropout on the CPU with a counter-based random stream: element i draws the i-th 32-bit half of
// SplitMix64's output for `seed` (a function of seed and i alone), is dropped when the draw is
// below p * 2^32 and otherwise scaled by 1 / (1 - p). The mask is therefore the same on any
// number of threads, and a pass costs about a multiply-xor-shift per element, where torch's
// CPU bernoulli_ draws each element from a Mersenne Twister, ten times slower (bench/RESULTS.md).
#pragma once

#include <cstdint>

namespace deformdetr {

// output[i] = input[i] * (keep ? 1 / (1 - p) : 0) (a NaN stays NaN, as in torch's dropout),
// keep_mask[i] = keep; p in [0, 1] (p = 1 drops everything). n elements, contiguous.
template <typename T>
void dropout_cpu(const T* input, int64_t n, double p, uint64_t seed, T* output, bool* keep_mask,
                 int num_threads);

// ReLU then dropout in one pass: output[i] = max(input[i], 0) * (keep ? 1 / (1 - p) : 0) with the
// same draws as dropout_cpu for the same seed, and keep_mask[i] = keep && input[i] > 0, so that
// dropout_backward_cpu with that mask is the gradient of both (a NaN input stays NaN, as in torch).
template <typename T>
void relu_dropout_cpu(const T* input, int64_t n, double p, uint64_t seed, T* output, bool* keep_mask,
                      int num_threads);

// The backward: grad_input[i] = grad_output[i] * (keep_mask[i] ? scale : 0), in one pass (torch's
// native_dropout_backward takes three times as long on the CPU).
template <typename T>
void dropout_backward_cpu(const T* grad_output, const bool* keep_mask, int64_t n, double scale,
                          T* grad_input, int num_threads);

}  // namespace deformdetr
