"""The differentiable primitives of tinysparse/ops.py and the engine of tensor.py.

Every primitive is checked twice: its forward against NumPy, and its backward against central
differences (ts.gradcheck, float64, every element) on inputs whose shapes hypothesis draws: odd
sizes, size-1 axes, 0-d tensors and broadcasting. Inputs stay small (at most 60 elements), because
gradcheck costs two forward passes per element.

Values are drawn away from the points where an op is not differentiable (relu at 0, ties in max,
division by ~0, log of ~0), so that a failure always means a wrong gradient, never a kink.
"""
import math
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tinysparse as ts
from tinysparse import Tensor, ops

MAX_ELEMENTS = 60
FEW = settings(max_examples=20, deadline=None)


# ---- strategies and helpers ----------------------------------------------------------------------

def _small(shape):
    return math.prod(shape) <= MAX_ELEMENTS


def shapes(min_dims=0, max_dims=4, max_side=5):
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=1,
                            max_side=max_side).filter(_small)


def broadcast_shapes(num_shapes=2, min_dims=0, max_dims=4, max_side=4):
    """`num_shapes` shapes that broadcast together (size-1 axes, missing leading axes)."""
    return hnp.mutually_broadcastable_shapes(
        num_shapes=num_shapes, min_dims=min_dims, max_dims=max_dims, max_side=max_side,
    ).filter(lambda b: _small(b.result_shape))


seeds = st.integers(0, 2**32 - 1)


def leaf(rng, shape, low=-2.0, high=2.0):
    """A float64 leaf that requires grad, uniform in [low, high)."""
    return Tensor(rng.uniform(low, high, size=shape), requires_grad=True)


def away_from_zero(rng, shape, low=0.3, high=2.0):
    """Values with |x| in [low, high) and a random sign: no kink or pole near them."""
    magnitude = rng.uniform(low, high, size=shape)
    return Tensor(np.where(rng.random(shape) < 0.5, -magnitude, magnitude), requires_grad=True)


def distinct(rng, shape):
    """Values at least 0.3 apart, shuffled: max has no ties, even after a 1e-6 nudge."""
    n = math.prod(shape)
    return Tensor((rng.permutation(n) * 0.3 - 0.15 * n).reshape(shape).astype(np.float64),
                  requires_grad=True)


def axes_for(ndim):
    """axis= arguments a reduction over `ndim` axes accepts: None, int (either sign), tuple."""
    options = [st.none()]
    if ndim:
        options.append(st.integers(-ndim, ndim - 1))
        options.append(st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True)
                       .map(tuple))
        # a tuple mixing negative and positive axes
        options.append(st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True)
                       .map(lambda axes: tuple(a - ndim if i % 2 else a for i, a in enumerate(axes))))
    return st.one_of(options)


def close(tensor, expected):
    np.testing.assert_allclose(tensor.numpy(), expected, rtol=1e-12, atol=1e-12)
    assert tensor.shape == np.shape(expected)


# ---- gradcheck itself must be able to fail ------------------------------------------------------

class _WrongMul(ts.Function):
    """x * y whose backward forgets one element: gradcheck must notice."""
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a * b

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved
        ga = grad * b
        ga.reshape(-1)[-1] = 0.0  # the bug: the last element gets no gradient
        return ga, grad * a


def test_gradcheck_catches_a_wrong_backward_on_a_single_element(rng):
    a, b = leaf(rng, (3, 4)), leaf(rng, (3, 4))
    with pytest.raises(ts.GradcheckError, match=r"input 0 .* element \(2, 3\)"):
        ts.gradcheck(lambda a, b: _WrongMul.apply(a, b), a, b)
    assert ts.gradcheck(lambda a, b: a * b, a, b)


@pytest.mark.parametrize("option", [dict(eps=0.0), dict(eps=float("nan")), dict(atol=-1.0),
                                    dict(rtol=float("inf"))])
