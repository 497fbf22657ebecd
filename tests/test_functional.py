"""The fused neural-network functions of tinysparse/functional.py.

Each fused Function has a hand-derived backward: gradcheck (float64, every element) on shapes that
hypothesis draws, plus numeric checks of the forward against plain NumPy written out by hand.
"""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tinysparse as ts
from tinysparse import Tensor
from tinysparse import functional as F

MAX_ELEMENTS = 60
FEW = settings(max_examples=20, deadline=None)
seeds = st.integers(0, 2**32 - 1)


def shapes(min_dims=1, max_dims=4, max_side=5):
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=1,
                            max_side=max_side).filter(lambda s: math.prod(s) <= MAX_ELEMENTS)


def leaf(rng, shape, scale=2.0):
    return Tensor(rng.uniform(-scale, scale, size=shape), requires_grad=True)


def np_log_softmax(x, axis):
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


# ---- softmax and log_softmax ---------------------------------------------------------------------

@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
@FEW
@given(shape=shapes(), seed=seeds, data=st.data())
def test_softmax_and_log_softmax(name, shape, seed, data):
    rng = np.random.default_rng(seed)
    axis = data.draw(st.integers(-len(shape), len(shape) - 1), label="axis")
    x = leaf(rng, shape, scale=3.0)
    fn = lambda x: getattr(F, name)(x, axis=axis)  # noqa: E731
    expected = np_log_softmax(x.data, axis)
    expected = np.exp(expected) if name == "softmax" else expected
    np.testing.assert_allclose(fn(x).numpy(), expected, rtol=1e-12, atol=1e-14)
    assert ts.gradcheck(fn, x)


