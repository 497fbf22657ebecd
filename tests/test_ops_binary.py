"""The binary operators of tinysparse/engine/ops.py: +, -, *, / with broadcasting (shapes
hypothesis draws) and with one input a constant; every operator with a Python scalar or a NumPy
array on either side (the reflected ones, @ included); and the comparisons, which return boolean
tensors outside the graph. Forward against NumPy, backward by ts.gradcheck (float64, every
element).
"""
import re

import numpy as np
import pytest
from hypothesis import given

import tinysparse as ts
from tinysparse import Tensor

from ops_helpers import FEW, away_from_zero, broadcast_shapes, close, leaf, seeds


# ---- elementwise binary ops with broadcasting ---------------------------------------------------

BINARY = {
    "add": (lambda a, b: a + b, np.add),
    "sub": (lambda a, b: a - b, np.subtract),
    "mul": (lambda a, b: a * b, np.multiply),
    "div": (lambda a, b: a / b, np.divide),
}


@pytest.mark.parametrize("name", list(BINARY))
@FEW
@given(shapes=broadcast_shapes(), seed=seeds)
def test_binary_ops_broadcast(name, shapes, seed):
    rng = np.random.default_rng(seed)
    fn, reference = BINARY[name]
    sa, sb = shapes.input_shapes
    a = leaf(rng, sa)
    b = away_from_zero(rng, sb, 0.5, 2.0) if name == "div" else leaf(rng, sb)
    close(fn(a, b), reference(a.data, b.data))
    assert ts.gradcheck(fn, a, b)


@pytest.mark.parametrize("name", list(BINARY))
def test_binary_ops_with_one_constant_input(name, rng):
    fn, _ = BINARY[name]
    a, b = leaf(rng, (2, 3)), away_from_zero(rng, (3,), 0.5, 2.0)
    b.requires_grad = False
    assert ts.gradcheck(fn, a, b)
    out = fn(a, b)
    out.backward(np.ones(out.shape))
    assert b.grad is None and a.grad.shape == a.shape
    a.requires_grad, b.requires_grad = False, True
    assert ts.gradcheck(fn, a, b)


# ---- operators with a constant on either side ----------------------------------------------------

SCALAR_OPS = {
    "radd": (lambda x: 2.5 + x, lambda x: 2.5 + x),
    "add_scalar": (lambda x: x + 2.5, lambda x: x + 2.5),
    "rsub": (lambda x: 2.5 - x, lambda x: 2.5 - x),
    "sub_scalar": (lambda x: x - 2.5, lambda x: x - 2.5),
    "rmul": (lambda x: 2.5 * x, lambda x: 2.5 * x),
    "mul_scalar": (lambda x: x * -1.5, lambda x: x * -1.5),
    "rtruediv": (lambda x: 2.5 / x, lambda x: 2.5 / x),
    "truediv_scalar": (lambda x: x / 4.0, lambda x: x / 4.0),
    "pow": (lambda x: x ** 2, lambda x: x ** 2),
    "unary_minus": (lambda x: -x, lambda x: -x),
    "ndarray_radd": (lambda x: np.full((2, 1, 3), 0.5) + x, lambda x: np.full((2, 1, 3), 0.5) + x),
    "ndarray_rsub": (lambda x: np.full((3,), 0.5) - x, lambda x: np.full((3,), 0.5) - x),
    "ndarray_rmul": (lambda x: np.arange(3.0) * x, lambda x: np.arange(3.0) * x),
    "ndarray_rdiv": (lambda x: np.arange(3.0) / x, lambda x: np.arange(3.0) / x),
    "ndarray_rmatmul": (lambda x: np.ones((2, 4)) @ x, lambda x: np.ones((2, 4)) @ x),
}


@pytest.mark.parametrize("name", list(SCALAR_OPS))
def test_operators_with_constants(name, rng):
    fn, reference = SCALAR_OPS[name]
    x = away_from_zero(rng, (4, 3), 0.5, 2.0)
    out = fn(x)
    assert isinstance(out, Tensor), f"{name} returned {type(out).__name__}, not a Tensor"
    close(out, reference(x.data))
    assert ts.gradcheck(fn, x)


def test_rsub_and_rtruediv_gradients_by_hand():
    x = Tensor(np.array([1.0, 2.0, 4.0]), requires_grad=True)
    (3.0 - x).sum().backward()
    np.testing.assert_array_equal(x.grad, [-1, -1, -1])
    x.grad = None
    (2.0 / x).sum().backward()
    np.testing.assert_allclose(x.grad, -2.0 / x.data ** 2)


# ---- comparisons ---------------------------------------------------------------------------------

@pytest.mark.parametrize("op, reference", [
    (lambda a, b: a < b, np.less), (lambda a, b: a <= b, np.less_equal),
    (lambda a, b: a > b, np.greater), (lambda a, b: a >= b, np.greater_equal),
    (lambda a, b: a == b, np.equal), (lambda a, b: a != b, np.not_equal),
])
def test_comparisons_return_boolean_tensors_outside_the_graph(op, reference):
    a = Tensor(np.array([[1.0, 2.0, 3.0]]), requires_grad=True)
    b = Tensor(np.array([[2.0], [3.0]]), requires_grad=True)
    for other in (b, 2.0):
        out = op(a, other)
        assert isinstance(out, Tensor) and out.dtype == bool
        assert not out.requires_grad and out._ctx is None
        np.testing.assert_array_equal(out.numpy(), reference(a.data, other.data if isinstance(other, Tensor) else other))
    # also on a 0-d result of a reduction (a NumPy scalar in disguise)
    total = a.sum()
    assert (total > 0).dtype == bool and (total > 0).item() is True


def test_tensors_hash_by_identity():
    a, b = Tensor(np.ones(2)), Tensor(np.ones(2))
    assert len({a, b, a}) == 2


@pytest.mark.parametrize("exponent", [np.array([2.0, 3.0]), Tensor(np.array([2.0]))])
def test_pow_takes_a_scalar_exponent_only_and_names_the_way_round(exponent):
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    with pytest.raises(TypeError, match=r"^pow takes a scalar exponent; for a tensor exponent use "
                                        r"exp\(b \* log\(a\)\)$"):
        x ** exponent


def test_a_scalar_base_must_be_positive_and_1_is():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    np.testing.assert_allclose((1 ** x).data, [1.0, 1.0])             # the smallest base allowed > 0
    np.testing.assert_allclose((0.5 ** x).data, [0.5, 0.25])
    for base in (0, -2.0, [2.0]):
        with pytest.raises(TypeError, match=rf"^scalar \*\* Tensor needs a positive scalar base, "
                                            rf"got {re.escape(repr(base))}: write exp\(t \* "
                                            rf"log\(base\)\) for anything else$"):
            base ** x