def test_gradcheck_refuses_meaningless_tolerances(option):
    x = Tensor(np.ones(3), requires_grad=True)
    with pytest.raises(ValueError, match=f"gradcheck {next(iter(option))} must be a finite number"):
        ts.gradcheck(lambda x: x * 2, x, **option)


def test_gradcheck_refuses_float32_and_inputs_without_grad(rng):
    with pytest.raises(ValueError, match="float64"):
        ts.gradcheck(lambda a: a * 2, Tensor(np.ones(3, np.float32), requires_grad=True))
    with pytest.raises(ValueError, match="requires_grad"):
        ts.gradcheck(lambda a: a * 2, Tensor(np.ones(3)))


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


# ---- elementwise unary ops -----------------------------------------------------------------------

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
    x = Tensor(np.array([-2.0, -0.1, 0.1, 3.0]), requires_grad=True)
    x.relu().sum().backward()
    np.testing.assert_array_equal(x.grad, [0, 0, 1, 1])


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


# ---- matmul --------------------------------------------------------------------------------------

MATMUL_SHAPES = [
    ((3, 4), (4, 5)),            # 2-D
    ((1, 1), (1, 1)),            # size-1 everything
    ((2, 3, 4), (2, 4, 5)),      # batched
    ((1, 3, 4), (2, 4, 5)),      # broadcast batch on the left
    ((2, 3, 4), (1, 4, 2)),      # broadcast batch on the right
    ((3, 4), (2, 4, 5)),         # 2-D @ 3-D: the 2-D one is broadcast over the batch
    ((2, 1, 3, 4), (5, 4, 2)),   # 4-D @ 3-D, broadcasting both ways
    ((4,), (4, 5)),              # 1-D @ 2-D
    ((4,), (2, 4, 3)),           # 1-D @ N-D
    ((3, 4), (4,)),              # 2-D @ 1-D
    ((2, 3, 4), (4,)),           # N-D @ 1-D
    ((4,), (4,)),                # dot product
    ((2, 3, 4), (4, 5)),         # the (B, T, C) @ (C, D) fast path
    ((2, 3, 2, 4), (4, 3)),      # the fast path with two batch axes
    ((1, 1, 4), (4, 1)),         # the fast path with size-1 axes
]


@pytest.mark.parametrize("sa, sb", MATMUL_SHAPES, ids=[f"{a}@{b}" for a, b in MATMUL_SHAPES])
def test_matmul(sa, sb, rng):
    a, b = leaf(rng, sa), leaf(rng, sb)
    close(a @ b, np.matmul(a.data, b.data))
    close(ts.matmul(a, b), np.matmul(a.data, b.data))
    assert ts.gradcheck(lambda a, b: a @ b, a, b)
    # each input alone, too (the other a constant), which takes different code paths
    b.requires_grad = False
    assert ts.gradcheck(lambda a, b: a @ b, a, b)
    a.requires_grad, b.requires_grad = False, True
    assert ts.gradcheck(lambda a, b: a @ b, a, b)


@FEW
@given(shapes=hnp.mutually_broadcastable_shapes(signature="(n?,k),(k,m?)->(n?,m?)", max_dims=4,
                                                max_side=3),
       seed=seeds)
def test_matmul_drawn_shapes(shapes, seed):
    rng = np.random.default_rng(seed)
    a, b = leaf(rng, shapes.input_shapes[0]), leaf(rng, shapes.input_shapes[1])
    close(a @ b, np.matmul(a.data, b.data))
    assert ts.gradcheck(lambda a, b: a @ b, a, b)


# ---- reductions ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["sum", "mean", "max", "min"])
@settings(max_examples=25, deadline=None)
@given(data=st.data(), shape=shapes(), seed=seeds, keepdims=st.booleans())
def test_reductions(name, data, shape, seed, keepdims):
    rng = np.random.default_rng(seed)
    axis = data.draw(axes_for(len(shape)), label="axis")
    x = distinct(rng, shape) if name in ("max", "min") else leaf(rng, shape)
    fn = lambda x: getattr(x, name)(axis=axis, keepdims=keepdims)  # noqa: E731
    close(fn(x), getattr(np, name)(x.data, axis=axis, keepdims=keepdims))
    assert ts.gradcheck(fn, x)
    functional = getattr(ops, name)
    close(functional(x, axis=axis, keepdims=keepdims), fn(x).numpy())
    if name in ("sum", "mean"):  # PyTorch's spelling of the same call
        close(getattr(x, name)(dim=axis, keepdim=keepdims), fn(x).numpy())


