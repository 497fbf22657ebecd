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
