"""The shape ops of tinysparse/engine/ops_shape.py: reshape and view, unsqueeze, squeeze,
flatten, clone, permute, transpose and .T, broadcast_to (whose backward sums), and concatenate
and stack (which join tensors along an axis). Forward against NumPy on shapes hypothesis draws,
backward by ts.gradcheck (float64, every element).
"""
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import tinysparse as ts
from tinysparse import Tensor

from ops_helpers import FEW, broadcast_shapes, close, leaf, seeds, shapes


# ---- shape and layout ----------------------------------------------------------------------------

@FEW
@given(shape=shapes(min_dims=1), seed=seeds, data=st.data())
def test_reshape(shape, seed, data):
    rng = np.random.default_rng(seed)
    x = leaf(rng, shape)
    n = x.size
    divisors = [d for d in range(1, n + 1) if n % d == 0]
    first = data.draw(st.sampled_from(divisors), label="first")
    target = data.draw(st.sampled_from([(first, -1), (-1,), (first, n // first, 1), (1, n)]))
    close(x.reshape(target), x.data.reshape(target))
    close(x.reshape(*target), x.data.reshape(target))
    close(x.view(target), x.data.reshape(target))
    close(ts.reshape(x, target), x.data.reshape(target))
    assert ts.gradcheck(lambda x: x.reshape(target), x)


@FEW
@given(shape=shapes(), seed=seeds, data=st.data())
def test_unsqueeze_squeeze_flatten(shape, seed, data):
    rng = np.random.default_rng(seed)
    x = leaf(rng, shape)
    n = len(shape)
    dim = data.draw(st.integers(-n - 1, n), label="unsqueeze dim")
    close(x.unsqueeze(dim), np.expand_dims(x.data, dim))
    assert ts.gradcheck(lambda x: x.unsqueeze(dim), x)
    close(x.squeeze(), np.squeeze(x.data))
    ones = tuple(i for i, side in enumerate(shape) if side == 1)
    if ones:
        axis = data.draw(st.sampled_from(ones), label="squeeze dim")
        close(x.squeeze(axis), np.squeeze(x.data, axis))
        assert ts.gradcheck(lambda x: x.squeeze(axis), x)
    assert ts.gradcheck(lambda x: x.squeeze(), x)
    if n:
        start = data.draw(st.integers(0, n - 1), label="start_dim")
        end = data.draw(st.integers(start, n - 1), label="end_dim")
        expected = x.data.reshape(shape[:start] + (-1,) + shape[end + 1:])
        close(x.flatten(start, end), expected)
        assert ts.gradcheck(lambda x: x.flatten(start, end), x)
    close(x.flatten(), x.data.reshape(-1))
    assert ts.gradcheck(lambda x: x.flatten(), x)


@FEW
@given(shape=shapes(), seed=seeds)
def test_clone(shape, seed):
    rng = np.random.default_rng(seed)
    x = leaf(rng, shape)
    close(x.clone(), x.data)
    assert ts.gradcheck(lambda x: x.clone() * x, x)


@FEW
@given(shape=shapes(), seed=seeds, data=st.data())
def test_permute_transpose_and_T(shape, seed, data):
    rng = np.random.default_rng(seed)
    x = leaf(rng, shape)
    axes = tuple(data.draw(st.permutations(range(len(shape))), label="axes"))
    close(x.permute(axes), x.data.transpose(axes))
    close(x.permute(*axes), x.data.transpose(axes))
    close(ts.permute(x, axes), x.data.transpose(axes))
    close(x.T, x.data.T)
    assert ts.gradcheck(lambda x: x.permute(axes), x)
    assert ts.gradcheck(lambda x: x.T, x)
    if len(shape) >= 2:
        i, j = data.draw(st.integers(-len(shape), len(shape) - 1)), data.draw(
            st.integers(-len(shape), len(shape) - 1))
        close(x.transpose(i, j), np.swapaxes(x.data, i, j))
        close(x.transpose(), np.swapaxes(x.data, -2, -1))
        assert ts.gradcheck(lambda x: x.transpose(i, j), x)


@FEW
@given(shapes=broadcast_shapes(), seed=seeds)
def test_broadcast_to(shapes, seed):
    rng = np.random.default_rng(seed)
    x = leaf(rng, shapes.input_shapes[0])
    target = shapes.result_shape
    close(x.broadcast_to(target), np.broadcast_to(x.data, target))
    close(ts.broadcast_to(x, target), np.broadcast_to(x.data, target))
    assert ts.gradcheck(lambda x: x.broadcast_to(target), x)


def test_broadcast_to_sums_the_gradient():
    x = Tensor(np.array([[1.0], [2.0]]), requires_grad=True)
    x.broadcast_to((3, 2, 4)).sum().backward()
    np.testing.assert_array_equal(x.grad, [[12.0], [12.0]])


# ---- concatenate and stack -----------------------------------------------------------------------

@FEW
@given(shape=shapes(min_dims=1, max_dims=3, max_side=3), seed=seeds, data=st.data())
def test_concatenate_three_inputs(shape, seed, data):
    rng = np.random.default_rng(seed)
    axis = data.draw(st.integers(-len(shape), len(shape) - 1), label="axis")
    sizes = data.draw(st.lists(st.integers(1, 3), min_size=3, max_size=3), label="sizes")
    parts = []
    for n in sizes:
        s = list(shape)
        s[axis] = n
        parts.append(leaf(rng, tuple(s)))
    expected = np.concatenate([p.data for p in parts], axis=axis)
    close(ts.concatenate(parts, axis=axis), expected)
    close(ts.cat(parts, axis=axis), expected)
    assert ts.gradcheck(lambda a, b, c: ts.concatenate([a, b, c], axis=axis), *parts)


@FEW
@given(shape=shapes(max_dims=3, max_side=3), seed=seeds, data=st.data())
def test_stack_three_inputs(shape, seed, data):
    rng = np.random.default_rng(seed)
    axis = data.draw(st.integers(-len(shape) - 1, len(shape)), label="axis")
    parts = [leaf(rng, shape) for _ in range(3)]
    close(ts.stack(parts, axis=axis), np.stack([p.data for p in parts], axis=axis))
    assert ts.gradcheck(lambda a, b, c: ts.stack([a, b, c], axis=axis), *parts)


def test_concatenate_with_a_constant_input(rng):
    a, c = leaf(rng, (2, 3)), leaf(rng, (1, 3))
    b = Tensor(rng.standard_normal((2, 3)))
    assert ts.gradcheck(lambda a, c: ts.concatenate([a, b, c]), a, c)