@pytest.mark.parametrize("name", ["sum", "mean", "max", "min"])
@pytest.mark.parametrize("axis", [(-2, 3), (3, -2), (0, -1), (-3, 2), (-1, -4), (3, 0, -3)])
@pytest.mark.parametrize("keepdims", [False, True])
def test_reductions_over_mixed_sign_axis_tuples(name, axis, keepdims, rng):
    """Negative and positive axes in one tuple: the backward must put the axes back in order."""
    x = distinct(rng, (2, 3, 1, 4)) if name in ("max", "min") else leaf(rng, (2, 3, 1, 4))
    fn = lambda x: getattr(x, name)(axis=axis, keepdims=keepdims)  # noqa: E731
    close(fn(x), getattr(np, name)(x.data, axis=axis, keepdims=keepdims))
    assert ts.gradcheck(fn, x)


def test_max_splits_the_gradient_between_ties():
    x = Tensor(np.array([[1.0, 3.0, 3.0], [5.0, 0.0, 5.0]]), requires_grad=True)
    x.max(axis=1).sum().backward()
    np.testing.assert_array_equal(x.grad, [[0, 0.5, 0.5], [0.5, 0, 0.5]])
    y = Tensor(np.array([[1.0, 3.0, 2.0], [1.0, 0.0, 5.0]]), requires_grad=True)
    y.min(axis=0).sum().backward()
    np.testing.assert_array_equal(y.grad, [[0.5, 0, 1], [0.5, 1, 0]])


@FEW
@given(shape=shapes(min_dims=1), seed=seeds)
def test_max_and_min_with_dim_gradcheck_through_the_values(shape, seed):
    rng = np.random.default_rng(seed)
    x = distinct(rng, shape)
    for name in ("max", "min"):
        values, indices = getattr(x, name)(dim=-1)
        close(values, getattr(np, name)(x.data, axis=-1))
        np.testing.assert_array_equal(indices.numpy(), getattr(np, f"arg{name}")(x.data, axis=-1))
        assert ts.gradcheck(lambda x: getattr(x, name)(dim=-1).values, x)


def test_mean_of_everything_divides_by_the_size():
    x = Tensor(np.ones((3, 5)), requires_grad=True)
    x.mean().backward()
    np.testing.assert_allclose(x.grad, np.full((3, 5), 1 / 15))


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


# ---- indexing ------------------------------------------------------------------------------------

@FEW
@given(shape=shapes(min_dims=1), seed=seeds, data=st.data())
def test_getitem_basic_indices(shape, seed, data):
    """Slices (negative steps included), integers, None and Ellipsis, as hypothesis draws them."""
    rng = np.random.default_rng(seed)
    x = leaf(rng, shape)
    index = data.draw(hnp.basic_indices(shape, allow_newaxis=True, allow_ellipsis=True), label="index")
    close(x[index], x.data[index])
    assert ts.gradcheck(lambda x: x[index], x)


@FEW
@given(shape=shapes(min_dims=1, max_dims=3), seed=seeds, data=st.data())
def test_getitem_integer_arrays_drawn(shape, seed, data):
    """Integer-array indices (repeats and negative indices included): the scatter must add."""
    rng = np.random.default_rng(seed)
    x = leaf(rng, shape)
    index = data.draw(hnp.integer_array_indices(
        shape, result_shape=hnp.array_shapes(min_dims=1, max_dims=2, max_side=4)), label="index")
    close(x[index], x.data[index])
    assert ts.gradcheck(lambda x: x[index], x)


