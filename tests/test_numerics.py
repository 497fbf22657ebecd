"""Every op is finite wherever its mathematics is, in float32 and float64 (issue 11, kind 1).

1. The examples, each with its exact expected value: sigmoid's tails, GELU's derivative at 1e20,
   and one input for each fault the audit found (tanh' in its tails, Div's backward with a large
   divisor, Pow with exponent 0 at 0, float32 sums and means, layer norm of huge rows, an
   ignored cross-entropy row with extreme logits).
2. Property tests (hypothesis): the forward and backward of every differentiable op are finite on
   inputs drawn from the whole finite float32 and float64 range where the mathematical result
   (and its derivative) is finite. Each op's domain is written next to it: exp overflows
   legitimately above log(max), x**2 above sqrt(max), and so on; a float64 sum's partial sums,
   a matmul's products and attention's scores must be representable (written in the ops'
   docstrings), so their inputs are bounded accordingly. NumPy's overflow, invalid and
   divide-by-zero flags raise inside these tests: an intermediate that overflows fails even when
   the result happens to come out finite. Underflow to 0 of a result that is too small to
   represent is correct rounding and allowed. In float32 every result must also agree with the
   same op computed in float64, to float32's rounding: a tail that rounds to 0 (sigmoid(-20))
   is caught here even though 0 is finite.
3. float16 inputs are computed in float32 inside (function.py): the answer is float32's, rounded
   once, even where a float16 intermediate would overflow.
"""
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tinysparse as ts
from tinysparse import Tensor
from tinysparse import functional as F

FLOATS = [np.float32, np.float64]
PROPERTY = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
RAISE = dict(over="raise", invalid="raise", divide="raise", under="ignore")


def big(dtype):
    return float(np.finfo(dtype).max)


def tiny(dtype):
    return float(np.finfo(dtype).tiny)


def grad_of(fn, *values, dtype=np.float32, seed=None):
    """(output, [input gradients]) of fn on float `values`; the backward seed is ones or random."""
    inputs = [Tensor(np.asarray(v, dtype=dtype), requires_grad=True) for v in values]
    with np.errstate(**RAISE):
        out = fn(*inputs)
        w = (np.ones(out.shape) if seed is None
             else np.random.default_rng(seed).uniform(-1, 1, out.shape))
        out.backward(w.astype(out.dtype))
    return out.numpy(), [t.grad for t in inputs]


# ---- 1. the examples ----------------------------------------------------------------------------

def test_sigmoid_tails_are_exact_in_float32():
    """0.5 (tanh(x/2) + 1) rounded to 0 below about -17; the true sigmoid(-20) is 2.0611537e-09."""
    x = [-20.0, -17.0, -100.0, 20.0, 0.0]
    y, (dx,) = grad_of(ts.sigmoid, x)
    true = 1.0 / (1.0 + np.exp(-np.array(x)))                  # float64, exact enough here
    assert y[0] == pytest.approx(2.0611537e-09, rel=1e-7)
    np.testing.assert_allclose(y, true.astype(np.float32), rtol=2e-7, atol=0)
    assert y[2] > 0                                            # 3.7e-44, a float32 subnormal
    np.testing.assert_allclose(dx, (true * (1 - true)).astype(np.float32), rtol=2e-7, atol=1e-44)
    assert dx[3] == pytest.approx(2.0611537e-09, rel=1e-6)    # the slope at +20 is not 1 - 1 = 0


@pytest.mark.parametrize("dtype", FLOATS)
def test_gelu_derivative_at_plus_and_minus_1e20(dtype):
    """x*x overflowed to inf and met 1 - tanh^2 = 0: the derivative was nan."""
    y, (dx,) = grad_of(F.gelu, [1e20, -1e20], dtype=dtype)
    np.testing.assert_array_equal(dx, [1.0, 0.0])
    np.testing.assert_array_equal(y, np.array([1e20, 0.0], dtype=dtype))


@pytest.mark.parametrize("dtype", FLOATS)
def test_gelu_negative_tail_is_not_rounded_to_zero(dtype):
    """gelu(-10) = -10 sigmoid(2u(-10)) = -1.0e-37; 0.5 x (1 + tanh u) gave exactly 0."""
    u = math.sqrt(2 / math.pi) * (-10 + 0.044715 * -1000)
    expected = -10 * math.exp(2 * u) / (1 + math.exp(2 * u))
    y, _ = grad_of(F.gelu, [-10.0], dtype=dtype)
    assert y[0] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("dtype", FLOATS)
