"""Every op is finite wherever its mathematics is, in float32 and float64 (issue 11, kind 1):
property tests (hypothesis). The forward and backward of every differentiable op are finite on
inputs drawn from the whole finite float32 and float64 range where the mathematical result (and
its derivative) is finite. Each op's domain is written next to it: exp overflows legitimately
above log(max), x**2 above sqrt(max), and so on; a float64 sum's partial sums, a matmul's
products and attention's scores must be representable (written in the ops' docstrings), so
their inputs are bounded accordingly. NumPy's overflow, invalid and divide-by-zero flags raise
inside these tests: an intermediate that overflows fails even when the result happens to come
out finite. Underflow to 0 of a result that is too small to represent is correct rounding and
allowed. In float32 every result must also agree with the same op computed in float64, to
float32's rounding: a tail that rounds to 0 (sigmoid(-20)) is caught here even though 0 is
finite.

A new differentiable op gets its line here, with its domain (docs/ARCHITECTURE.md).
test_numerics_examples.py holds the exact values of the faults these tests found.
"""
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tinysparse as ts
from numerics_helpers import FLOATS, big, grad_of
from tinysparse import functional as F

PROPERTY = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])


def tiny(dtype):
    return float(np.finfo(dtype).tiny)


def _inside(value, dtype, toward):
    """value as a number of dtype, rounded toward `toward` if it is not one exactly."""
    if value is None:
        return None
    v = dtype(value)
    if (float(v) > value and toward < value) or (float(v) < value and toward > value):
        v = np.nextafter(v, dtype(toward))
    return float(v)


def floats(dtype, lo=None, hi=None):
    return st.floats(_inside(lo, dtype, math.inf), _inside(hi, dtype, -math.inf),
                     width=np.finfo(dtype).bits, allow_nan=False, allow_infinity=False)


def magnitudes(dtype, lo=0.0, hi=None):
    """Floats with |x| in [lo, hi] (hi: the dtype's maximum) and either sign."""
    return st.tuples(floats(dtype, lo, hi), st.booleans()).map(lambda t: -t[0] if t[1] else t[0])


def arrays(dtype, elements, shape):
    return hnp.arrays(dtype, shape, elements=elements)


def with_fixed_mask(fn):
    def masked(x):
        ts.manual_seed(7)
        return fn(x)
    return masked


# name: (function, elements of its domain for a dtype). Elementwise: checked element by element.
ELEMENTWISE = {
    "neg": (lambda x: -x, floats),
    "clone": (lambda x: x.clone(), floats),
    "relu": (ts.relu, floats),
    "tanh": (ts.tanh, floats),
    "sigmoid": (ts.sigmoid, floats),
    "gelu": (F.gelu, floats),
    "exp": (ts.exp, lambda dt: floats(dt, hi=math.log(big(dt)) - 1)),
    "log": (ts.log, lambda dt: floats(dt, lo=tiny(dt))),
    "sqrt": (ts.sqrt, lambda dt: floats(dt, lo=tiny(dt))),
    "square": (lambda x: x ** 2, lambda dt: magnitudes(dt, hi=big(dt) ** 0.5 / 2)),
    "cube": (lambda x: x ** 3, lambda dt: magnitudes(dt, hi=big(dt) ** (1 / 3) / 2)),
    "reciprocal": (lambda x: x ** -1, lambda dt: magnitudes(dt, lo=2 / big(dt) ** 0.5)),
    "pow_half": (lambda x: x ** 0.5, lambda dt: floats(dt, lo=tiny(dt))),
    "pow_zero": (lambda x: x ** 0, floats),
    "two_to_the": (lambda x: 2.0 ** x, lambda dt: floats(dt, hi=math.log2(big(dt)) - 1)),
    "three_over": (lambda x: 3.0 / x, lambda dt: magnitudes(dt, lo=4 / big(dt) ** 0.5)),
    "dropout": (with_fixed_mask(lambda x: F.dropout(x, p=0.5)), lambda dt: floats(dt, -big(dt) / 4, big(dt) / 4)),
    "float32_round_trip": (lambda x: x.float().double() if x.dtype == np.float64 else x.double().float(),
                           lambda dt: floats(np.float32)),
}

# Along the last axis of a (rows, C) array: checked row by row, to the scale of the row.
ROWWISE = {
    # a row holds at most 6 values, so |sum| <= 6 * big / 8 stays finite; past that the sum's true
    # value overflows the dtype (six float32 values of 5.67e37 sum to 3.4028238e38 > float32's
    # 3.4028235e38, a case hypothesis found): inf is then the right answer, not a finite one
    "sum": (lambda x: x.sum(axis=-1), lambda dt: floats(dt, -big(dt) / 8, big(dt) / 8)),
    "mean": (lambda x: x.mean(axis=-1), floats),
    "max": (lambda x: x.max(axis=-1), floats),
    "min": (lambda x: x.min(dim=-1).values, floats),
    "softmax": (lambda x: F.softmax(x, dim=-1), floats),
    "log_softmax": (lambda x: F.log_softmax(x, axis=-1), lambda dt: floats(dt, -big(dt) / 4, big(dt) / 4)),
    "layer_norm": (F.layer_norm, floats),
    "cross_entropy": (lambda x: F.cross_entropy(x, np.arange(x.shape[0]) % x.shape[1]),
                      lambda dt: floats(dt, -big(dt) / 4, big(dt) / 4)),
}