GETITEM_CASES = {
    "int": ((4, 3), 2),
    "negative_int": ((4, 3), -1),
    "int_int_0d": ((4, 3), (1, 2)),
    "slice": ((5, 3), slice(1, 4)),
    "negative_step": ((5, 3), slice(None, None, -2)),
    "two_slices": ((5, 4), (slice(4, 0, -1), slice(None, None, 3))),
    "none": ((3, 2), (None, slice(None), None)),
    "ellipsis": ((2, 3, 4), (Ellipsis, 1)),
    "ellipsis_none": ((2, 3, 4), (0, Ellipsis, None, slice(1, 3))),
    "repeated_rows": ((3, 2), [0, 0, 1]),
    "repeated_ndarray": ((4,), np.array([[3, 3], [0, 3]])),
    "tuple_of_int_arrays": ((3, 4), (np.array([0, 2, 0, 0]), np.array([1, 3, 1, 1]))),
    "slice_and_int_array": ((3, 4), (slice(1, None), [0, 0, 2])),
    "bool_mask_full": ((3, 4), np.arange(12).reshape(3, 4) % 3 == 0),
    "bool_mask_axis": ((3, 4), (slice(None), np.array([True, False, True, True]))),
    "bool_tensor_mask": ((5,), Tensor(np.array([True, False, False, True, True]))),
    "int_tensor": ((5, 2), Tensor(np.array([4, 4, 1]))),
}


@pytest.mark.parametrize("name", list(GETITEM_CASES))
def test_getitem_cases(name, rng):
    shape, index = GETITEM_CASES[name]
    x = leaf(rng, shape)
    raw = index.data if isinstance(index, Tensor) else index
    close(x[index], x.data[raw if not isinstance(raw, list) else np.asarray(raw)])
    assert ts.gradcheck(lambda x: x[index], x)


def test_repeated_indices_accumulate_the_gradient():
    x = Tensor(np.arange(6.0).reshape(3, 2), requires_grad=True)
    x[[0, 0, 1]].sum().backward()
    np.testing.assert_array_equal(x.grad, [[2, 2], [1, 1], [0, 0]])
    x.grad = None
    rows, cols = np.array([2, 2, 2, 0]), np.array([1, 1, 0, 0])
    x[rows, cols].sum().backward()
    np.testing.assert_array_equal(x.grad, [[1, 0], [0, 0], [1, 2]])


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


# ---- where and masked_fill -----------------------------------------------------------------------

@FEW
@given(shapes=broadcast_shapes(num_shapes=3), seed=seeds)
def test_where_broadcasts_condition_and_branches(shapes, seed):
    rng = np.random.default_rng(seed)
    sc, sa, sb = shapes.input_shapes
    condition = rng.random(sc) < 0.5
    a, b = leaf(rng, sa), leaf(rng, sb)
    close(ts.where(condition, a, b), np.where(condition, a.data, b.data))
    close(ts.where(Tensor(condition), a, b), np.where(condition, a.data, b.data))
    assert ts.gradcheck(lambda a, b: ts.where(condition, a, b), a, b)


@FEW
@given(shapes=broadcast_shapes(), seed=seeds)
def test_masked_fill_with_a_broadcast_mask(shapes, seed):
    rng = np.random.default_rng(seed)
    sx, sm = shapes.input_shapes
    x = leaf(rng, sx)
    mask = rng.random(sm) < 0.4
    expected = np.where(mask, -7.0, x.data)
    close(x.masked_fill(mask, -7.0), expected)
    close(ts.masked_fill(x, Tensor(mask), -7.0), expected)
    assert ts.gradcheck(lambda x: x.masked_fill(mask, -7.0), x)


def test_masked_fill_with_minus_infinity_keeps_gradients_finite():
    x = Tensor(np.arange(6.0).reshape(2, 3), requires_grad=True)
    mask = np.triu(np.ones((3, 3), bool), k=1)[:2]
    y = x.masked_fill(mask, -np.inf)
    assert np.isneginf(y.numpy()[mask]).all()
    y.exp().sum().backward()
    np.testing.assert_allclose(x.grad, np.where(mask, 0.0, np.exp(x.data)))


