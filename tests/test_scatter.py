"""scatter.index_add: the gather backward without floating-point atomics.

The two GPU routes are array-module generic, so they run here on NumPy against np.add.at.
The rank-by-rank route adds in np.add.at's order and must agree bitwise; the one-hot route is a
matmul (another summation order) and must agree to rounding.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinysparse.engine.scatter import index_add, index_add_by_rank, index_add_one_hot


def reference(shape, index, values):
    full = np.zeros(shape, dtype=values.dtype)
    np.add.at(full, index, values)
    return full


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 7), d=st.integers(1, 5), m=st.integers(0, 30), seed=st.integers(0, 2**31))
def test_row_lookups_with_repeats(n, d, m, seed):
    rng = np.random.default_rng(seed)
    rows = rng.integers(-n, n, size=m)                     # repeats and negative indices
    values = rng.standard_normal((m, d))
    expected = reference((n, d), rows, values)
    by_rank = np.zeros((n, d))
    index_add_by_rank(by_rank, rows, values)
    np.testing.assert_array_equal(by_rank, expected)       # np.add.at's order, bit for bit
    one_hot = np.zeros((n, d))
    index_add_one_hot(one_hot, rows, values)
    np.testing.assert_allclose(one_hot, expected, rtol=1e-12, atol=1e-12)


def test_embedding_shaped_index_and_all_on_one_row():
    rng = np.random.default_rng(0)
    idx = np.zeros((3, 5), dtype=np.int64)                 # (B, T) all the same token
    values = rng.standard_normal((3, 5, 4))                # (B, T, C)
    expected = reference((6, 4), idx, values)
    assert np.allclose(expected[0], values.reshape(-1, 4).sum(0)) and not expected[1:].any()
    for route in (index_add_by_rank, index_add_one_hot):
        out = np.zeros((6, 4))
        route(out, idx, values)
        np.testing.assert_allclose(out, expected, rtol=1e-12)


@pytest.mark.parametrize("make_index", [
    lambda rng: (np.array([0, 2, 0, 0]), np.array([1, 1, 1, 3])),        # tuple of arrays, repeats
    lambda rng: (slice(None), np.array([2, 2, 0])),                      # a slice then an array
    lambda rng: rng.standard_normal((3, 4)) > 0,                         # a boolean mask
    lambda rng: (np.array([[0], [2]]), np.array([1, 1, 3])),             # broadcasting arrays
])
def test_any_advanced_index(make_index):
    rng = np.random.default_rng(1)
    index = make_index(rng)
    values = rng.standard_normal(np.zeros((3, 4))[index].shape)
    expected = reference((3, 4), index, values)
    out = np.zeros((3, 4))
    index_add_by_rank(out, index, values)
    np.testing.assert_array_equal(out, expected)


def test_index_add_on_numpy_is_add_at_and_refuses_nothing_silently():
    out = np.zeros((4, 2))
    index_add(out, np.array([1, 1, 3]), np.ones((3, 2)))
    np.testing.assert_array_equal(out, [[0, 0], [2, 2], [0, 0], [1, 1]])
    with pytest.raises(ValueError, match="C-contiguous"):
        index_add_by_rank(np.zeros((4, 4))[:, ::2], np.array([0]), np.ones((1, 2)))


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 9), shape_rest=st.lists(st.integers(1, 5), max_size=2),
       index_shape=st.lists(st.integers(0, 6), min_size=1, max_size=2),
       dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**31))
def test_the_compiled_row_loop_is_bitwise_add_at(n, shape_rest, index_shape, dtype, seed):
    """index_add on the CPU (scatter_kernels.index_add_rows for rows of a table) against
    np.add.at on a table that already holds values: the same bits, with repeats, negative
    indices, (B, T) index arrays and rows of any shape, values over 12 orders of magnitude."""
    from tinysparse.engine import scatter_kernels
    calls = []
    real = scatter_kernels.index_add_rows
    rng = np.random.default_rng(seed)
    shape = (n, *shape_rest)
    start = (rng.standard_normal(shape) * 10.0 ** rng.integers(-6, 6, shape)).astype(dtype)
    rows = rng.integers(-n, n, size=tuple(index_shape))
    values = (rng.standard_normal(rows.shape + shape[1:])
              * 10.0 ** rng.integers(-6, 6, rows.shape + shape[1:])).astype(dtype)
    expected = start.copy()
    np.add.at(expected, rows, values)
    got = start.copy()
    with pytest.MonkeyPatch.context() as mp:              # count the loop's calls
        mp.setattr(scatter_kernels, "index_add_rows", lambda *a: calls.append(1) or real(*a))
        index_add(got, rows, values)
    assert calls == [1]
    assert got.tobytes() == expected.tobytes()


def test_an_index_out_of_range_is_numpys_index_error_and_nothing_is_written():
    out = np.zeros((4, 2), np.float32)
    with pytest.raises(IndexError):
        index_add(out, np.array([1, 4, 0]), np.ones((3, 2), np.float32))
    with pytest.raises(IndexError):
        index_add(out, np.array([-5]), np.ones((1, 2), np.float32))
    assert not out.any()