row_shapes = hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=6)


def check_against_float64(fn, values, got, grads, seed, per_element, backward=True, terms=0.0):
    """float32 results agree with the same op in float64 (which has range to spare), to float32's
    rounding: per element for elementwise ops, to the array's scale for the others (which sum).
    A gradient that sums terms which cancel (softmax's y (g - sum(g y)) where y is near 1,
    broadcast_to's sum of upstream weights) is exact only to the scale of those terms: `terms`
    (1 for ops whose Jacobian entries are at most 1, the upstream weights' |w| <= 1) is its scale
    when it is larger than the gradient's own.
    backward=False compares only the forward: for layer norm and attention the terms that cancel
    grow with 1/std and |k| |v|, scales this test does not know; their backward is checked for
    finiteness here and against float64 at chosen points in part 1."""
    want, want_grads = grad_of(fn, *[v.astype(np.float64) for v in values], dtype=np.float64, seed=seed)
    pairs = [(got, want, 0.0)] + ([(g, w, terms) for g, w in zip(grads, want_grads)] if backward else [])
    for g, w, terms in pairs:
        w32 = w.astype(np.float32)          # the float64 answer, rounded as a float32 result is
        scale = 0.0 if per_element else max(float(np.max(np.abs(w32), initial=0.0)), terms)
        rtol = 2e-5 if per_element else 1e-4
        np.testing.assert_allclose(g, w32, rtol=rtol, atol=1e-37 + rtol * scale)


def check_finite(fn, values, dtype, per_element, seed=0, backward_agrees=True, terms=0.0):
    out, grads = grad_of(fn, *values, dtype=dtype, seed=seed)
    assert np.isfinite(out).all(), f"forward not finite: {out}"
    for g in grads:
        assert np.isfinite(g).all(), f"gradient not finite: {g}"
    if dtype == np.float32:
        check_against_float64(fn, values, out, grads, seed, per_element, backward_agrees, terms)


# ---- elementwise and row ops --------------------------------------------------------------------

@pytest.mark.parametrize("dtype", FLOATS, ids=["float32", "float64"])
@pytest.mark.parametrize("name", list(ELEMENTWISE))
@PROPERTY
@given(data=st.data())
def test_elementwise_ops_are_finite_on_their_whole_domain(name, dtype, data):
    fn, domain = ELEMENTWISE[name]
    x = data.draw(arrays(dtype, domain(dtype), st.integers(1, 8)), label="x")
    check_finite(fn, [x], dtype, per_element=True)


@pytest.mark.parametrize("dtype", FLOATS, ids=["float32", "float64"])
@pytest.mark.parametrize("name", list(ROWWISE))
@PROPERTY
@given(data=st.data())
def test_row_ops_are_finite_on_their_whole_domain(name, dtype, data):
    fn, domain = ROWWISE[name]
    x = data.draw(arrays(dtype, domain(dtype), row_shapes), label="x")
    check_finite(fn, [x], dtype, per_element=False, backward_agrees=name != "layer_norm", terms=1.0)


@pytest.mark.parametrize("dtype", FLOATS, ids=["float32", "float64"])
@PROPERTY
@given(data=st.data())
def test_layer_norm_with_weight_and_bias_is_finite(dtype, data):
    x = data.draw(arrays(dtype, floats(dtype), row_shapes), label="x")
    C = x.shape[-1]
    # dL/dx reaches |w| / sqrt(eps) = 316 |w| (times C) at a constant row: |w| <= max / 1e5
    w = data.draw(arrays(dtype, floats(dtype, -big(dtype) / 1e5, big(dtype) / 1e5), C), label="w")
    b = data.draw(arrays(dtype, floats(dtype, -big(dtype) / 4, big(dtype) / 4), C), label="b")
    check_finite(F.layer_norm, [x, w, b], dtype, per_element=False, backward_agrees=False)


# ---- binary ops ---------------------------------------------------------------------------------

def _log_abs(v):
    return -math.inf if v == 0 else math.log2(abs(v))


def _products_fit(dtype, a, b, divide):
    """|a * b| (or |a / b|, |1/b| and |a / b^2| for a division) at most max/4, in log space."""
    limit = math.log2(big(dtype)) - 2
    la, lb = _log_abs(float(a)), _log_abs(float(b))
    if divide:
        return lb > -math.inf and max(la - lb, -lb, la - 2 * lb) <= limit
    return la + lb <= limit


