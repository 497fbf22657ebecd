"""Choosing elements, from tinysparse/engine/ops_shape.py: indexing (basic indices, integer
arrays with repeats, boolean masks, tensors as indices; the backward scatters and adds), where
and masked_fill with broadcast conditions and masks. Forward against NumPy, backward by
ts.gradcheck (float64, every element).
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tinysparse as ts
from tinysparse import Tensor

from ops_helpers import FEW, broadcast_shapes, close, leaf, seeds, shapes


# ---- indexing ------------------------------------------------------------------------------------

@FEW
@given(shape=shapes(min_dims=1), seed=seeds, data=st.data())
def test_getitem_basic_indices(shape, seed, data):
    """Slices (negative steps included), integers, None and Ellipsis, as hypothesis draws them."""
    rng = np.random.default_rng(seed)
    x = leaf(rng, shape)
    index = data.draw(hnp.basic_indices(shape, allow_newaxis=True, allow_ellipsis=True), label="index")
    close(x[index], x.data[index])
    assert ts.gradcheck(lambda x: x[index], x)


@FEW
@given(shape=shapes(min_dims=1, max_dims=3), seed=seeds, data=st.data())
def test_getitem_integer_arrays_drawn(shape, seed, data):
    """Integer-array indices (repeats and negative indices included): the scatter must add."""
    rng = np.random.default_rng(seed)
    x = leaf(rng, shape)
    index = data.draw(hnp.integer_array_indices(
        shape, result_shape=hnp.array_shapes(min_dims=1, max_dims=2, max_side=4)), label="index")
    close(x[index], x.data[index])
    assert ts.gradcheck(lambda x: x[index], x)


GETITEM_CASES = {
    "int": ((4, 3), 2),
    "negative_int": ((4, 3), -1),
    "int_int_0d": ((4, 3), (1, 2)),
    "slice": ((5, 3), slice(1, 4)),
    "negative_step": ((5, 3), slice(None, None, -2)),
    "two_slices": ((5, 4), (slice(4, 0, -1), slice(None, None, 3))),
    "none": ((3, 2), (None, slice(None), None)),
    "ellipsis": ((2, 3, 4), (Ellipsis, 1)),
    "ellipsis_none": ((2, 3, 4), (0, Ellipsis, None, slice(1, 3))),
    "repeated_rows": ((3, 2), [0, 0, 1]),
    "repeated_ndarray": ((4,), np.array([[3, 3], [0, 3]])),
    "tuple_of_int_arrays": ((3, 4), (np.array([0, 2, 0, 0]), np.array([1, 3, 1, 1]))),
    "slice_and_int_array": ((3, 4), (slice(1, None), [0, 0, 2])),
    "bool_mask_full": ((3, 4), np.arange(12).reshape(3, 4) % 3 == 0),
    "bool_mask_axis": ((3, 4), (slice(None), np.array([True, False, True, True]))),
    "bool_tensor_mask": ((5,), Tensor(np.array([True, False, False, True, True]))),
    "int_tensor": ((5, 2), Tensor(np.array([4, 4, 1]))),
}


@pytest.mark.parametrize("name", list(GETITEM_CASES))
def test_getitem_cases(name, rng):
    shape, index = GETITEM_CASES[name]
    x = leaf(rng, shape)
    raw = index.data if isinstance(index, Tensor) else index
    close(x[index], x.data[raw if not isinstance(raw, list) else np.asarray(raw)])
    assert ts.gradcheck(lambda x: x[index], x)


def test_repeated_indices_accumulate_the_gradient():
    x = Tensor(np.arange(6.0).reshape(3, 2), requires_grad=True)
    x[[0, 0, 1]].sum().backward()
    np.testing.assert_array_equal(x.grad, [[2, 2], [1, 1], [0, 0]])
    x.grad = None
    rows, cols = np.array([2, 2, 2, 0]), np.array([1, 1, 0, 0])
    x[rows, cols].sum().backward()
    np.testing.assert_array_equal(x.grad, [[1, 0], [0, 0], [1, 2]])


# ---- where and masked_fill -----------------------------------------------------------------------

@FEW
@given(shapes=broadcast_shapes(num_shapes=3), seed=seeds)
def test_where_broadcasts_condition_and_branches(shapes, seed):
    rng = np.random.default_rng(seed)
    sc, sa, sb = shapes.input_shapes
    condition = rng.random(sc) < 0.5
    a, b = leaf(rng, sa), leaf(rng, sb)
    close(ts.where(condition, a, b), np.where(condition, a.data, b.data))
    close(ts.where(Tensor(condition), a, b), np.where(condition, a.data, b.data))
    assert ts.gradcheck(lambda a, b: ts.where(condition, a, b), a, b)


@FEW
@given(shapes=broadcast_shapes(), seed=seeds)
def test_masked_fill_with_a_broadcast_mask(shapes, seed):
    rng = np.random.default_rng(seed)
    sx, sm = shapes.input_shapes
    x = leaf(rng, sx)
    mask = rng.random(sm) < 0.4
    expected = np.where(mask, -7.0, x.data)
    close(x.masked_fill(mask, -7.0), expected)
    close(ts.masked_fill(x, Tensor(mask), -7.0), expected)
    assert ts.gradcheck(lambda x: x.masked_fill(mask, -7.0), x)


def test_masked_fill_with_minus_infinity_keeps_gradients_finite():
    x = Tensor(np.arange(6.0).reshape(2, 3), requires_grad=True)
    mask = np.triu(np.ones((3, 3), bool), k=1)[:2]
    y = x.masked_fill(mask, -np.inf)
    assert np.isneginf(y.numpy()[mask]).all()
    y.exp().sum().backward()
    np.testing.assert_allclose(x.grad, np.where(mask, 0.0, np.exp(x.data)))