def test_softmax_default_axis_is_the_last(rng):
    x = Tensor(rng.standard_normal((2, 3, 4)))
    np.testing.assert_allclose(F.softmax(x).numpy().sum(axis=-1), np.ones((2, 3)), rtol=1e-12)
    np.testing.assert_allclose(F.log_softmax(x).numpy(), np_log_softmax(x.data, -1), rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_is_stable_for_huge_logits(dtype):
    x = Tensor(np.array([[1e4, 1e4 - 1.0, -1e4], [-1e4, -1e4, -1e4 + 2.0]], dtype=dtype),
               requires_grad=True)
    with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
        p = F.softmax(x, axis=-1)
        logp = F.log_softmax(x, axis=-1)
        (p * Tensor(np.arange(6.0, dtype=dtype).reshape(2, 3))).sum().backward()
    assert p.dtype == dtype and logp.dtype == dtype
    np.testing.assert_allclose(p.numpy().sum(axis=-1), [1.0, 1.0], rtol=1e-6)
    e = np.exp(-1.0)
    np.testing.assert_allclose(p.numpy()[0], [1 / (1 + e), e / (1 + e), 0.0], rtol=1e-6)
    np.testing.assert_allclose(logp.numpy()[0, :2], [-np.log1p(e), -1 - np.log1p(e)], rtol=1e-6)
    assert np.isfinite(logp.numpy()).all() and np.isfinite(x.grad).all()


@FEW
@given(shape=shapes(), seed=seeds)
def test_softmax_rows_sum_to_one(shape, seed):
    rng = np.random.default_rng(seed)
    p = F.softmax(Tensor(rng.standard_normal(shape) * 10), axis=-1).numpy()
    assert (p >= 0).all()
    np.testing.assert_allclose(p.sum(axis=-1), np.ones(shape[:-1]), rtol=1e-12)


# ---- cross-entropy -------------------------------------------------------------------------------

def np_cross_entropy(logits, targets, ignore_index=None):
    """-mean over counted positions of log_softmax(logits)[target], written out by hand."""
    logp = np_log_softmax(logits, -1).reshape(-1, logits.shape[-1])
    t = targets.reshape(-1)
    total, count = 0.0, 0
    for row, target in enumerate(t):
        if ignore_index is not None and target == ignore_index:
            continue
        total -= logp[row, target]
        count += 1
    return total / max(count, 1)


@pytest.mark.parametrize("ignore", [False, True])
@FEW
@given(lead=hnp.array_shapes(min_dims=1, max_dims=2, min_side=1, max_side=4),
       V=st.integers(1, 6), seed=seeds)
def test_cross_entropy(ignore, lead, V, seed):
    """2-D (N, V) and 3-D (B, T, V) logits; with ignore_index, at least one row is ignored."""
    rng = np.random.default_rng(seed)
    logits = leaf(rng, lead + (V,), scale=3.0)
    targets = rng.integers(0, V, size=lead)
    ignore_index = None
    if ignore:
        ignore_index = -100
        flat = targets.reshape(-1)
        flat[rng.random(flat.size) < 0.4] = ignore_index
        flat[rng.integers(flat.size)] = ignore_index  # at least one row ignored
    loss = F.cross_entropy(logits, targets, ignore_index=ignore_index)
    assert loss.shape == () and loss.dtype == np.float64
    np.testing.assert_allclose(loss.item(), np_cross_entropy(logits.data, targets, ignore_index),
                               rtol=1e-12, atol=1e-14)
    assert ts.gradcheck(lambda z: F.cross_entropy(z, targets, ignore_index=ignore_index), logits)


def test_cross_entropy_ignored_rows_get_no_gradient(rng):
    logits = leaf(rng, (2, 3, 5))
    targets = np.array([[1, -1, 4], [-1, 0, 2]])
    F.cross_entropy(logits, targets, ignore_index=-1).backward()
    assert (logits.grad[0, 1] == 0).all() and (logits.grad[1, 0] == 0).all()
    assert (logits.grad[0, 0] != 0).any()
    # each counted row's gradient is (softmax - onehot) / n_counted: it sums to zero
    np.testing.assert_allclose(logits.grad.sum(axis=-1), np.zeros((2, 3)), atol=1e-15)
    p = np.exp(np_log_softmax(logits.data[1, 2], -1))
    np.testing.assert_allclose(logits.grad[1, 2], (p - np.eye(5)[2]) / 4, rtol=1e-12)


def test_cross_entropy_with_every_row_ignored_is_zero(rng):
    logits = leaf(rng, (3, 4))
    loss = F.cross_entropy(logits, np.full(3, 7), ignore_index=7)
    assert loss.item() == 0.0
    loss.backward()
    assert (logits.grad == 0).all()


def test_cross_entropy_matches_minus_mean_log_softmax(rng):
    logits = leaf(rng, (6, 5))
    targets = np.array([0, 4, 4, 2, 1, 3])
    by_hand = -F.log_softmax(logits, axis=-1)[np.arange(6), targets].mean()
    np.testing.assert_allclose(F.cross_entropy(logits, targets).item(), by_hand.item(), rtol=1e-12)
    # also as a Tensor of targets, and in float32
    loss32 = F.cross_entropy(Tensor(logits.data.astype(np.float32)), Tensor(targets))
    assert loss32.dtype == np.float32
    np.testing.assert_allclose(loss32.item(), by_hand.item(), rtol=1e-5)


def test_cross_entropy_is_stable_for_huge_logits():
    logits = Tensor(np.array([[1e4, 0.0, -1e4]]), requires_grad=True)
    with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
        loss = F.cross_entropy(logits, np.array([1]))
        loss.backward()
    np.testing.assert_allclose(loss.item(), 1e4, rtol=1e-12)
    np.testing.assert_allclose(logits.grad, [[1.0, -1.0, 0.0]], atol=1e-12)


def test_cross_entropy_rejects_float_targets(rng):
    with pytest.raises(TypeError, match="integer class indices.*astype\\(np.int64\\)"):
        F.cross_entropy(leaf(rng, (2, 3)), np.array([0.0, 1.0]))


# ---- layer norm ----------------------------------------------------------------------------------

def np_layer_norm(x, w, b, eps=1e-5):
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    y = (x - mu) / np.sqrt(var + eps)
    if w is not None:
        y = y * w
    if b is not None:
        y = y + b
    return y


@pytest.mark.parametrize("use_weight, use_bias", [(True, True), (True, False), (False, True),
                                                  (False, False)])
@FEW
@given(shape=shapes(min_dims=1, max_dims=4), seed=seeds)
def test_layer_norm(use_weight, use_bias, shape, seed):
    rng = np.random.default_rng(seed)
    C = shape[-1]
    x = leaf(rng, shape)
    w = Tensor(rng.uniform(0.5, 1.5, C), requires_grad=True) if use_weight else None
    b = Tensor(rng.standard_normal(C), requires_grad=True) if use_bias else None
    out = F.layer_norm(x, w, b)
    np.testing.assert_allclose(out.numpy(), np_layer_norm(x.data, None if w is None else w.data,
                                             None if b is None else b.data),
                               rtol=1e-10, atol=1e-12)
    inputs = [t for t in (x, w, b) if t is not None]

    def fn(*args):
        args = iter(args)
        x = next(args)
        return F.layer_norm(x, next(args) if use_weight else None, next(args) if use_bias else None)
    assert ts.gradcheck(fn, *inputs)


def test_layer_norm_weight_only_or_input_only_requiring_grad(rng):
    x, w, b = leaf(rng, (2, 3, 4)), leaf(rng, (4,)), leaf(rng, (4,))
    x.requires_grad = False
    assert ts.gradcheck(lambda x, w, b: F.layer_norm(x, w, b), x, w, b)
    x.requires_grad, w.requires_grad, b.requires_grad = True, False, False
    assert ts.gradcheck(lambda x, w, b: F.layer_norm(x, w, b), x, w, b)


def test_layer_norm_normalises_and_respects_eps(rng):
    x = Tensor(rng.standard_normal((4, 16)) * 5 + 3)
    y = F.layer_norm(x).numpy()
    np.testing.assert_allclose(y.mean(axis=-1), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=-1), 1, rtol=1e-5)
    x = Tensor(np.full((1, 4), 2.0) + np.array([0, 1e-3, 0, 0]))
    np.testing.assert_allclose(F.layer_norm(x, eps=1.0).numpy(), np_layer_norm(x.data, None, None, eps=1.0))


