// C++ benchmark of the CPU multi-scale deformable attention kernels at the standard Deformable
// DETR shapes: an 800x1333 image (levels 100x167, 50x84, 25x42, 13x21), 8 heads, 4 points,
// 32 channels per head; encoder Lq = S, decoder Lq = 300. Sampling locations sit a few pixels
// around each query's reference point, as in a trained model.
//
//   ms_deform_attn_bench [--threads T] [--repeat R] [--batch N] [--double]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "deformdetr/ms_deform_attn.h"
#include "deformdetr/parallel.h"

namespace {

using deformdetr::MsDeformAttnDims;

constexpr int64_t kLevels[4][2] = {{100, 167}, {50, 84}, {25, 42}, {13, 21}};

template <typename T>
struct Problem {
  MsDeformAttnDims dims;
  std::vector<int64_t> shapes, starts;
  std::vector<T> value, locations, weights, output, grad_value, grad_locations, grad_weights;
};

template <typename T>
Problem<T> make_problem(int64_t batch, int64_t queries /* 0: encoder */) {
  Problem<T> pr;
  int64_t value_len = 0;
  for (auto& level : kLevels) {
    pr.shapes.push_back(level[0]);
    pr.shapes.push_back(level[1]);
    pr.starts.push_back(value_len);
    value_len += level[0] * level[1];
  }
  const bool encoder = queries == 0;
  if (encoder) queries = value_len;
  pr.dims = {batch, value_len, 8, 32, 4, queries, 4};
  const auto& d = pr.dims;
  std::mt19937 rng(0);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::uniform_real_distribution<float> uniform(0.f, 1.f);
  pr.value.resize(d.batch * d.value_len * d.heads * d.channels);
  for (auto& v : pr.value) v = normal(rng);
  pr.locations.resize(d.batch * d.queries * d.heads * d.levels * d.points * 2);
  pr.weights.resize(d.batch * d.queries * d.heads * d.levels * d.points);
  for (auto& w : pr.weights) w = uniform(rng) / (d.levels * d.points);
  size_t i = 0;
  for (int64_t n = 0; n < d.batch; ++n)
    for (int64_t q = 0; q < d.queries; ++q) {
      float ref_x = uniform(rng), ref_y = uniform(rng);
      if (encoder) {  // the centre of the query's own pixel
        int64_t level = 0, pos = q;
        for (; pos >= kLevels[level][0] * kLevels[level][1]; ++level)
          pos -= kLevels[level][0] * kLevels[level][1];
        ref_x = (pos % kLevels[level][1] + 0.5f) / kLevels[level][1];
        ref_y = (pos / kLevels[level][1] + 0.5f) / kLevels[level][0];
      }
      for (int64_t m = 0; m < d.heads; ++m)
        for (int64_t l = 0; l < d.levels; ++l)
          for (int64_t p = 0; p < d.points; ++p) {
            pr.locations[i++] = ref_x + 2.f * normal(rng) / kLevels[l][1];
            pr.locations[i++] = ref_y + 2.f * normal(rng) / kLevels[l][0];
          }
    }
  pr.output.resize(d.batch * d.queries * d.heads * d.channels);
  pr.grad_value.resize(pr.value.size());
  pr.grad_locations.resize(pr.locations.size());
  pr.grad_weights.resize(pr.weights.size());
  return pr;
}

template <typename F>
double median_ms(int repeat, F&& fn) {
  fn();  // warm-up
  std::vector<double> times;
  for (int r = 0; r < repeat; ++r) {
    auto start = std::chrono::steady_clock::now();
    fn();
    times.push_back(
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
            .count());
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

template <typename T>
void run(const char* name, int64_t batch, int64_t queries, int threads, int repeat) {
  Problem<T> pr = make_problem<T>(batch, queries);
  const deformdetr::MsDeformAttnInputs<T> inputs{pr.dims,         pr.value.data(),
                                                 pr.shapes.data(),  pr.starts.data(),
                                                 pr.locations.data(), pr.weights.data()};
  const deformdetr::MsDeformAttnForwardArgs<T> forward{inputs, pr.output.data()};
  // The gradient of the output is the output itself: any dense tensor of the right shape does.
  const deformdetr::MsDeformAttnBackwardArgs<T> backward{
      inputs, pr.output.data(), pr.grad_value.data(), pr.grad_locations.data(),
      pr.grad_weights.data()};
  const double fwd = median_ms(repeat, [&] { deformdetr::ms_deform_attn_cpu(forward, threads); });
  const double bwd = median_ms(repeat, [&] { deformdetr::ms_deform_attn_cpu(backward, threads); });
  std::printf("%-16s Lq=%-6lld forward %9.2f ms   backward %9.2f ms\n", name,
              (long long)pr.dims.queries, fwd, bwd);
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 0, repeat = 5;
  int64_t batch = 1;
  bool use_double = false;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--threads" && i + 1 < argc)
      threads = std::atoi(argv[++i]);
    else if (arg == "--repeat" && i + 1 < argc)
      repeat = std::atoi(argv[++i]);
    else if (arg == "--batch" && i + 1 < argc)
      batch = std::atoll(argv[++i]);
    else if (arg == "--double")
      use_double = true;
    else {
      std::fprintf(stderr, "usage: %s [--threads T] [--repeat R] [--batch N] [--double]\n",
                   argv[0]);
      return 2;
    }
  }
  std::printf("CPU ms_deform_attn, %s, batch %lld, %d threads, median of %d\n",
              use_double ? "float64" : "float32", (long long)batch,
              threads > 0 ? threads : deformdetr::hardware_threads(), repeat);
  if (use_double) {
    run<double>("encoder", batch, 0, threads, repeat);
    run<double>("decoder", batch, 300, threads, repeat);
  } else {
    run<float>("encoder", batch, 0, threads, repeat);
    run<float>("decoder", batch, 300, threads, repeat);
  }
  return 0;
}
