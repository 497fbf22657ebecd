"""Every op is finite wherever its mathematics is, in float32 and float64 (issue 11, kind 1): the
examples, each with its exact expected value. Sigmoid's tails, GELU's derivative at 1e20, and one
input for each fault the audit found: tanh' in its tails, Div's backward with a large divisor,
Pow with exponent 0 at 0, float32 and float64 sums and means, layer norm of huge and constant
rows, cross-entropy with an ignored row of extreme logits or losses whose sum overflows, softmax
of logits further apart than the range, reductions over an empty axis.

test_numerics_properties.py checks the same on inputs drawn from each op's whole domain;
test_numerics_float16.py, that float16 is computed in float32 inside.
"""
import math

import numpy as np
import pytest

import tinysparse as ts
from numerics_helpers import FLOATS, big, grad_of
from tinysparse import Tensor
from tinysparse import functional as F


# ---- elementwise ops ----------------------------------------------------------------------------

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


# ---- sums and means -----------------------------------------------------------------------------

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


# ---- layer norm ---------------------------------------------------------------------------------

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


# ---- cross-entropy and softmax ------------------------------------------------------------------

def test_an_ignored_row_with_extreme_logits_does_not_make_the_loss_nan():
    """The ignored row's stand-in target (class 0) sits 6e38 below its max: nll = inf, and inf * 0
    (the old mask) was nan. The loss is the counted row's alone."""
    logits = [[-3e38, 3e38], [0.0, 1.0]]
    loss, (dz,) = grad_of(lambda z: F.cross_entropy(z, np.array([-100, 1]), ignore_index=-100), logits)
    assert loss == pytest.approx(math.log1p(math.exp(-1)), rel=1e-6)
    np.testing.assert_array_equal(dz[0], [0.0, 0.0])


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


@pytest.mark.parametrize("dtype", FLOATS)
def test_softmax_of_logits_further_apart_than_the_range_is_quiet_and_exact(dtype):
    hi = big(dtype) * 0.9
    p, (dx,) = grad_of(lambda x: F.softmax(x, axis=-1), [[-hi, hi, 0.0]], dtype=dtype, seed=0)
    np.testing.assert_array_equal(p, [[0.0, 1.0, 0.0]])
    assert np.isfinite(dx).all()