# ---- GELU ----------------------------------------------------------------------------------------

@FEW
@given(shape=shapes(min_dims=0), seed=seeds)
def test_gelu(shape, seed):
    rng = np.random.default_rng(seed)
    x = leaf(rng, shape, scale=4.0)
    u = math.sqrt(2 / math.pi) * (x.data + 0.044715 * x.data ** 3)
    np.testing.assert_allclose(F.gelu(x).numpy(), 0.5 * x.data * (1 + np.tanh(u)), rtol=1e-12, atol=1e-15)
    assert ts.gradcheck(F.gelu, x)


def test_gelu_known_values():
    y = F.gelu(Tensor(np.array([0.0, 1.0, -1.0, 10.0, -10.0]))).numpy()
    np.testing.assert_allclose(y, [0.0, 0.8411919906, -0.1588080094, 10.0, 0.0], atol=1e-9)


# ---- dropout -------------------------------------------------------------------------------------

@pytest.mark.parametrize("p", [0.0, 0.2, 0.5, 0.9])
@FEW
@given(shape=shapes(min_dims=0), seed=seeds)
def test_dropout_gradcheck_with_a_fixed_mask(p, shape, seed):
    rng = np.random.default_rng(seed)
    x = leaf(rng, shape)

    def fn(x):
        ts.manual_seed(seed)  # the same mask on every evaluation
        return F.dropout(x, p=p, training=True)
    out = fn(x).numpy()
    kept = out != 0
    np.testing.assert_allclose(out[kept], x.data[kept] / (1 - p), rtol=1e-12)
    assert ts.gradcheck(fn, x)


def test_dropout_in_eval_mode_is_the_identity(rng):
    x = leaf(rng, (3, 4))
    assert F.dropout(x, p=0.5, training=False) is x
    assert F.dropout(x, p=0.0, training=True) is x