def test_tanh_derivative_in_the_tails(dtype):
    """1 - tanh(x)^2 is 0 once tanh rounds to 1; tanh'(10) = sech(10)^2 = 8.2446e-09."""
    _, (dx,) = grad_of(ts.tanh, [10.0, -30.0], dtype=dtype)
    np.testing.assert_allclose(dx, [1 / math.cosh(10) ** 2, 1 / math.cosh(30) ** 2], rtol=1e-5)


def test_division_by_a_large_number_has_its_gradient():
    """d(a/b)/db = -a/b^2 was computed with b*b, which overflows in float32 for |b| > 1.8e19."""
    _, (da, db) = grad_of(lambda a, b: a / b, [1e30], [1e30])
    assert da[0] == pytest.approx(1e-30, rel=1e-6) and db[0] == pytest.approx(-1e-30, rel=1e-6)


@pytest.mark.parametrize("dtype", FLOATS)
def test_power_zero_at_zero_has_zero_gradient(dtype):
    """x**0 = 1 is constant; the old backward was 0 * 0**-1 = 0 * inf = nan."""
    y, (dx,) = grad_of(lambda x: x ** 0, [0.0, 2.0], dtype=dtype)
    np.testing.assert_array_equal(y, [1.0, 1.0])
    np.testing.assert_array_equal(dx, [0.0, 0.0])


def test_float32_sum_and_mean_do_not_overflow_in_partial_sums():
    s, (ds,) = grad_of(lambda x: x.sum(), [3e38, 3e38, -3e38])
    assert s == np.float32(3e38) and (ds == 1).all()
    m, _ = grad_of(lambda x: x.mean(), [3e38, 3e38])
    assert m == np.float32(3e38)
    m64, _ = grad_of(lambda x: x.mean(), [1e308, 1e308], dtype=np.float64)
    assert m64 == 1e308


@pytest.mark.parametrize("dtype, value", [(np.float32, 5.671373e37), (np.float64, 3e307)])
def test_a_sum_whose_true_value_overflows_is_inf_with_the_usual_warning(dtype, value):
    """Six equal values whose exact sum is past the dtype's maximum (float32: 3.4028238e38, over
    3.4028235e38; hypothesis found it): inf, as NumPy answers, with its overflow warning (an error
    under np.errstate(over='raise')), and the gradient still 1 per element."""
    x = ts.Tensor(np.full((1, 6), value, dtype), requires_grad=True)
    with pytest.warns(RuntimeWarning, match="overflow"):
        s = x.sum(axis=-1)
    assert s.data.dtype == dtype and np.isposinf(s.data).all()
    s.sum().backward()
    assert (x.grad == 1).all()
    with np.errstate(over="raise"), pytest.raises(FloatingPointError):
        x.sum(axis=-1)


BIG = np.finfo(np.float64).max


@pytest.mark.parametrize("fn, values, want", [
    # mean of three largest floats: (x / 3).sum() rounded past the maximum (hypothesis found it)
    (lambda x: x.mean(-1), [[BIG, BIG, BIG]], [BIG]),
    (lambda x: x.mean(), [BIG, BIG, -BIG, BIG], [BIG / 2]),
    (lambda x: x.mean(axis=0), [[BIG, 1.0], [BIG, 3.0]], [BIG, 2.0]),
    (lambda x: x.mean(axis=(0, 1), keepdims=True), [[BIG, BIG], [BIG, BIG]], [[BIG]]),
    # a float64 sum whose partial sum overflows although the result is finite
    (lambda x: x.sum(), [1e308, 1e308, -1e308], [1e308]),
    (lambda x: x.sum(axis=1), [[1e308, 1e308, -1e308], [1.0, 2.0, 3.0]], [1e308, 6.0]),
    (lambda x: x.sum(axis=0, keepdims=True), [[BIG, 0.0], [-BIG / 2, 0.0]], [[BIG / 2, 0.0]]),
])
def test_float64_sum_and_mean_finite_where_the_result_is(fn, values, want):
    """The kind of [max, max, max].mean(): every partial result of the safe path stays finite,
    and each row comes out at its exact value (an all-zero row too)."""
    y, (dx,) = grad_of(fn, values, dtype=np.float64)
    np.testing.assert_allclose(y.reshape(-1), np.asarray(want, np.float64).reshape(-1), rtol=1e-15)
    assert np.isfinite(dx).all()


