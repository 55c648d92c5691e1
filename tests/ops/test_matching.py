"""deformdetr.ops.linear_sum_assignment / batched_linear_sum_assignment against scipy and brute force."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.optimize import linear_sum_assignment as scipy_lsa

from deformdetr.ops import batched_linear_sum_assignment, linear_sum_assignment


def brute_force_total(cost: np.ndarray, maximize: bool = False) -> float:
    """The optimal total by trying every injective map of the short side into the long side."""
    if cost.shape[0] > cost.shape[1]:
        cost = cost.T
    rows, cols = cost.shape
    totals = [
        cost[np.arange(rows), list(chosen)].sum()
        for chosen in itertools.permutations(range(cols), rows)
    ]
    return max(totals) if maximize else min(totals)


def check_assignment(cost: np.ndarray, rows, cols) -> float:
    """Checks the structure of a result and returns its total cost."""
    rows, cols = np.asarray(rows), np.asarray(cols)
    assert rows.dtype == np.int64 and cols.dtype == np.int64
    assert len(rows) == len(cols) == min(cost.shape)
    assert np.all(np.diff(rows) > 0), "row_ind must be strictly ascending"
    assert len(set(cols.tolist())) == len(cols), "a column is used twice"
    if len(rows):
        assert rows.min() >= 0 and rows.max() < cost.shape[0]
        assert cols.min() >= 0 and cols.max() < cost.shape[1]
    return float(cost[rows, cols].sum())


SHAPES = [(1, 1), (1, 5), (5, 1), (3, 3), (4, 7), (7, 4), (10, 10), (30, 7), (7, 30), (50, 80), (80, 50)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("maximize", [False, True])
def test_equals_scipy_on_random_costs(shape, maximize):
    rng = np.random.default_rng(hash(shape) % 1000)
    for _ in range(5):
        cost = rng.normal(size=shape) * 10
        rows, cols = linear_sum_assignment(cost, maximize=maximize)
        expected_rows, expected_cols = scipy_lsa(cost, maximize=maximize)
        assert check_assignment(cost, rows, cols) == pytest.approx(
            cost[expected_rows, expected_cols].sum(), rel=1e-12, abs=1e-9
        )
        # Continuous random costs have a unique optimum: the very same pairs.
        np.testing.assert_array_equal(rows, expected_rows)
        np.testing.assert_array_equal(cols, expected_cols)


@pytest.mark.parametrize("shape", [(2, 2), (3, 3), (2, 5), (5, 2), (4, 4), (3, 6), (6, 3), (5, 5)])
def test_optimal_against_brute_force(shape):
    rng = np.random.default_rng(7)
    for maximize in (False, True):
        for _ in range(20):
            cost = rng.integers(-5, 6, size=shape).astype(np.float64)
            rows, cols = linear_sum_assignment(cost, maximize=maximize)
            assert check_assignment(cost, rows, cols) == brute_force_total(cost, maximize)


@pytest.mark.parametrize("cost", [
    np.zeros((4, 4)),
    np.ones((3, 6)),
    np.ones((6, 3)),
    np.array([[1, 1, 2], [1, 1, 2], [2, 2, 1]], dtype=float),
    np.tile(np.arange(5.0), (5, 1)),
    np.tile(np.arange(5.0)[:, None], (1, 5)),
])
def test_ties(cost):
    rows, cols = linear_sum_assignment(cost)
    assert check_assignment(cost, rows, cols) == brute_force_total(cost)


def test_many_ties_large_matches_scipy_total():
    rng = np.random.default_rng(3)
    for shape in [(200, 200), (150, 230), (230, 150)]:
        cost = rng.integers(0, 4, size=shape).astype(np.float64)
        rows, cols = linear_sum_assignment(cost)
        expected = scipy_lsa(cost)
        assert check_assignment(cost, rows, cols) == cost[expected].sum()


def test_large_square_matches_scipy():
    cost = np.random.default_rng(11).random((400, 400))
    rows, cols = linear_sum_assignment(cost)
    expected_rows, expected_cols = scipy_lsa(cost)
    np.testing.assert_array_equal(cols, expected_cols)


def test_hand_computed():
    cost = np.array([[4, 1, 3], [2, 0, 5], [3, 2, 2]], dtype=float)
    rows, cols = linear_sum_assignment(cost)
    np.testing.assert_array_equal(rows, [0, 1, 2])
    np.testing.assert_array_equal(cols, [1, 0, 2])  # 1 + 2 + 2 = 5
    rows, cols = linear_sum_assignment(cost, maximize=True)
    assert cost[rows, cols].sum() == 11  # 4 + 5 + 2


def test_tall_matrix_rows_are_sorted_original_rows():
    cost = np.array([[9.0, 9.0], [1.0, 9.0], [9.0, 9.0], [9.0, 0.0]])
    rows, cols = linear_sum_assignment(cost)
    np.testing.assert_array_equal(rows, [1, 3])
    np.testing.assert_array_equal(cols, [0, 1])


@pytest.mark.parametrize("shape", [(0, 0), (0, 3), (3, 0)])
def test_empty(shape):
    rows, cols = linear_sum_assignment(np.zeros(shape))
    assert isinstance(rows, np.ndarray) and rows.dtype == np.int64 and rows.shape == (0,)
    assert isinstance(cols, np.ndarray) and cols.dtype == np.int64 and cols.shape == (0,)
    rows, cols = linear_sum_assignment(torch.zeros(shape))
    assert isinstance(rows, torch.Tensor) and rows.dtype == torch.int64 and rows.shape == (0,)
    assert isinstance(cols, torch.Tensor) and cols.dtype == torch.int64 and cols.shape == (0,)


@pytest.mark.parametrize("bad", [np.nan, -np.inf])
def test_invalid_entries_raise(bad):
    cost = np.arange(9.0).reshape(3, 3)
    cost[1, 2] = bad
    with pytest.raises(ValueError, match="matrix contains invalid numeric entries"):
        linear_sum_assignment(cost)
    with pytest.raises(ValueError, match="matrix contains invalid numeric entries"):
        linear_sum_assignment(torch.from_numpy(cost).float())


def test_plus_inf_is_invalid_when_maximizing():
    cost = np.array([[1.0, np.inf], [2.0, 3.0]])
    with pytest.raises(ValueError, match="matrix contains invalid numeric entries"):
        linear_sum_assignment(cost, maximize=True)
    # ... while -inf forbids a pair when maximizing.
    rows, cols = linear_sum_assignment(np.array([[-np.inf, 1.0], [2.0, 3.0]]), maximize=True)
    np.testing.assert_array_equal(cols, [1, 0])


def test_inf_forbids_pairs():
    cost = np.array([[np.inf, 1.0, 10.0], [2.0, np.inf, 10.0], [np.inf, np.inf, 3.0]])
    rows, cols = linear_sum_assignment(cost)
    np.testing.assert_array_equal(cols, [1, 0, 2])
    wide = np.array([[np.inf, 5.0, np.inf, 1.0], [np.inf, 2.0, np.inf, np.inf]])
    np.testing.assert_array_equal(linear_sum_assignment(wide)[1], [3, 1])
    np.testing.assert_array_equal(linear_sum_assignment(wide.T)[0], [1, 3])


@pytest.mark.parametrize("cost", [
    np.array([[np.inf]]),
    np.array([[1.0, np.inf], [2.0, np.inf], [np.inf, np.inf]]).T,
    np.array([[np.inf, 1.0], [np.inf, 2.0]]),
    np.array([[1.0, 2.0, 3.0], [np.inf, np.inf, np.inf]]),
])
def test_infeasible_raises(cost):
    with pytest.raises(ValueError, match="cost matrix is infeasible"):
        scipy_lsa(cost)  # the semantics we mirror
    with pytest.raises(ValueError, match="cost matrix is infeasible"):
        linear_sum_assignment(cost)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.int64, torch.int32, torch.float16])
def test_torch_input_gives_cpu_int64_tensors(dtype):
    cost = torch.tensor([[4, 1, 3], [2, 0, 5], [3, 2, 2]]).to(dtype)
    rows, cols = linear_sum_assignment(cost)
    for out in (rows, cols):
        assert isinstance(out, torch.Tensor)
        assert out.dtype == torch.int64 and out.device.type == "cpu"
    assert rows.tolist() == [0, 1, 2] and cols.tolist() == [1, 0, 2]


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64, np.int8, np.uint16, np.float16])
def test_numpy_input_gives_int64_arrays(dtype):
    cost = np.array([[4, 1, 3], [2, 0, 5], [3, 2, 2]]).astype(dtype)
    rows, cols = linear_sum_assignment(cost)
    assert isinstance(rows, np.ndarray) and isinstance(cols, np.ndarray)
    assert rows.dtype == np.int64 and cols.dtype == np.int64
    assert rows.tolist() == [0, 1, 2] and cols.tolist() == [1, 0, 2]


def test_array_like_and_float32_precision():
    rows, cols = linear_sum_assignment([[4, 1], [2, 0]])
    assert isinstance(rows, np.ndarray) and cols.tolist() == [1, 0]
    cost = np.random.default_rng(5).random((40, 60)).astype(np.float32)
    ours = check_assignment(cost.astype(np.float64), *linear_sum_assignment(cost))
    expected = scipy_lsa(cost)
    assert ours == pytest.approx(cost.astype(np.float64)[expected].sum(), rel=1e-12)


def test_torch_requires_grad_and_noncontiguous_views():
    base = torch.randn(30, 20, dtype=torch.float64, requires_grad=True)
    cost = base.detach().numpy()
    for view, reference in ((base, cost), (base.T, cost.T), (base[::2, 1::3], cost[::2, 1::3])):
        rows, cols = linear_sum_assignment(view)
        expected_rows, expected_cols = scipy_lsa(reference)
        assert rows.tolist() == expected_rows.tolist() and cols.tolist() == expected_cols.tolist()


def test_numpy_strided_views():
    cost = np.random.default_rng(9).random((25, 40))
    for view in (cost.T, cost[::-1], cost[:, ::-2], np.asfortranarray(cost), cost[3:20, 5:30]):
        rows, cols = linear_sum_assignment(view)
        expected_rows, expected_cols = scipy_lsa(np.ascontiguousarray(view))
        np.testing.assert_array_equal(rows, expected_rows)
        np.testing.assert_array_equal(cols, expected_cols)


def test_broadcast_view_with_zero_stride():
    cost = torch.arange(4.0).expand(3, 4)  # every row the same: stride 0
    rows, cols = linear_sum_assignment(cost)
    assert check_assignment(cost.numpy(), rows, cols) == 0 + 1 + 2


@pytest.mark.parametrize("cost", [np.array([[True, False]]), np.array([[1 + 1j]]), np.array([["a"]])])
def test_rejects_bool_complex_and_non_numbers(cost):
    with pytest.raises(TypeError, match="cost must hold real numbers"):
        linear_sum_assignment(cost)


@pytest.mark.parametrize("cost", [torch.tensor([[True, False]]), torch.tensor([[1 + 1j]])])
def test_rejects_bool_and_complex_tensors(cost):
    with pytest.raises(TypeError, match="cost must hold real numbers"):
        linear_sum_assignment(cost)


@pytest.mark.parametrize("shape", [(3,), (2, 2, 2), ()])
def test_rejects_non_matrices(shape):
    with pytest.raises(ValueError, match="cost must be a 2-D matrix"):
        linear_sum_assignment(np.zeros(shape))
    with pytest.raises(ValueError, match="cost must be a 2-D matrix"):
        linear_sum_assignment(torch.zeros(shape))


# ---- The batched form.


def test_batched_equals_single_problem_calls():
    rng = np.random.default_rng(21)
    costs = []
    for i in range(40):
        shape = tuple(rng.integers(0, 12, size=2))
        cost = rng.normal(size=shape)
        costs.append(torch.from_numpy(cost).float() if i % 3 == 0 else cost)
    for maximize in (False, True):
        results = batched_linear_sum_assignment(costs, maximize=maximize)
        assert len(results) == len(costs)
        for cost, (rows, cols) in zip(costs, results):
            expected_rows, expected_cols = linear_sum_assignment(cost, maximize=maximize)
            assert type(rows) is type(expected_rows) and type(cols) is type(expected_cols)
            assert rows.dtype == expected_rows.dtype
            np.testing.assert_array_equal(np.asarray(rows), np.asarray(expected_rows))
            np.testing.assert_array_equal(np.asarray(cols), np.asarray(expected_cols))


def test_batched_large_problems_run_in_parallel_and_stay_optimal():
    rng = np.random.default_rng(2)
    costs = [rng.random((120, 150)) for _ in range(8)] + [rng.random((300, 7)) for _ in range(32)]
    for cost, (rows, cols) in zip(costs, batched_linear_sum_assignment(costs)):
        expected_rows, expected_cols = scipy_lsa(cost)
        np.testing.assert_array_equal(rows, expected_rows)
        np.testing.assert_array_equal(cols, expected_cols)


def test_batched_empty_list_and_empty_problems():
    assert batched_linear_sum_assignment([]) == []
    (rows, cols), = batched_linear_sum_assignment([torch.zeros(0, 5)])
    assert isinstance(rows, torch.Tensor) and rows.shape == (0,) and rows.dtype == torch.int64


def test_batched_errors_name_the_matrix():
    good = np.eye(3)
    with pytest.raises(ValueError, match=r"costs\[1\]: matrix contains invalid numeric entries"):
        batched_linear_sum_assignment([good, np.array([[np.nan]]), good])
    with pytest.raises(ValueError, match=r"costs\[2\]: cost matrix is infeasible"):
        batched_linear_sum_assignment([good, good, np.array([[np.inf]])])
    with pytest.raises(ValueError, match=r"costs\[1\] must be a 2-D matrix"):
        batched_linear_sum_assignment([good, np.zeros(3)])
    with pytest.raises(TypeError, match=r"costs\[0\] must hold real numbers"):
        batched_linear_sum_assignment([torch.zeros(2, 2, dtype=torch.bool)])


# ---- Properties.

finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=64)
matrices = st.tuples(st.integers(1, 6), st.integers(1, 6)).flatmap(
    lambda shape: hnp.arrays(np.float64, shape, elements=finite)
)
with_forbidden = st.tuples(st.integers(1, 5), st.integers(1, 5)).flatmap(
    lambda shape: hnp.arrays(
        np.float64, shape, elements=st.one_of(st.sampled_from([np.inf, 0.0, 1.0]), finite)
    )
)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(matrices, st.booleans())
def test_property_total_equals_scipy(cost, maximize):
    rows, cols = linear_sum_assignment(cost, maximize=maximize)
    expected = scipy_lsa(cost, maximize=maximize)
    assert check_assignment(cost, rows, cols) == pytest.approx(cost[expected].sum(), rel=1e-9, abs=1e-6)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(with_forbidden)
def test_property_forbidden_pairs_like_scipy(cost):
    try:
        expected = scipy_lsa(cost)
    except ValueError as error:
        with pytest.raises(ValueError, match=str(error)):
            linear_sum_assignment(cost)
        return
    rows, cols = linear_sum_assignment(cost)
    assert check_assignment(cost, rows, cols) == pytest.approx(cost[expected].sum(), rel=1e-9, abs=1e-6)


@settings(max_examples=50, deadline=None, derandomize=True)
@given(st.lists(matrices, max_size=6), st.booleans())
def test_property_batched_equals_single(costs, maximize):
    for cost, (rows, cols) in zip(costs, batched_linear_sum_assignment(costs, maximize=maximize)):
        expected_rows, expected_cols = linear_sum_assignment(cost, maximize=maximize)
        np.testing.assert_array_equal(rows, expected_rows)
        np.testing.assert_array_equal(cols, expected_cols)


def test_lazily_negated_cost_views_are_solved_with_their_sign():
    z = torch.complex(torch.rand(6, 6, generator=torch.Generator().manual_seed(3)),
                      torch.rand(6, 6, generator=torch.Generator().manual_seed(4)))
    cost = z.conj().imag  # a view with torch's negative bit set
    assert cost.is_neg()
    expected = scipy_lsa(cost.resolve_neg().numpy())
    rows, cols = linear_sum_assignment(cost)
    assert cols.tolist() == expected[1].tolist()
    (batched_rows, batched_cols), = batched_linear_sum_assignment([cost])
    assert batched_cols.tolist() == expected[1].tolist()


def test_finite_costs_near_the_largest_double_are_solved_exactly():
    # Reduced costs of such entries overflow unless the solver scales them (by a power of two).
    rows, cols = linear_sum_assignment(np.array([[1e308, 1e308], [-1e308, -1e308]]))
    assert cols.tolist() == [0, 1]
    cost = np.array([[np.inf, 1e308, -1e308, 1.7e308], [1.7e308, 1e308, -1.7e308, np.inf]])
    assert linear_sum_assignment(cost)[1].tolist() == scipy_lsa(cost)[1].tolist() == [1, 2]
    rng = np.random.default_rng(0)
    values = np.array([1.7e308, -1.7e308, 1e308, -1e308, 4e307, 0.0, np.inf])
    for _ in range(300):
        cost = rng.choice(values, size=tuple(rng.integers(1, 4, size=2)))
        best = _brute_force_exact(cost)
        if best is None:
            with pytest.raises(ValueError, match="infeasible"):
                linear_sum_assignment(cost)
            continue
        rows, cols = linear_sum_assignment(cost)
        # Exact sums (Python integers): equal up to entries a double cannot tell apart here.
        assert abs(sum(int(cost[i, j]) for i, j in zip(rows, cols)) - best) <= 1e292


def _brute_force_exact(cost):
    if cost.shape[0] > cost.shape[1]:
        return _brute_force_exact(cost.T)
    totals = [sum(int(cost[i, j]) for i, j in enumerate(perm))
              for perm in itertools.permutations(range(cost.shape[1]), cost.shape[0])
              if np.isfinite([cost[i, j] for i, j in enumerate(perm)]).all()]
    return min(totals) if totals else None