# ---- dtype casts ---------------------------------------------------------------------------------

def test_cast_forward_and_backward_dtypes(rng):
    x = leaf(rng, (3, 4))
    y = x.astype(np.float32)
    assert y.dtype == np.float32 and y.requires_grad
    (y * 2).sum().backward()
    assert x.grad.dtype == np.float64
    np.testing.assert_array_equal(x.grad, np.full((3, 4), 2.0))
    assert x.float().dtype == np.float32 and x.float().double().dtype == np.float64


class _Spy(ts.Function):
    """The identity, remembering the dtype of the gradient its backward receives."""
    seen = []

    @staticmethod
    def forward(ctx, a):
        return a

    @staticmethod
    def backward(ctx, grad):
        _Spy.seen.append(grad.dtype)
        return grad


def test_cast_hands_back_gradients_in_the_input_dtype(rng):
    """Every backward receives a gradient of its output's dtype, also across a cast."""
    x = leaf(rng, (2, 3))
    _Spy.seen.clear()
    _Spy.apply(x).astype(np.float32).sum().backward()
    y = Tensor(np.ones(3, np.float32), requires_grad=True)
    _Spy.apply(y).double().sum().backward()
    assert _Spy.seen == [np.float64, np.float32]


def test_cast_gradcheck(rng):
    x = leaf(rng, (2, 3))
    assert ts.gradcheck(lambda x: x.astype(np.float64) * x, x)
    # through float32 the central differences need a coarser step (float32 resolves ~1e-7)
    assert ts.gradcheck(lambda x: (x.float() * 3).double(), x, eps=1e-2, atol=1e-4)


# ---- the engine: accumulation, no_grad, detach, graph shapes -------------------------------------

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


# ---- dtypes --------------------------------------------------------------------------------------

def test_dtype_rules():
    assert Tensor(np.ones(3)).dtype == np.float64            # NumPy arrays keep their dtype
    assert Tensor(np.ones(3, np.float32)).dtype == np.float32
    assert Tensor([1.0, 2.0]).dtype == np.float32            # Python lists become float32
    assert Tensor([1, 2]).dtype == np.float32
    assert Tensor(3.0).dtype == np.float32
    assert Tensor(np.ones(3), dtype=np.float32).dtype == np.float32
    assert Tensor(np.arange(3)).dtype.kind == "i"            # index arrays stay integer
    assert (Tensor(np.ones(3)) * 2).dtype == np.float64      # a Python scalar does not promote
    assert (Tensor(np.ones(3, np.float32)) * 2.5).dtype == np.float32
    x = Tensor(np.ones((2, 2)))
    for reduced in (x.sum(), x.mean(), x.max(), x[0, 0]):
        assert reduced.dtype == np.float64 and reduced.shape == ()
        assert isinstance(reduced.data, np.ndarray)         # 0-d arrays, not NumPy scalars
        assert Tensor(reduced).dtype == np.float64


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gradients_have_the_dtype_of_the_leaf(dtype):
    x = Tensor(np.ones((2, 3), dtype=dtype), requires_grad=True)
    other = np.full((2, 3), 0.5, dtype=dtype)
    for _ in range(2):             # the second backward accumulates into the first
        (x * other).sum().backward(np.float64(1.0))  # a float64 seed is cast to the root's dtype
        assert x.grad.dtype == dtype
    np.testing.assert_allclose(x.grad, np.full((2, 3), 1.0))


def test_repr_len_and_conversions():
    x = Tensor(np.arange(6.0).reshape(2, 3), requires_grad=True)
    assert "requires_grad=True" in repr(x) and len(x) == 2 and x.size == 6 and x.ndim == 2
    assert x.tolist() == [[0, 1, 2], [3, 4, 5]]
    assert x.sum().item() == 15.0
    assert isinstance(x.numpy(), np.ndarray)