@pytest.mark.parametrize("dtype", FLOATS)
def test_layer_norm_of_huge_rows(dtype):
    """(x - mean)^2 overflowed: var = inf, rstd = 0, and every output 0; a constant huge row
    gave 0/0. The answers are those of the same rows divided by 1e20 (layer norm is scale-free)."""
    hi = 1e20 if dtype == np.float32 else 1e200
    rows = np.array([[1.0, -1.0, 3.0, 0.0], [3.0, -3.0, 3.0, 3.0], [1.0, 1.0, 1.0, 1.0]])
    y, (dx,) = grad_of(F.layer_norm, rows * hi, dtype=dtype, seed=0)
    y_small, (dx_small,) = grad_of(F.layer_norm, rows, dtype=dtype, seed=0)
    np.testing.assert_allclose(y[:2], y_small[:2], rtol=1e-5)
    np.testing.assert_array_equal(y[2], 0.0)                  # a constant row: xhat = 0
    np.testing.assert_allclose(dx[:2] * hi, dx_small[:2], rtol=1e-4, atol=1e-6)
    assert np.isfinite(dx).all()


@pytest.mark.parametrize("dtype, c", [(np.float32, 5.4367064e+17), (np.float64, 4.858867752959059e+17)])
def test_layer_norm_of_a_constant_row_is_zero(dtype, c):
    """The rounded mean of [c, c, c] is not c for these c; with eps negligible next to the rounding
    error the row normalised to [-1, -1, -1]. The corrected two-pass mean gives exactly c."""
    assert np.full(3, c, dtype).mean() != dtype(c)      # the premise: a plain mean is off
    y, (dx,) = grad_of(F.layer_norm, [[c, c, c]], dtype=dtype, seed=0)
    np.testing.assert_array_equal(y, [[0.0, 0.0, 0.0]])
    assert np.isfinite(dx).all()


@pytest.mark.parametrize("dtype, c", [(np.float32, 3e30), (np.float64, 3.5e159)])
def test_layer_norm_of_a_huge_constant_row_has_the_gradient_of_rstd_one_over_sqrt_eps(dtype, c):
    """At a constant row the std is sqrt(eps): dL/dx = (g - mean(g)) / sqrt(eps). eps / scale^2
    underflowed to 0 here (the row's scale is 2^100 or 2^529), and the floored std made the
    gradient 1e148 times too large (it overflowed with a large weight)."""
    y, (dx,) = grad_of(F.layer_norm, [[c, c, c, c]], dtype=dtype, seed=4)
    g = np.random.default_rng(4).uniform(-1, 1, (1, 4)).astype(dtype)
    np.testing.assert_array_equal(y, np.zeros((1, 4)))
    np.testing.assert_allclose(dx, (g - g.mean()) / math.sqrt(1e-5), rtol=1e-5)


def test_layer_norm_near_the_float32_maximum():
    y, (dx,) = grad_of(F.layer_norm, [[3e38, -3e38, 3e38, 3e38]], seed=1)
    np.testing.assert_allclose(y, [[1 / math.sqrt(3), -math.sqrt(3), 1 / math.sqrt(3), 1 / math.sqrt(3)]],
                               rtol=1e-6)
    assert np.isfinite(dx).all()


def test_an_ignored_row_with_extreme_logits_does_not_make_the_loss_nan():
    """The ignored row's stand-in target (class 0) sits 6e38 below its max: nll = inf, and inf * 0
    (the old mask) was nan. The loss is the counted row's alone."""
    logits = [[-3e38, 3e38], [0.0, 1.0]]
    loss, (dz,) = grad_of(lambda z: F.cross_entropy(z, np.array([-100, 1]), ignore_index=-100), logits)
    assert loss == pytest.approx(math.log1p(math.exp(-1)), rel=1e-6)
    np.testing.assert_array_equal(dz[0], [0.0, 0.0])


@pytest.mark.parametrize("dtype", FLOATS)
def test_softmax_of_logits_further_apart_than_the_range_is_quiet_and_exact(dtype):
    hi = big(dtype) * 0.9
    p, (dx,) = grad_of(lambda x: F.softmax(x, axis=-1), [[-hi, hi, 0.0]], dtype=dtype, seed=0)
    np.testing.assert_array_equal(p, [[0.0, 1.0, 0.0]])
    assert np.isfinite(dx).all()


def test_mean_over_an_empty_axis_is_nan_without_a_warning(recwarn):
    x = Tensor(np.zeros((0, 3)), requires_grad=True)
    m = x.mean(axis=0)
    assert m.shape == (3,) and np.isnan(m.numpy()).all()
    m.sum().backward()
    assert x.grad.shape == (0, 3)
    assert np.isnan(Tensor(np.zeros(0, np.float32)).mean().item())
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


@pytest.mark.parametrize("reduce", ["max", "min"])
def test_max_and_min_over_an_empty_axis_are_an_error(reduce):
    with pytest.raises(ValueError, match="empty axis.*not empty"):
        getattr(Tensor(np.zeros((0, 3))), reduce)(axis=0)
    assert getattr(Tensor(np.zeros((0, 3))), reduce)(axis=1).shape == (0,)  # nothing to reduce


