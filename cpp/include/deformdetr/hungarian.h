// Exact linear sum assignment (the "Hungarian" problem), with scipy's semantics.
//
// Given a rows x cols cost matrix, choose k = min(rows, cols) entries, no two in the same row or
// column, with the smallest (or, with maximize, largest) sum. +inf marks a forbidden pair.
//
// The solver is a shortest augmenting path method in the Jonker-Volgenant family: a column
// reduction (square problems) and an auction-like augmenting row reduction first settle most rows
// cheaply, then one Dijkstra search per remaining row finds the cheapest augmenting path on
// reduced costs (Crouse 2016 shows the rectangular case).
// Tall matrices are solved transposed, so the search always runs over the longer side.
#pragma once

#include <cstdint>
#include <vector>

namespace deformdetr {

enum class AssignmentStatus {
  ok,
  invalid_entries,  // NaN, or -inf (+inf when maximizing): no finite optimum exists.
  infeasible,       // forbidden (+inf) pairs leave no complete assignment.
};

// Reusable buffers of the solver, so that a thread solving many small problems allocates once.
struct AssignmentWorkspace {
  std::vector<double> cost;  // the (short side) x (long side) matrix actually solved
  std::vector<double> row_dual, col_dual, shortest;
  std::vector<int64_t> col_of_row, row_of_col, path, unscanned, free_rows, next_free_rows;
  std::vector<int64_t> scanned_rows;
};

// Solves the assignment problem of `cost`, an element of which is cost[i * row_stride +
// j * col_stride] (strides in elements, any sign, so transposed or sliced views need no copy).
// On success writes k = min(rows, cols) pairs to row_ind/col_ind with row_ind ascending.
// Works in double precision whatever T is.
template <typename T>
AssignmentStatus linear_sum_assignment(const T* cost, int64_t rows, int64_t cols,
                                       int64_t row_stride, int64_t col_stride, bool maximize,
                                       int64_t* row_ind, int64_t* col_ind,
                                       AssignmentWorkspace& workspace);

// The same with a workspace of its own.
template <typename T>
AssignmentStatus linear_sum_assignment(const T* cost, int64_t rows, int64_t cols,
                                       int64_t row_stride, int64_t col_stride, bool maximize,
                                       int64_t* row_ind, int64_t* col_ind);

// One problem of a batch: a float32 or float64 cost matrix (see above for the strides) and where
// its k = min(rows, cols) pairs go. The element type is a tag so that one batch may mix both.
enum class CostType { float32, float64 };

struct AssignmentProblem {
  const void* cost;
  CostType type;
  int64_t rows, cols, row_stride, col_stride;
  int64_t* row_ind;
  int64_t* col_ind;
};

// Solves independent problems on up to num_threads threads (<= 0: all hardware threads) and
// returns one status per problem; a failed problem leaves its outputs unspecified.
std::vector<AssignmentStatus> batched_linear_sum_assignment(
    const std::vector<AssignmentProblem>& problems, bool maximize, int num_threads);

// k = min(rows, cols): the number of pairs an assignment of a rows x cols matrix has.
inline int64_t assignment_size(int64_t rows, int64_t cols) { return rows < cols ? rows : cols; }

}  // namespace deformdetr