BINARY = {
    "add": (lambda a, b: a + b, lambda dt, a, b: True),
    "sub": (lambda a, b: a - b, lambda dt, a, b: True),
    "mul": (lambda a, b: a * b, lambda dt, a, b: _products_fit(dt, a, b, divide=False)),
    "div": (lambda a, b: a / b, lambda dt, a, b: _products_fit(dt, a, b, divide=True)),
    "where": (lambda a, b: ts.where(np.arange(a.shape[0]) % 2 == 0, a, b), lambda dt, a, b: True),
}


@pytest.mark.parametrize("dtype", FLOATS, ids=["float32", "float64"])
@pytest.mark.parametrize("name", list(BINARY))
@PROPERTY
@given(data=st.data())
def test_binary_ops_are_finite_on_their_whole_domain(name, dtype, data):
    fn, fits = BINARY[name]
    limit = big(dtype) / 2 if name in ("add", "sub") else None   # a + b itself must be finite
    pair = st.tuples(floats(dtype, None if limit is None else -limit, limit),
                     floats(dtype, None if limit is None else -limit, limit))
    pairs = data.draw(st.lists(pair.filter(lambda p: fits(dtype, *p)), min_size=1, max_size=6),
                      label="pairs")
    a, b = (np.array(v, dtype=dtype) for v in zip(*pairs))
    check_finite(fn, [a, b], dtype, per_element=True)


# ---- matmul and attention: finite where their products are --------------------------------------

def _bounded(dtype, bound):
    return st.one_of(magnitudes(dtype, 0.0, bound), magnitudes(dtype, 0.0, 1.0))


@pytest.mark.parametrize("dtype", FLOATS, ids=["float32", "float64"])
@PROPERTY
@given(data=st.data(), n=st.integers(1, 4), k=st.integers(1, 4), m=st.integers(1, 4))
def test_matmul_is_finite_where_its_products_are(dtype, data, n, k, m):
    bound = (big(dtype) / (16 * n * k * m)) ** 0.5
    a = data.draw(arrays(dtype, _bounded(dtype, bound), (n, k)), label="a")
    b = data.draw(arrays(dtype, _bounded(dtype, bound), (k, m)), label="b")
    check_finite(lambda a, b: a @ b, [a, b], dtype, per_element=False)


@pytest.mark.parametrize("dtype", FLOATS, ids=["float32", "float64"])
@pytest.mark.parametrize("causal", [True, False])
@PROPERTY
@given(data=st.data(), T=st.integers(1, 4), hd=st.integers(1, 4))
def test_attention_is_finite_where_its_scores_are(dtype, causal, data, T, hd):
    bound = (big(dtype) / (64 * hd * T * T)) ** 0.5
    q, k, v = (data.draw(arrays(dtype, _bounded(dtype, bound), (1, T, hd)), label=n) for n in "qkv")
    check_finite(lambda q, k, v: F.attention(q, k, v, causal=causal), [q, k, v], dtype,
                 per_element=False, backward_agrees=False)


@pytest.mark.parametrize("dtype", FLOATS, ids=["float32", "float64"])
@PROPERTY
@given(data=st.data(), T=st.integers(1, 4), n_head=st.integers(1, 2))
def test_packed_causal_attention_is_finite_where_its_scores_are(dtype, data, T, n_head):
    C = 2 * n_head
    bound = (big(dtype) / (64 * C * T * T)) ** 0.5
    qkv = data.draw(arrays(dtype, _bounded(dtype, bound), (1, T, 3 * C)), label="qkv")
    check_finite(lambda t: F.causal_self_attention(t, n_head), [qkv], dtype, per_element=False,
                 backward_agrees=False)


# ---- shape ops ----------------------------------------------------------------------------------

SHAPE_OPS = {   # no arithmetic but the gradient's scatter-add and unbroadcast's sums
    "reshape": lambda x: x.reshape(-1),
    "permute": lambda x: x.permute(1, 0),
    "broadcast_to": lambda x: x.broadcast_to((2,) + x.shape),
    "getitem_repeats": lambda x: x[[0, 0, -1]],
    "concatenate": lambda x: ts.cat([x, x * 0.5], dim=0),
    "stack": lambda x: ts.stack([x, x], dim=-1),
    "unsqueeze_squeeze_flatten": lambda x: x.unsqueeze(0).squeeze(0).flatten(),
    "masked_fill": lambda x: x.masked_fill(np.eye(*x.shape, dtype=bool), -1.0),
}


@pytest.mark.parametrize("dtype", FLOATS, ids=["float32", "float64"])
@pytest.mark.parametrize("name", list(SHAPE_OPS))
@PROPERTY
@given(data=st.data())
def test_shape_ops_are_finite_on_the_whole_range(name, dtype, data):
    x = data.draw(arrays(dtype, floats(dtype, -big(dtype) / 4, big(dtype) / 4), row_shapes), label="x")
    check_finite(SHAPE_OPS[name], [x], dtype, per_element=False, terms=1.0)   # backward sums weights