def test_dropout_in_train_mode_drops_about_p_and_keeps_the_expectation():
    ts.manual_seed(0)
    p = 0.3
    x = Tensor(np.ones(200_000), requires_grad=True)
    y = F.dropout(x, p=p)
    data = y.numpy()
    assert y.dtype == np.float64
    assert abs((data == 0).mean() - p) < 0.005                    # ~ 4.6 standard deviations
    assert set(np.unique(data)) == {0.0, 1 / (1 - p)}
    assert abs(data.mean() - 1.0) < 0.01                          # the expectation is kept
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, data)                   # the gradient is the scaled mask


def test_dropout_float32_stays_float32():
    ts.manual_seed(0)
    assert F.dropout(Tensor(np.ones(10, np.float32)), p=0.5).dtype == np.float32


def test_dropout_same_seed_same_mask_other_seed_other_mask():
    x = Tensor(np.ones((8, 16)))
    ts.manual_seed(123)
    a = F.dropout(x, p=0.5).numpy()
    ts.manual_seed(123)
    b = F.dropout(x, p=0.5).numpy()
    ts.manual_seed(124)
    c = F.dropout(x, p=0.5).numpy()
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()
    d = F.dropout(x, p=0.5).numpy()  # the generator moved on: a new mask
    assert (c != d).any()


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5])
def test_dropout_invalid_p_raises(p):
    with pytest.raises(ValueError, match="probability"):
        F.dropout(Tensor(np.ones(3)), p=p)
    with pytest.raises(ValueError):
        F.dropout(Tensor(np.ones(3)), p=p, training=False)  # checked in eval mode too


# ---- values outside a function's domain are refused, naming the value and the fix ---------------

def test_cross_entropy_refuses_a_negative_target_without_ignore_index():
    """A -1 used to score class V-1 (NumPy's negative indexing): nanoGPT's padding trained silently."""
    logits = Tensor(np.zeros((3, 4), np.float32), requires_grad=True)
    with pytest.raises(ValueError, match=r"target -1 at position \(2,\) is outside the valid range "
                                         r"\[0, 4\) of the 4 classes: pass ignore_index=-1"):
        F.cross_entropy(logits, [1, 0, -1])
    with pytest.raises(ValueError, match=r"target 4 at position \(1, 0\) .*\[0, 4\)"):
        F.cross_entropy(Tensor(np.zeros((2, 2, 4))), np.array([[0, 1], [4, 2]]))
    with pytest.raises(ValueError, match=r"target -1 .*ignore_index is -100"):
        F.cross_entropy(logits, [1, -100, -1], ignore_index=-100)


@pytest.mark.parametrize("ignore_index", [-1, -100, 2, 10**6])
def test_cross_entropy_ignores_any_ignore_index_value(ignore_index):
    """PyTorch's default -100 was an IndexError; every integer is a valid ignore_index."""
    logits = Tensor(np.log(np.array([[1.0, 2.0, 1.0], [1.0, 1.0, 2.0], [3.0, 1.0, 1.0]])),
                    requires_grad=True)
    targets = np.array([1, ignore_index, 0])
    loss = F.cross_entropy(logits, targets, ignore_index=ignore_index)
    np.testing.assert_allclose(loss.item(), -(np.log(2 / 4) + np.log(3 / 5)) / 2, rtol=1e-12)
    loss.backward()
    assert (logits.grad[1] == 0).all()


def test_cross_entropy_refuses_bad_shapes_and_ignore_index_types(rng):
    logits = leaf(rng, (2, 3, 5))
    with pytest.raises(ValueError, match=r"5 targets for logits of shape \(2, 3, 5\).*\(2, 3\)"):
        F.cross_entropy(logits, np.zeros(5, dtype=int))
    assert F.cross_entropy(logits, np.zeros(6, dtype=int)).shape == ()  # flat targets are fine
    with pytest.raises(ValueError, match="V >= 1"):
        F.cross_entropy(Tensor(np.zeros((2, 0))), np.zeros(2, dtype=int))
    with pytest.raises(TypeError, match="ignore_index must be an integer, got -100.0"):
        F.cross_entropy(logits, np.zeros((2, 3), dtype=int), ignore_index=-100.0)


