"""The backward engine (tinysparse/engine/autograd.py and tensor.py): gradients accumulate until
zeroed, no_grad and detach record no graph, a node reused or shared gets every contribution,
a deep chain backprops without recursion, backward needs a scalar or a gradient, only leaves keep
gradients, and a branch without grad is skipped.
"""
import sys

import numpy as np
import pytest

import tinysparse as ts
from tinysparse import Tensor

from ops_helpers import leaf


def test_gradients_accumulate_until_zeroed(rng):
    x = leaf(rng, (3,))
    loss = (x * x).sum()
    loss.backward(retain_graph=True)
    first = x.grad.copy()
    np.testing.assert_allclose(first, 2 * x.data)
    loss.backward()
    np.testing.assert_allclose(x.grad, 2 * first)
    x.zero_grad()
    assert x.grad is None
    (x * 3).sum().backward()
    np.testing.assert_allclose(x.grad, [3, 3, 3])


def test_backward_does_not_overwrite_an_earlier_gradient_array(rng):
    x = leaf(rng, (3,))
    x.sum().backward()
    held = x.grad
    x.sum().backward()
    np.testing.assert_array_equal(held, [1, 1, 1])
    np.testing.assert_array_equal(x.grad, [2, 2, 2])


def test_no_grad_records_no_graph(rng):
    x = leaf(rng, (2, 3))
    with ts.no_grad():
        assert not ts.is_grad_enabled()
        y = (x * 2).exp().sum(axis=0)
    assert ts.is_grad_enabled()
    assert not y.requires_grad and y._ctx is None
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.sum().backward()


def test_no_grad_restores_the_mode_after_an_exception():
    with pytest.raises(ZeroDivisionError):
        with ts.no_grad():
            1 / 0
    assert ts.is_grad_enabled()


def test_detach_cuts_the_graph(rng):
    x = leaf(rng, (3,))
    d = x.detach()
    assert not d.requires_grad and d._ctx is None and d.dtype == x.dtype
    (x * x.detach()).sum().backward()
    np.testing.assert_allclose(x.grad, x.data)  # not 2x: one factor is a constant
    scalar = (x * x).sum().detach()
    assert scalar.dtype == np.float64 and scalar.shape == ()


def test_reused_intermediate_gets_both_contributions():
    x = Tensor(np.array([0.5, -1.0, 2.0]), requires_grad=True)
    y = x * 2
    z = y * y + y
    z.sum().backward()
    np.testing.assert_allclose(x.grad, 8 * x.data + 2)  # dz/dx = (2y + 1) * 2
    assert ts.gradcheck(lambda x: (lambda y: y * y + y)(x * 2), x)


def test_input_used_twice_in_one_op(rng):
    x = leaf(rng, (2, 3))
    assert ts.gradcheck(lambda x: x * x + x @ x.T.sum(axis=1, keepdims=True), x)


def test_diamond_graph_with_shared_non_leaf(rng):
    x = leaf(rng, (3,))
    def fn(x):
        a = x.tanh()
        b = a * x
        c = (a + b).exp()
        return c * a - b
    assert ts.gradcheck(fn, x)


def test_deep_chain_backprops_without_recursion(rng):
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    depth = max(5000, 2 * sys.getrecursionlimit())
    y = x
    for _ in range(depth):
        y = y + x
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, [depth + 1, depth + 1])


def test_backward_needs_a_scalar_or_a_gradient(rng):
    x = leaf(rng, (2, 3))
    y = x * 2
    with pytest.raises(RuntimeError, match="single-element"):
        y.backward()
    y.backward(np.ones((2, 3)), retain_graph=True)
    np.testing.assert_array_equal(x.grad, np.full((2, 3), 2.0))
    x.grad = None
    y.backward(Tensor(np.full((2, 3), 3.0)))
    np.testing.assert_array_equal(x.grad, np.full((2, 3), 6.0))


def test_backward_on_a_tensor_without_grad_raises():
    with pytest.raises(RuntimeError, match="does not require grad"):
        Tensor(np.ones(())).backward()


def test_only_leaves_keep_gradients(rng):
    x = leaf(rng, (3,))
    y = x * 2
    y.sum().backward()
    assert y.grad is None and x.grad is not None
    assert x.is_leaf and not y.is_leaf


def test_branch_without_grad_is_skipped(rng):
    x, c = leaf(rng, (3,)), Tensor(rng.standard_normal(3))
    (x * c + c.exp()).sum().backward()
    np.testing.assert_allclose(x.grad, c.data)
    assert c.grad is None
