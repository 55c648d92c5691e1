// Benchmark of the assignment solver and the matcher's per-image cost: milliseconds per call on
// random problems (uniform costs in [0, 1) and integer costs with many ties).
//
//   cmake -S . -B build/bench -G Ninja -DDEFORMDETR_BUILD_BENCH=ON && ninja -C build/bench
//   build/bench/bench/hungarian_bench [repeats]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "deformdetr/hungarian.h"
#include "deformdetr/matcher.h"

namespace {

using Clock = std::chrono::steady_clock;

// The best of `repeats` timings, in milliseconds: the least disturbed by other processes.
double best_ms(int repeats, const std::function<void()>& fn) {
  double best = 1e300;
  for (int r = 0; r < repeats; ++r) {
    const auto start = Clock::now();
    fn();
    best = std::min(best, std::chrono::duration<double, std::milli>(Clock::now() - start).count());
  }
  return best;
}

std::vector<double> random_costs(int64_t rows, int64_t cols, bool integers, std::mt19937_64& rng) {
  std::vector<double> cost((size_t)(rows * cols));
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  std::uniform_int_distribution<int> small_int(0, 99);
  for (double& c : cost) c = integers ? (double)small_int(rng) : uniform(rng);
  return cost;
}

void bench_solver(int64_t rows, int64_t cols, bool integers, int repeats, std::mt19937_64& rng) {
  const std::vector<double> cost = random_costs(rows, cols, integers, rng);
  const int64_t k = deformdetr::assignment_size(rows, cols);
  std::vector<int64_t> row_ind((size_t)k), col_ind((size_t)k);
  deformdetr::AssignmentWorkspace workspace;
  deformdetr::AssignmentStatus status = deformdetr::AssignmentStatus::ok;
  const double ms = best_ms(repeats, [&] {
    status = deformdetr::linear_sum_assignment(cost.data(), rows, cols, cols, 1, false,
                                               row_ind.data(), col_ind.data(), workspace);
  });
  double total = 0;
  for (int64_t i = 0; i < k; ++i) total += cost[(size_t)(row_ind[i] * cols + col_ind[i])];
  std::printf("solve %5lldx%-5lld %-8s %10.4f ms per solve   (total cost %.4f%s)\n",
              (long long)rows, (long long)cols, integers ? "integers" : "uniform", ms, total,
              status == deformdetr::AssignmentStatus::ok ? "" : ", FAILED");
}

// One image of the DETR matcher: Q queries, C classes, T targets; cost alone, then cost + solve.
void bench_matcher_image(int64_t queries, int64_t classes, int64_t targets, int repeats,
                         std::mt19937_64& rng) {
  std::normal_distribution<float> normal;
  std::uniform_real_distribution<float> box(0.1f, 0.6f);
  std::uniform_int_distribution<int64_t> label(0, classes - 1);
  std::vector<float> logits((size_t)(queries * classes)), pred((size_t)(queries * 4)),
      target_boxes((size_t)(targets * 4));
  std::vector<int64_t> labels((size_t)targets);
  for (float& x : logits) x = normal(rng);
  for (float& x : pred) x = box(rng);
  for (float& x : target_boxes) x = box(rng);
  for (int64_t& l : labels) l = label(rng);
  const deformdetr::MatcherWeights weights{2.0, 5.0, 2.0, 0.25};
  std::vector<double> cost((size_t)(queries * targets));
  const double cost_ms = best_ms(repeats, [&] {
    deformdetr::matching_cost(logits.data(), pred.data(), queries, classes, labels.data(),
                              target_boxes.data(), targets, weights, cost.data());
  });
  const int64_t sizes[1] = {targets};
  std::vector<int64_t> query_ind((size_t)targets), target_ind((size_t)targets);
  const deformdetr::HungarianMatchArgs<float> image{
      {1, queries, classes}, logits.data(), pred.data(), sizes, labels.data(),
      target_boxes.data(),   weights,       query_ind.data(), target_ind.data()};
  const double match_ms = best_ms(repeats, [&] { deformdetr::hungarian_match(image, 1); });
  std::printf("matcher image Q=%lld C=%lld T=%lld: cost %.4f ms, cost + solve %.4f ms\n",
              (long long)queries, (long long)classes, (long long)targets, cost_ms, match_ms);
}

}  // namespace

int main(int argc, char** argv) {
  const int repeats = argc > 1 ? std::max(1, std::atoi(argv[1])) : 5;
  std::mt19937_64 rng(12345);
  for (bool integers : {false, true}) bench_solver(1000, 1000, integers, repeats, rng);
  for (bool integers : {false, true}) bench_solver(300, 7, integers, repeats * 200, rng);
  bench_solver(7, 300, false, repeats * 200, rng);
  bench_matcher_image(300, 91, 7, repeats * 200, rng);
  return 0;
}
