"""engine/linear.py: x @ W + b as one Function (F.linear), and nn.Linear, which uses it.

Three promises: the gradients are right (gradcheck, float64, every element, on leading axes that
hypothesis draws, 1-D inputs included); the bits are those of the two Functions it replaces,
x @ W then + b, forward and every gradient, in float32 and float64; the ledger counts the same
FLOPs as it did for the pair, and the bytes the fused call really moves.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tinysparse as ts
from tinysparse import ledger, nn
from tinysparse.engine import functional as F
from tinysparse.engine.ops import MatMul
from tinysparse.engine.linear import Linear

FEW = settings(max_examples=25, deadline=None)


def _leaf(rng, shape, dtype=np.float64):
    return ts.Tensor(rng.uniform(-2.0, 2.0, size=shape).astype(dtype), requires_grad=True)


@FEW
@given(lead=hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=3),
       d_in=st.integers(1, 5), d_out=st.integers(1, 4), seed=st.integers(0, 2**32 - 1))
def test_gradcheck_on_any_leading_axes(lead, d_in, d_out, seed):
    rng = np.random.default_rng(seed)
    x, w, b = _leaf(rng, lead + (d_in,)), _leaf(rng, (d_in, d_out)), _leaf(rng, (d_out,))
    y = F.linear(x, w, b)
    np.testing.assert_allclose(y.data, x.data @ w.data + b.data, rtol=1e-12, atol=1e-12)
    assert ts.gradcheck(F.linear, x, w, b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(7,), (5, 7), (3, 5, 7), (2, 1, 3, 7)])
def test_same_bits_as_matmul_then_add(rng, dtype, shape):
    x, w, b = _leaf(rng, shape, dtype), _leaf(rng, (7, 6), dtype), _leaf(rng, (6,), dtype)
    g = rng.standard_normal(shape[:-1] + (6,)).astype(dtype)
    fused = F.linear(x, w, b)
    fused.backward(g)
    grads = [t.grad.copy() for t in (x, w, b)]
    for t in (x, w, b):
        t.grad = None
    pair = x @ w + b
    pair.backward(g)
    assert fused.data.dtype == dtype and fused.data.tobytes() == pair.data.tobytes()
    for got, want in zip(grads, [t.grad for t in (x, w, b)]):
        assert got.dtype == dtype and got.tobytes() == want.tobytes()


def test_the_bias_gradient_of_a_1d_input_is_its_own_array(rng):
    """With x (d_in,), the output gradient already has the bias's shape: the bias must get a copy,
    or an update of bias.grad would write into the gradient the others were computed from."""
    x, w, b = _leaf(rng, (4,)), _leaf(rng, (4, 3)), _leaf(rng, (3,))
    g = np.array([1.0, -2.0, 0.5])
    F.linear(x, w, b).backward(g)
    assert not np.shares_memory(b.grad, g)
    np.testing.assert_array_equal(b.grad, g)
    b.grad += 1.0
    np.testing.assert_array_equal(g, [1.0, -2.0, 0.5])
    np.testing.assert_allclose(x.grad, w.data @ g)


def test_only_the_gradients_asked_for(rng):
    x, w, b = _leaf(rng, (2, 3)), _leaf(rng, (3, 4)), _leaf(rng, (4,))
    x.requires_grad = False
    F.linear(x, w, b).sum().backward()
    assert x.grad is None
    np.testing.assert_allclose(w.grad, x.data.T @ np.ones((2, 4)))
    np.testing.assert_array_equal(b.grad, [2.0, 2.0, 2.0, 2.0])
    w.grad = b.grad = None
    b.requires_grad = False
    F.linear(x, w, b).sum().backward()
    assert b.grad is None and w.grad is not None


def test_backward_returns_none_for_what_was_not_asked(rng):
    from tinysparse.engine.function import Context
    x, w, b = (rng.standard_normal(s) for s in ((2, 3), (3, 4), (4,)))
    ctx = Context((True, True, False))
    Linear.forward(ctx, x, w, b)
    dx, dw, db = Linear.backward(ctx, np.ones((2, 4)))
    assert db is None and dx.shape == (2, 3) and dw.shape == (3, 4)


def test_no_bias_is_the_matmul_alone(rng):
    x, w = _leaf(rng, (2, 3)), _leaf(rng, (3, 4))
    y = F.linear(x, w)
    assert y._ctx[0] is MatMul
    np.testing.assert_array_equal(y.data, x.data @ w.data)


@pytest.mark.parametrize("shapes, words", [
    (((2, 3), (3, 4, 1), (4,)), "weight of shape (d_in, d_out)"),
    (((2, 5), (3, 4), (4,)), "last axis must be d_in=3"),
    (((), (3, 4), (4,)), "last axis must be d_in=3"),
    (((2, 3), (3, 4), (3,)), "bias must have shape (4,)"),
    (((2, 3), (3, 4), (1, 4)), "bias must have shape (4,)"),
])
def test_shapes_that_do_not_fit_are_named(shapes, words):
    x, w, b = (np.zeros(s) for s in shapes)
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        F.linear(x, w, b)


def test_mixed_dtypes_are_refused_as_everywhere(rng):
    with pytest.raises(TypeError, match="never promotes"):
        F.linear(_leaf(rng, (2, 3), np.float32), _leaf(rng, (3, 4)), _leaf(rng, (4,)))


def test_integer_input_takes_the_weights_dtype(rng):
    w, b = _leaf(rng, (3, 2), np.float32), _leaf(rng, (2,), np.float32)
    y = F.linear(np.array([[1, 2, 3]]), w, b)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y.data, np.array([[1, 2, 3]], np.float32) @ w.data + b.data)


def test_nn_linear_runs_one_function_with_a_bias_and_the_matmul_without(rng):
    x = ts.Tensor(rng.standard_normal((2, 5, 3)).astype(np.float32), requires_grad=True)
    assert nn.Linear(3, 4)(x)._ctx[0] is Linear
    assert nn.Linear(3, 4, bias=False)(x)._ctx[0] is MatMul


def test_float16_keeps_the_pairs_two_roundings(rng):
    """float16 computes in float32 (Function.apply): the pair rounds the product to float16 before
    the add, the fused Function rounds once; F.linear and nn.Linear keep the pair's bits there."""
    layer = nn.Linear(3, 4, dtype=np.float16)
    x = ts.Tensor(rng.standard_normal((64, 3)).astype(np.float16))
    pair = (x @ layer.weight + layer.bias).data
    fused = Linear.apply(x, layer.weight, layer.bias).data
    assert fused.tobytes() != pair.tobytes()                            # the input tells them apart
    for y in (layer(x), F.linear(x, layer.weight, layer.bias)):
        assert y.dtype == np.float16 and y.data.tobytes() == pair.tobytes()


