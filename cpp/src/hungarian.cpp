#include "deformdetr/hungarian.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <utility>

#include "deformdetr/parallel.h"

namespace deformdetr {

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// Reduced costs are differences and sums of entries: with finite entries near +-DBL_MAX they
// overflow to infinities (a spurious "infeasible", or a suboptimal answer). Such a problem is
// solved on costs scaled by a power of two, which is exact and leaves the optimum where it was.
constexpr double kScaleAbove = 0x1p1000;  // ~1e301, a 2^24 margin below DBL_MAX
constexpr double kScale = 0x1p-24;

void scale_down(std::vector<double>& costs) {
  for (double& x : costs) x *= kScale;  // infinities stay infinite
}

// Copies the problem into ws.cost as an n x m matrix with n <= m, transposing tall matrices and
// negating when maximizing, so that the solver only ever minimises over a wide matrix.
// Returns false when an entry (NaN, or -inf after the sign change) leaves the optimum undefined.
template <typename T>
bool load_wide_cost(const T* cost, int64_t rows, int64_t cols, int64_t row_stride,
                    int64_t col_stride, bool maximize, bool transpose, std::vector<double>& out) {
  const int64_t n = transpose ? cols : rows, m = transpose ? rows : cols;
  const int64_t stride_i = transpose ? col_stride : row_stride;
  const int64_t stride_j = transpose ? row_stride : col_stride;
  out.resize((size_t)(n * m));
  const double sign = maximize ? -1.0 : 1.0;
  bool valid = true;
  double largest = 0;  // largest finite magnitude
  // Square tiles keep reads and writes cache-friendly whichever way the source is laid out.
  constexpr int64_t kTile = 32;
  for (int64_t i0 = 0; i0 < n; i0 += kTile) {
    const int64_t i1 = std::min(n, i0 + kTile);
    for (int64_t j0 = 0; j0 < m; j0 += kTile) {
      const int64_t j1 = std::min(m, j0 + kTile);
      for (int64_t i = i0; i < i1; ++i) {
        const T* src = cost + i * stride_i;
        double* dst = out.data() + i * m;
        for (int64_t j = j0; j < j1; ++j) {
          const double x = sign * (double)src[j * stride_j];
          valid &= (x == x) & (x != -kInf);
          largest = std::max(largest, std::fabs(x) < kInf ? std::fabs(x) : 0.0);
          dst[j] = x;
        }
      }
    }
  }
  if (largest > kScaleAbove) scale_down(out);
  return valid;
}

// Prepares the duals and the empty matching of an n x m problem: every row free.
void reset_matching(int64_t n, int64_t m, AssignmentWorkspace& ws) {
  ws.row_dual.assign((size_t)n, 0.0);
  ws.col_dual.assign((size_t)m, 0.0);
  ws.col_of_row.assign((size_t)n, -1);
  ws.row_of_col.assign((size_t)m, -1);
  ws.free_rows.resize((size_t)n);
  std::iota(ws.free_rows.begin(), ws.free_rows.end(), int64_t{0});
}

// Square problems only (columns may not keep v = 0 otherwise): each column's dual becomes its
// smallest cost, and the column goes to that cheapest row when the row has none yet. With u = 0
// every reduced cost is then >= 0 and every matched pair tight; the row reduction that follows
// starts from prices that already reflect the competition for each column.
void column_reduction(const double* cost, int64_t n, AssignmentWorkspace& ws) {
  std::vector<double>& v = ws.col_dual;
  std::vector<int64_t>& cheapest_row = ws.path;
  v.assign((size_t)n, kInf);
  cheapest_row.assign((size_t)n, 0);
  for (int64_t i = 0; i < n; ++i) {
    const double* row = cost + i * n;
    for (int64_t j = 0; j < n; ++j) {
      if (row[j] < v[(size_t)j]) {
        v[(size_t)j] = row[j];
        cheapest_row[(size_t)j] = i;
      }
    }
  }
  ws.free_rows.clear();
  for (int64_t j = n; j-- > 0;) {
    const int64_t i = cheapest_row[(size_t)j];
    // A column whose entries are all +inf can never be matched: leave it to the search to report.
    if (!(v[(size_t)j] < kInf)) {
      v[(size_t)j] = 0.0;
      continue;
    }
    if (ws.col_of_row[(size_t)i] < 0) {
      ws.col_of_row[(size_t)i] = j;
      ws.row_of_col[(size_t)j] = i;
    }
  }
  for (int64_t i = 0; i < n; ++i)
    if (ws.col_of_row[(size_t)i] < 0) ws.free_rows.push_back(i);
}

// Jonker-Volgenant's augmenting row reduction, from column duals v = 0: each free row takes its
// cheapest column and lowers that column's dual until the row is indifferent between it and its
// second choice, evicting the previous owner. This settles most rows of a dense problem at O(m)
// each, where a shortest path search could cost many rows' scans.
//
// Invariants kept (and needed by the searches that follow): every matched edge has zero reduced
// cost, every reduced cost of a matched row is >= 0, and column duals only ever decrease from 0
// on columns that stay matched - so unmatched columns keep v = 0 and all v <= 0, which is what
// optimality needs when n < m. Leaves the rows still free in ws.free_rows.
void augmenting_row_reduction(const double* cost, int64_t n, int64_t m, AssignmentWorkspace& ws) {
  std::vector<double>& u = ws.row_dual;
  std::vector<double>& v = ws.col_dual;
  std::vector<int64_t>& todo = ws.free_rows;
  std::vector<int64_t>& later = ws.next_free_rows;
  // Near-ties can make rows bid each other's columns up in tiny steps; the shortest path searches
  // finish such rows in bounded time, so the reduction simply stops after a budget of steps.
  const int64_t step_budget = 8 * n + 16;
  for (int pass = 0; pass < 2 && !todo.empty(); ++pass) {
    later.clear();
    int64_t steps = 0;
    size_t k = 0;
    while (k < todo.size()) {
      if (++steps > step_budget) {
        later.insert(later.end(), todo.begin() + (int64_t)k, todo.end());
        break;
      }
      const int64_t i = todo[k++];
      const double* row = cost + i * m;
      double best = kInf, second = kInf;
      int64_t best_col = -1, second_col = -1;
      for (int64_t j = 0; j < m; ++j) {
        const double h = row[j] - v[j];
        if (h < second) {
          if (h < best) {
            second = best;
            second_col = best_col;
            best = h;
            best_col = j;
          } else {
            second = h;
            second_col = j;
          }
        }
      }
      // Without a finite second choice the bid is unbounded (one column, or forbidden pairs).
      if (!(second < kInf)) {
        later.push_back(i);
        continue;
      }
      int64_t col = best_col;
      int64_t owner = ws.row_of_col[col];
      const double gap = second - best;
      if (gap > 0) {
        v[col] -= gap;
      } else if (owner >= 0) {
        // A tie evicts nobody for nothing: take the second column, which may well be free.
        col = second_col;
        owner = ws.row_of_col[col];
      }
      u[i] = second;
      ws.col_of_row[i] = col;
      ws.row_of_col[col] = i;
      if (owner >= 0) {
        ws.col_of_row[owner] = -1;
        // An eviction by a price rise retries at once; one from a tie waits (avoids cycling).
        if (gap > 0)
          todo[--k] = owner;
        else
          later.push_back(owner);
      }
    }
    std::swap(todo, later);
  }
}

// Dijkstra's search from the free row `start` over reduced costs to the nearest free column,
// then the dual update that keeps reduced costs >= 0 and the flip of the matching along the path.
// Returns false when every column is out of reach (only +inf costs lead on): infeasible.
bool augment_from(const double* cost, int64_t m, int64_t start, AssignmentWorkspace& ws) {
  std::vector<double>& u = ws.row_dual;
  std::vector<double>& v = ws.col_dual;
  std::vector<double>& shortest = ws.shortest;
  std::vector<int64_t>& path = ws.path;
  std::vector<int64_t>& unscanned = ws.unscanned;
  const int64_t* row_of_col = ws.row_of_col.data();
  shortest.assign((size_t)m, kInf);
  path.resize((size_t)m);
  unscanned.resize((size_t)m);
  std::iota(unscanned.begin(), unscanned.end(), int64_t{0});
  ws.scanned_rows.clear();

  int64_t num_unscanned = m;
  double min_distance = 0.0;
  int64_t row = start;
  int64_t sink = -1;
  while (sink < 0) {
    ws.scanned_rows.push_back(row);
    const double* costs = cost + row * m;
    const double offset = min_distance - u[(size_t)row];
    double lowest = kInf;
    int64_t lowest_pos = -1;
    for (int64_t p = 0; p < num_unscanned; ++p) {
      const int64_t j = unscanned[(size_t)p];
      const double d = offset + costs[j] - v[(size_t)j];
      if (d < shortest[(size_t)j]) {
        shortest[(size_t)j] = d;
        path[(size_t)j] = row;
      }
      const double s = shortest[(size_t)j];
      // Among equally near columns a free one ends the search now.
      if (s < lowest || (s == lowest && row_of_col[j] < 0)) {
        lowest = s;
        lowest_pos = p;
      }
    }
    if (!(lowest < kInf)) return false;
    min_distance = lowest;
    const int64_t col = unscanned[(size_t)lowest_pos];
    unscanned[(size_t)lowest_pos] = unscanned[(size_t)--num_unscanned];
    unscanned[(size_t)num_unscanned] = col;  // scanned columns collect at the tail
    if (row_of_col[col] < 0)
      sink = col;
    else
      row = row_of_col[col];
  }

  u[(size_t)start] += min_distance;
  for (size_t k = 1; k < ws.scanned_rows.size(); ++k) {
    const int64_t r = ws.scanned_rows[k];
    u[(size_t)r] += min_distance - shortest[(size_t)ws.col_of_row[(size_t)r]];
  }
  for (int64_t p = num_unscanned; p < m; ++p) {
    const int64_t j = unscanned[(size_t)p];
    v[(size_t)j] -= min_distance - shortest[(size_t)j];
  }

  for (int64_t col = sink;;) {
    const int64_t r = path[(size_t)col];
    ws.row_of_col[(size_t)col] = r;
    const int64_t previous = ws.col_of_row[(size_t)r];
    ws.col_of_row[(size_t)r] = col;
    if (r == start) break;
    col = previous;
  }
  return true;
}

// Solves the n x m (n <= m) minimisation in ws.cost; the matching ends in ws.col_of_row.
AssignmentStatus solve_wide(int64_t n, int64_t m, AssignmentWorkspace& ws) {
  const double* cost = ws.cost.data();
  reset_matching(n, m, ws);
  if (n == m) column_reduction(cost, n, ws);
  augmenting_row_reduction(cost, n, m, ws);
  for (int64_t row : ws.free_rows)
    if (!augment_from(cost, m, row, ws)) return AssignmentStatus::infeasible;
  return AssignmentStatus::ok;
}

// Writes the pairs in the caller's orientation, sorted by the caller's row index.
void write_pairs(int64_t n, int64_t m, bool transposed, const AssignmentWorkspace& ws,
                 int64_t* row_ind, int64_t* col_ind) {
  if (!transposed) {
    for (int64_t i = 0; i < n; ++i) {
      row_ind[i] = i;
      col_ind[i] = ws.col_of_row[(size_t)i];
    }
    return;
  }
  // Solved rows are the caller's columns; walking the solved columns visits the caller's rows
  // in order.
  int64_t k = 0;
  for (int64_t j = 0; j < m; ++j) {
    const int64_t i = ws.row_of_col[(size_t)j];
    if (i < 0) continue;
    row_ind[k] = j;
    col_ind[k] = i;
    ++k;
  }
}

// Below this many cost entries per thread, waking threads costs more than it saves.
constexpr int64_t kMinEntriesPerThread = 1 << 15;

}  // namespace

