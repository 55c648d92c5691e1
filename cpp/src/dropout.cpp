#include "deformdetr/dropout.h"

#include <algorithm>

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

// Elements are drawn a block at a time: the 64-bit draws into a buffer, then the elements from
// it, so that both loops are plain array loops the compiler vectorizes (one loop doing both was
// left scalar). The masks are read and written as bytes for the same reason: compilers do not
// vectorize loads of bool.
constexpr int64_t kBlock = 256;  // elements; an even number, so a block starts on a pair

// Element i's draw: the low 32 bits of output i / 2 + 1 for even i, the high 32 bits for odd i.
// The 64-bit draws stored in order and read as 32-bit halves give exactly that on a
// little-endian machine; others swap the halves.
inline void draw_block(uint64_t seed, int64_t first_pair, int64_t pairs, uint32_t* draws) {
  uint64_t words[kBlock / 2];
  for (int64_t j = 0; j < pairs; ++j) words[j] = mix(seed + uint64_t(first_pair + j + 1) * kGamma);
  for (int64_t j = 0; j < pairs; ++j) {
    draws[2 * j] = uint32_t(words[j]);
    draws[2 * j + 1] = uint32_t(words[j] >> 32);
  }
}

// Dropout, or with `relu` ReLU then dropout: an element is kept when its draw is at least the
// threshold (and, with relu, it is positive; a NaN stays NaN either way, as in torch).
template <typename T, bool relu>
void drop_block(const T* input, int64_t count, const uint32_t* draws, uint32_t threshold, bool drop_all,
                T scale, T* output, uint8_t* keep_mask) {
  for (int64_t i = 0; i < count; ++i) {
    const T x = relu ? (input[i] < T(0) ? T(0) : input[i]) : input[i];
    const bool keep = !drop_all && draws[i] >= threshold;
    keep_mask[i] = relu ? uint8_t(keep && input[i] > T(0)) : uint8_t(keep);
    output[i] = x * (keep ? scale : T(0));
  }
}

template <typename T, bool relu>
void dropout_blocks(const T* input, int64_t n, double p, uint64_t seed, T* output, bool* keep_mask,
                    int num_threads) {
  // Dropped when the draw is below p * 2^32; p = 1 drops everything (2^32 is past every draw).
  const bool drop_all = p >= 1;
  const uint32_t threshold = drop_all ? 0 : uint32_t(p * 4294967296.0);
  const T scale = drop_all ? T(0) : T(1.0 / (1.0 - p));
  uint8_t* mask = reinterpret_cast<uint8_t*>(keep_mask);
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  parallel_for(blocks, 4, num_threads, [&](int64_t begin, int64_t end) {
    uint32_t draws[kBlock];
    for (int64_t block = begin; block < end; ++block) {
      const int64_t first = block * kBlock;
      const int64_t count = std::min(kBlock, n - first);
      draw_block(seed, first / 2, (count + 1) / 2, draws);
      drop_block<T, relu>(input + first, count, draws, threshold, drop_all, scale, output + first, mask + first);
    }
  });
}

}  // namespace

template <typename T>
void dropout_cpu(const T* input, int64_t n, double p, uint64_t seed, T* output, bool* keep_mask,
                 int num_threads) {
  dropout_blocks<T, false>(input, n, p, seed, output, keep_mask, num_threads);
}

template <typename T>
void relu_dropout_cpu(const T* input, int64_t n, double p, uint64_t seed, T* output, bool* keep_mask,
                      int num_threads) {
  dropout_blocks<T, true>(input, n, p, seed, output, keep_mask, num_threads);
}

template <typename T>
void dropout_backward_cpu(const T* grad_output, const bool* keep_mask, int64_t n, double scale,
                          T* grad_input, int num_threads) {
  const T kept = T(scale);
  const uint8_t* mask = reinterpret_cast<const uint8_t*>(keep_mask);
  parallel_for(n, 1 << 15, num_threads, [&](int64_t begin, int64_t end) {
    // T(mask[i]) * kept is kept or 0, exactly; written so (not as a select) the loop vectorizes.
    for (int64_t i = begin; i < end; ++i) grad_input[i] = grad_output[i] * (T(mask[i]) * kept);
  });
}

template void dropout_cpu<float>(const float*, int64_t, double, uint64_t, float*, bool*, int);
template void dropout_cpu<double>(const double*, int64_t, double, uint64_t, double*, bool*, int);
template void relu_dropout_cpu<float>(const float*, int64_t, double, uint64_t, float*, bool*, int);
template void relu_dropout_cpu<double>(const double*, int64_t, double, uint64_t, double*, bool*, int);
template void dropout_backward_cpu<float>(const float*, const bool*, int64_t, double, float*, int);
template void dropout_backward_cpu<double>(const double*, const bool*, int64_t, double, double*, int);

}  // namespace deformdetr
