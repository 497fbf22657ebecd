"""Leaf gradients never alias: the engine copies a gradient unless it owns it (autograd.backward)."""
import itertools

import numpy as np

import tinysparse as ts
from tinysparse.moe import MoE
from tinysparse.engine.tensor import Function, Tensor


def _no_shared_memory(arrays):
    for a, b in itertools.combinations(arrays, 2):
        assert not np.shares_memory(a, b)


def test_add_hands_one_array_to_both_inputs_but_the_leaves_get_their_own():
    a, b = Tensor(np.ones(3), requires_grad=True), Tensor(np.ones(3), requires_grad=True)
    g = np.arange(3.0)
    (a + b).backward(g)
    _no_shared_memory([a.grad, b.grad, g, a.data, b.data])
    a.grad *= 10                                        # an in-place update touches only a.grad
    np.testing.assert_array_equal(b.grad, [0, 1, 2])
    np.testing.assert_array_equal(g, [0, 1, 2])


def test_views_of_the_incoming_gradient_are_copied():
    x = Tensor(np.ones((2, 3)), requires_grad=True)
    g = np.ones(6)
    x.reshape(6).backward(g)
    assert not np.shares_memory(x.grad, g)


class _Fresh(Function):
    new_grads = True
    last = None

    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, grad):
        _Fresh.last = grad * 2                          # a new array, as new_grads promises
        return _Fresh.last


class _Passthrough(_Fresh):
    new_grads = False

    @staticmethod
    def backward(ctx, grad):
        return grad                                     # the incoming array itself


def test_an_owned_gradient_is_kept_and_any_other_is_copied():
    x = Tensor(np.ones(4, dtype=np.float32), requires_grad=True)
    _Fresh.apply(x).sum().backward()
    assert x.grad is _Fresh.last                        # no copy
    y = Tensor(np.ones(4, dtype=np.float32), requires_grad=True)
    g = np.ones(4, dtype=np.float32)
    _Passthrough.apply(y).backward(g)
    assert y.grad is not g and not np.shares_memory(y.grad, g)
    z = Tensor(np.ones(4), requires_grad=True)         # float64 leaf, float32 gradient: cast
    _Fresh.apply(z.astype(np.float32)).sum().backward()
    assert z.grad.dtype == np.float64


def test_second_backward_adds_into_a_new_array():
    x = Tensor(np.ones(4, dtype=np.float32), requires_grad=True)
    _Fresh.apply(x).sum().backward()
    first = x.grad
    _Fresh.apply(x).sum().backward()
    np.testing.assert_array_equal(first, 2.0)           # the first .grad was not changed in place
    np.testing.assert_array_equal(x.grad, 4.0)


def test_moe_gradients_share_no_memory_with_each_other_or_the_weights():
    ts.manual_seed(0)
    layer = MoE(8, 4, 2, 6, dispatch_backend="numpy")
    x = Tensor(np.random.default_rng(0).standard_normal((2, 5, 8)).astype(np.float32),
               requires_grad=True)
    (layer(x) * 1.5).sum().backward()
    params = layer.parameters()
    assert all(p.grad is not None for p in params)
    _no_shared_memory([x.data, x.grad] + [p.grad for p in params] + [p.data for p in params])
