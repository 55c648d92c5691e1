#include "deformdetr/dropout.h"

#include "deformdetr/parallel.h"

namespace deformdetr {

namespace {

// SplitMix64 (Steele, Lea, Flood 2014): its n-th output is mix(seed + n * golden gamma).
constexpr uint64_t kGamma = 0x9e3779b97f4a7c15ULL;

inline uint64_t mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

template <typename T>
inline void drop_pair(const T* input, T* output, bool* keep_mask, int64_t i, int count,
                      uint64_t draws, uint64_t threshold, T scale) {
  for (int h = 0; h < count; ++h) {
    const bool keep = ((draws >> (32 * h)) & 0xffffffffULL) >= threshold;
    keep_mask[i + h] = keep;
    output[i + h] = input[i + h] * (keep ? scale : T(0));
  }
}

}  // namespace

template <typename T>
void dropout_cpu(const T* input, int64_t n, double p, uint64_t seed, T* output, bool* keep_mask,
                 int num_threads) {
  // Dropped when the draw is below the threshold: probability threshold / 2^32.
  const uint64_t threshold = p >= 1 ? (uint64_t(1) << 32) : uint64_t(p * 4294967296.0);
  const T scale = p >= 1 ? T(0) : T(1.0 / (1.0 - p));
  const int64_t pairs = (n + 1) / 2;
  parallel_for(pairs, 1 << 14, num_threads, [&](int64_t begin, int64_t end) {
    for (int64_t pair = begin; pair < end; ++pair) {
      const int64_t i = 2 * pair;
      const uint64_t draws = mix(seed + uint64_t(pair + 1) * kGamma);
      drop_pair(input, output, keep_mask, i, i + 1 < n ? 2 : 1, draws, threshold, scale);
    }
  });
}

template <typename T>
void dropout_backward_cpu(const T* grad_output, const bool* keep_mask, int64_t n, double scale,
                          T* grad_input, int num_threads) {
  const T kept = T(scale);
  parallel_for(n, 1 << 15, num_threads, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) grad_input[i] = grad_output[i] * (keep_mask[i] ? kept : T(0));
  });
}

template void dropout_cpu<float>(const float*, int64_t, double, uint64_t, float*, bool*, int);
template void dropout_cpu<double>(const double*, int64_t, double, uint64_t, double*, bool*, int);
template void dropout_backward_cpu<float>(const float*, const bool*, int64_t, double, float*, int);
template void dropout_backward_cpu<double>(const double*, const bool*, int64_t, double, double*, int);

}  // namespace deformdetr