# ---- 2. property tests: finite wherever the mathematics is -------------------------------------

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


@pytest.mark.parametrize("dtype", FLOATS, ids=["float32", "float64"])
@PROPERTY
@given(data=st.data(), T=st.integers(1, 4), n_head=st.integers(1, 2))
def test_packed_causal_attention_is_finite_where_its_scores_are(dtype, data, T, n_head):
    C = 2 * n_head
    bound = (big(dtype) / (64 * C * T * T)) ** 0.5
    qkv = data.draw(arrays(dtype, _bounded(dtype, bound), (1, T, 3 * C)), label="qkv")
    check_finite(lambda t: F.causal_self_attention(t, n_head), [qkv], dtype, per_element=False,
                 backward_agrees=False)


# ---- 3. float16 is computed in float32 inside ---------------------------------------------------

HALF_CASES = {
    "layer_norm": (F.layer_norm, [[300.0, -300.0, 100.0, 0.0]]),   # 300^2 overflows float16
    "gelu": (F.gelu, [100.0, -3.0, 0.5]),                          # 100^3 overflows float16
    "sum": (lambda x: x.sum(), [60000.0, 60000.0, -60000.0]),      # the partial sum overflows
    "softmax": (lambda x: F.softmax(x, dim=-1), [[-60000.0, 60000.0, 1.0]]),
    "sigmoid": (ts.sigmoid, [-12.0, 0.0, 12.0]),
    "div": (lambda x: 1.0 / x, [300.0, -0.5, 1000.0]),
    "matmul": (lambda x: x[0] @ x[1], [[200.0, 200.0, -200.0], [200.0, 200.0, 200.0]]),
}


@pytest.mark.parametrize("name", list(HALF_CASES))
def test_float16_is_computed_in_float32_and_rounded_once(name):
    fn, values = HALF_CASES[name]
    x16 = np.asarray(values, dtype=np.float16)
    out16, (g16,) = grad_of(fn, x16, dtype=np.float16, seed=3)
    out32, (g32,) = grad_of(fn, x16.astype(np.float32), dtype=np.float32, seed=3)
    assert out16.dtype == np.float16 and g16.dtype == np.float16
    assert np.isfinite(out16).all() and np.isfinite(g16).all()
    np.testing.assert_array_equal(out16, out32.astype(np.float16))
    np.testing.assert_array_equal(g16, g32.astype(np.float16))


def test_a_function_on_float16_sees_float32_in_forward_and_backward():
    """Inside, forward and backward both work in float32; the tensors between the Functions (and
    the leaf's .grad) are float16."""
    seen = []

    class Spy(ts.Function):
        @staticmethod
        def forward(ctx, a):
            seen.append(a.dtype)
            return a * 1.0

        @staticmethod
        def backward(ctx, grad):
            seen.append(grad.dtype)
            return grad

    x = Tensor(np.ones(3, np.float16), requires_grad=True)
    y = Spy.apply(F.gelu(x))
    assert y.dtype == np.float16
    y.sum().backward()
    assert seen == [np.float32, np.float32] and x.grad.dtype == np.float16


@pytest.mark.parametrize("dtype,scale", [(np.float32, 1.0), (np.float64, 1e270)])
@pytest.mark.parametrize("ignore", [None, -1])
def test_cross_entropy_of_losses_whose_sum_overflows_is_their_mean(dtype, scale, ignore):
    """Four rows with losses near 1e38 (float32) or 1e308 (float64): their sum passes the
    dtype's maximum although their mean does not (hypothesis found it). The loss is the mean,
    finite, without an overflow flag, with every row counted or one ignored."""
    row = np.full(6, 7.441427e+37)
    x = np.stack([row] * 4)
    x[0, 0] = -4.262527e+37
    x[[1, 2, 3], [1, 2, 3]] = 0.0
    x = (x * scale).astype(dtype)
    targets = np.arange(4) if ignore is None else np.array([0, 1, ignore, 3])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        loss = F.cross_entropy(Tensor(x), targets, ignore_index=ignore).data
    kept = [0, 1, 3] if ignore is not None else [0, 1, 2, 3]
    nll = [float(x[0, 1]) - float(x[0, 0])] + [float(x[i, 0]) for i in (1, 2, 3)]   # -log p(target)
    expected = sum(nll[i] / len(kept) for i in kept)        # the mean, each term divided first
    assert loss.dtype == dtype and np.isfinite(loss)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-6)