template <typename T>
AssignmentStatus linear_sum_assignment(const T* cost, int64_t rows, int64_t cols,
                                       int64_t row_stride, int64_t col_stride, bool maximize,
                                       int64_t* row_ind, int64_t* col_ind,
                                       AssignmentWorkspace& workspace) {
  if (rows == 0 || cols == 0) return AssignmentStatus::ok;
  const bool transpose = rows > cols;
  const int64_t n = transpose ? cols : rows, m = transpose ? rows : cols;
  if (!load_wide_cost(cost, rows, cols, row_stride, col_stride, maximize, transpose,
                      workspace.cost))
    return AssignmentStatus::invalid_entries;
  const AssignmentStatus status = solve_wide(n, m, workspace);
  if (status == AssignmentStatus::ok) write_pairs(n, m, transpose, workspace, row_ind, col_ind);
  return status;
}

template <typename T>
AssignmentStatus linear_sum_assignment(const T* cost, int64_t rows, int64_t cols,
                                       int64_t row_stride, int64_t col_stride, bool maximize,
                                       int64_t* row_ind, int64_t* col_ind) {
  AssignmentWorkspace workspace;
  return linear_sum_assignment(cost, rows, cols, row_stride, col_stride, maximize, row_ind,
                               col_ind, workspace);
}