@pytest.mark.parametrize("lead", [(0,), (2, 0), (0, 4)])
def test_no_rows(rng, lead):
    x, w, b = _leaf(rng, lead + (3,)), _leaf(rng, (3, 4)), _leaf(rng, (4,))
    y = F.linear(x, w, b)
    assert y.shape == lead + (4,)
    y.backward(np.ones(y.shape))
    assert x.grad.shape == x.shape and not w.grad.any() and not b.grad.any()


def test_ledger_counts_the_pairs_flops_and_the_fused_bytes(rng):
    x = _leaf(rng, (3, 5, 7), np.float32)
    w, b = _leaf(rng, (7, 6), np.float32), _leaf(rng, (6,), np.float32)
    g = np.ones((3, 5, 6), np.float32)
    with ledger.count() as fused:
        F.linear(x, w, b).backward(g)
    with ledger.count() as pair:
        (x @ w + b).backward(g)
    for phase in ("forward", "backward"):
        f, p = getattr(fused.totals, phase), getattr(pair.totals, phase)
        assert (f.flops_matmul, f.flops_other) == (p.flops_matmul, p.flops_other), phase
    assert fused.totals.forward.flops_matmul == 2 * 15 * 7 * 6
    assert fused.totals.forward.flops_other == 15 * 6                      # the bias, as Add
    assert fused.totals.backward.flops_matmul == 2 * (2 * 15 * 7 * 6)      # dx and dW
    assert fused.totals.backward.flops_other == 15 * 6 - 6                 # db: a sum over 15 rows
    # bytes, float32: forward x, W, b in and y out; backward g in, x and W saved, dx, dW, db out
    assert fused.totals.forward.bytes_rw == (105 + 42 + 6 + 90) * 4
    assert fused.totals.backward.bytes_rw == (90 + 105 + 42 + 105 + 42 + 6) * 4
    assert pair.totals.forward.bytes_rw == (105 + 42 + 90 + 90 + 6 + 90) * 4
