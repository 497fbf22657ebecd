"""The elementwise unary ops of tinysparse/engine/ops_unary.py (exp, log, sqrt, tanh, relu,
sigmoid, as methods and as functions) and of ops.py (neg, and pow with a scalar exponent):
forward against NumPy on shapes hypothesis draws, backward by ts.gradcheck (float64, every
element), and the exact values where a formula could go wrong (relu's step, sigmoid's huge
inputs).
"""
import numpy as np
import pytest
from hypothesis import given

import tinysparse as ts
from tinysparse import Tensor

from ops_helpers import FEW, away_from_zero, close, leaf, seeds, shapes


def _positive(rng, shape):
    return leaf(rng, shape, 0.3, 3.0)


UNARY = {
    # name: (tinysparse, NumPy reference, input maker)
    "neg": (lambda x: -x, np.negative, leaf),
    "exp": (lambda x: x.exp(), np.exp, leaf),
    "exp_fn": (ts.exp, np.exp, leaf),
    "log": (lambda x: x.log(), np.log, _positive),
    "log_fn": (ts.log, np.log, _positive),
    "sqrt": (lambda x: x.sqrt(), np.sqrt, _positive),
    "sqrt_fn": (ts.sqrt, np.sqrt, _positive),
    "tanh": (lambda x: x.tanh(), np.tanh, leaf),
    "tanh_fn": (ts.tanh, np.tanh, leaf),
    "relu": (lambda x: x.relu(), lambda x: np.maximum(x, 0), away_from_zero),
    "relu_fn": (ts.relu, lambda x: np.maximum(x, 0), away_from_zero),
    "sigmoid": (lambda x: x.sigmoid(), lambda x: 1 / (1 + np.exp(-x)), leaf),
    "sigmoid_fn": (ts.sigmoid, lambda x: 1 / (1 + np.exp(-x)), leaf),
}


@pytest.mark.parametrize("name", list(UNARY))
@FEW
@given(shape=shapes(), seed=seeds)
def test_unary_ops(name, shape, seed):
    rng = np.random.default_rng(seed)
    fn, reference, make = UNARY[name]
    x = make(rng, shape)
    out = fn(x)
    np.testing.assert_allclose(out.numpy(), reference(x.data), rtol=1e-12, atol=1e-15)
    assert out.shape == x.shape and out.dtype == np.float64
    assert ts.gradcheck(fn, x)


def test_relu_gradient_is_exactly_the_step():
    # at 0 (either sign) the step is 0, PyTorch's convention: only x > 0 passes a gradient
    x = Tensor(np.array([-2.0, -0.1, -0.0, 0.0, 0.1, 3.0]), requires_grad=True)
    x.relu().sum().backward()
    np.testing.assert_array_equal(x.grad, [0, 0, 0, 0, 1, 1])


def test_a_cast_to_the_dtype_it_has_copies_nothing():
    x = Tensor(np.arange(4.0, dtype=np.float32), requires_grad=True)
    assert np.shares_memory(x.float().data, x.data)          # as PyTorch's .float() of a float
    assert not np.shares_memory(x.double().data, x.data)


def test_sigmoid_is_stable_for_huge_inputs():
    x = Tensor(np.array([-1000.0, 0.0, 1000.0]), requires_grad=True)
    with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
        y = x.sigmoid()
        y.sum().backward()
    np.testing.assert_allclose(y.numpy(), [0.0, 0.5, 1.0])
    np.testing.assert_allclose(x.grad, [0.0, 0.25, 0.0])


@pytest.mark.parametrize("exponent", [2, 3, 1, 0.5, -1, -2, -0.5, 1.7, 2.5])
@FEW
@given(shape=shapes(), seed=seeds)
def test_pow_scalar_exponents_on_positive_inputs(exponent, shape, seed):
    rng = np.random.default_rng(seed)
    x = _positive(rng, shape)
    close(x ** exponent, x.data ** float(exponent))
    assert ts.gradcheck(lambda x: x ** exponent, x)


@pytest.mark.parametrize("exponent", [2, 3, -1])
@FEW
@given(shape=shapes(), seed=seeds)
def test_pow_integer_exponents_on_negative_inputs(exponent, shape, seed):
    rng = np.random.default_rng(seed)
    x = away_from_zero(rng, shape, 0.5, 2.0)
    close(x ** exponent, x.data ** exponent)
    assert ts.gradcheck(lambda x: x ** exponent, x)


def test_pow_rejects_a_tensor_exponent():
    x = Tensor(np.ones(3), requires_grad=True)
    with pytest.raises(TypeError, match="scalar exponent"):
        x ** x