def test_cross_entropy_of_no_rows_is_zero(rng):
    logits = Tensor(np.zeros((0, 4)), requires_grad=True)
    loss = F.cross_entropy(logits, np.zeros(0, dtype=int))
    assert loss.item() == 0.0
    loss.backward()
    assert logits.grad.shape == (0, 4)


@pytest.mark.parametrize("p", [float("nan"), float("inf"), "0.1", True, None])
def test_dropout_refuses_a_probability_that_is_not_a_number_in_range(p):
    with pytest.raises(ValueError, match=r"dropout probability must be a number in \[0, 1\)"):
        F.dropout(Tensor(np.ones(3)), p=p)


def test_layer_norm_refuses_bad_eps_and_parameter_shapes(rng):
    x = leaf(rng, (2, 4))
    for eps in (-1e-5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="eps must be a finite number >= 0"):
            F.layer_norm(x, eps=eps)
    with pytest.raises(ValueError, match=r"weight has shape \(3,\), expected \(4,\)"):
        F.layer_norm(x, Tensor(np.ones(3)))
    with pytest.raises(ValueError, match="at least one element"):
        F.layer_norm(Tensor(np.zeros((2, 0))))


def test_attention_refuses_mismatched_shapes_and_bad_head_counts(rng):
    q, k = leaf(rng, (1, 3, 4)), leaf(rng, (1, 2, 4))
    with pytest.raises(ValueError, match="causal attention needs as many queries as keys.*causal=False"):
        F.attention(q, k, k)
    assert F.attention(q, k, k, causal=False).shape == (1, 3, 4)
    with pytest.raises(ValueError, match="attention needs q"):
        F.attention(q, leaf(rng, (1, 3, 5)), q)
    with pytest.raises(ValueError, match="n_head must be a positive integer dividing C=4, got 3"):
        F.causal_self_attention(leaf(rng, (1, 2, 12)), 3)
    with pytest.raises(ValueError, match=r"\(B, T, 3C\)"):
        F.causal_self_attention(leaf(rng, (1, 2, 10)), 1)


def test_empty_inputs_give_empty_outputs():
    """No tokens (T = 0) or no rows: the functions return empty arrays of the right shape."""
    for fn in (lambda x: F.softmax(x, dim=-1), lambda x: F.log_softmax(x, axis=0),
               F.gelu, F.layer_norm):
        x = Tensor(np.zeros((0, 3)), requires_grad=True)
        out = fn(x)
        assert out.shape == (0, 3)
        out.sum().backward()
        assert x.grad.shape == (0, 3)
    assert F.softmax(Tensor(np.zeros((2, 0))), dim=-1).shape == (2, 0)
    qkv = Tensor(np.zeros((2, 0, 12)), requires_grad=True)
    y = F.causal_self_attention(qkv, 2)
    assert y.shape == (2, 0, 4)
    y.sum().backward()
    assert qkv.grad.shape == (2, 0, 12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(5, 1), (3, 7), (2, 4, 96), (1, 1, 128), (4, 333), (2, 4097)])
def test_layer_norm_row_mean_is_numpys_mean_bit_for_bit(dtype, shape):
    """normalization._row_mean (a sum and one division) stands in for x.mean(-1, keepdims=True):
    the same bits on rows of awkward lengths and magnitudes over 40 orders."""
    from tinysparse.engine.normalization import _row_mean
    rng = np.random.default_rng(shape[-1])
    x = (rng.standard_normal(shape) * 10.0 ** rng.integers(-20, 20, shape[:-1] + (1,))).astype(dtype)
    assert _row_mean(x, shape[-1]).tobytes() == x.mean(axis=-1, keepdims=True).tobytes()