std::vector<AssignmentStatus> batched_linear_sum_assignment(
    const std::vector<AssignmentProblem>& problems, bool maximize, int num_threads) {
  std::vector<AssignmentStatus> status(problems.size(), AssignmentStatus::ok);
  const int64_t count = (int64_t)problems.size();
  if (count == 0) return status;
  int64_t entries = 0;
  for (const AssignmentProblem& p : problems) entries += p.rows * p.cols;
  // Enough problems per chunk that each thread gets a worthwhile share of the entries.
  const int64_t grain = std::max<int64_t>(1, count * kMinEntriesPerThread / std::max<int64_t>(entries, 1));
  parallel_for(count, grain, num_threads, [&](int64_t begin, int64_t end) {
    AssignmentWorkspace workspace;
    for (int64_t k = begin; k < end; ++k) {
      const AssignmentProblem& p = problems[(size_t)k];
      if (p.type == CostType::float32)
        status[(size_t)k] = linear_sum_assignment(
            static_cast<const float*>(p.cost), p.rows, p.cols, p.row_stride, p.col_stride,
            maximize, p.row_ind, p.col_ind, workspace);
      else
        status[(size_t)k] = linear_sum_assignment(
            static_cast<const double*>(p.cost), p.rows, p.cols, p.row_stride, p.col_stride,
            maximize, p.row_ind, p.col_ind, workspace);
    }
  });
  return status;
}

#define DEFORMDETR_INSTANTIATE_LSA(T)                                                          \
  template AssignmentStatus linear_sum_assignment<T>(const T*, int64_t, int64_t, int64_t,      \
                                                     int64_t, bool, int64_t*, int64_t*,        \
                                                     AssignmentWorkspace&);                    \
  template AssignmentStatus linear_sum_assignment<T>(const T*, int64_t, int64_t, int64_t,      \
                                                     int64_t, bool, int64_t*, int64_t*);
DEFORMDETR_INSTANTIATE_LSA(float)
DEFORMDETR_INSTANTIATE_LSA(double)
#undef DEFORMDETR_INSTANTIATE_LSA

}  // namespace deformdetr
