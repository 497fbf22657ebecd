"""Layer norm's compiled loops (engine/row_kernels.py) against its array code: the same
bits, forward (output, xhat, rstd) and backward (dx, dw, db), in float32 and float64, with and
without weight and bias, on row lengths on both sides of NumPy's summation blocks (1, 7, 8, 9,
127, 128, 129, 333, 4097), on rows spanning 40 orders of magnitude, constant rows, and rows
whose variance overflows (the loops hand those to the scaled array code); the weight and bias
gradients, summed over 1200 rows in the loop, too."""
import numpy as np
import pytest

from tinysparse.engine import row_kernels
from tinysparse.engine.function import Context
from tinysparse.engine.normalization import LayerNorm

from kernel_helpers import assert_same_bits, count_calls


def _case(shape, dtype, seed, affine):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * 10.0 ** rng.integers(-20, 20, shape[:-1] + (1,))
    x += rng.standard_normal(shape[:-1] + (1,)) * 10.0 ** rng.integers(-3, 6, shape[:-1] + (1,))
    flat = x.reshape(-1, shape[-1])
    if flat.shape[0] > 2:
        flat[1] = 5.4e17                              # a constant row
        flat[2, ::2] = -flat[2, ::2]                  # a row of mixed signs
    C = shape[-1]
    w = (rng.standard_normal(C) + 1).astype(dtype) if affine in ("both", "weight") else None
    b = rng.standard_normal(C).astype(dtype) if affine in ("both", "bias") else None
    grad = (rng.standard_normal(shape) * 10.0 ** rng.integers(-4, 4, shape)).astype(dtype)
    return x.astype(dtype), w, b, grad


def _run(x, w, b, grad, compiled, monkeypatch):
    monkeypatch.setattr(LayerNorm, "compiled", compiled)
    ctx = Context((True, w is not None, b is not None))
    with np.errstate(all="ignore"):
        out = LayerNorm.forward(ctx, x, w, b, eps=1e-5)
        saved = ctx.saved[:2]
        grads = LayerNorm.backward(ctx, grad)
    return [out, *saved, *(g for g in grads if g is not None)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(4, 1), (3, 7), (5, 8), (2, 3, 9), (4, 127), (1, 1, 128),
                                   (6, 129), (3, 333), (2, 4097), (3, 400, 96)])
@pytest.mark.parametrize("affine", ["both", "weight", "bias", "none"])
def test_the_compiled_layer_norm_is_bitwise_the_array_code(dtype, shape, affine, monkeypatch):
    x, w, b, grad = _case(shape, dtype, seed=shape[-1] + len(shape), affine=affine)
    expected = _run(x, w, b, grad, False, monkeypatch)
    got = _run(x, w, b, grad, True, monkeypatch)
    assert len(expected) == len(got) == 4 + (w is not None) + (b is not None)   # out, xhat, rstd, dx, dw?, db?
    for a, c in zip(expected, got):
        assert_same_bits(a, c)


def _count_calls(monkeypatch):
    return count_calls(monkeypatch, row_kernels, ("layer_norm_forward", "layer_norm_backward"))


def test_an_overflowing_variance_goes_to_the_scaled_array_code(monkeypatch):
    """A float32 row with |x - mean| near 1e30 squares to inf: the loop says so and the scaled
    array code runs, with the array code's very numbers (finite xhat, not 0 or nan)."""
    calls = _count_calls(monkeypatch)
    x = np.array([[1e30, -1e30, 3e29, 0.5], [1.0, 2.0, 3.0, 4.0]], np.float32)
    w, b = np.ones(4, np.float32), np.zeros(4, np.float32)
    grad = np.arange(8, dtype=np.float32).reshape(2, 4)
    got = _run(x, w, b, grad, True, monkeypatch)
    assert calls == ["layer_norm_forward", "layer_norm_backward"]
    assert np.isfinite(got[0]).all() and abs(got[0][0, 0]) > 1
    for a, c in zip(_run(x, w, b, grad, False, monkeypatch), got):
        assert_same_bits(a, c)


def test_the_loops_run_where_they_apply_and_the_array_code_elsewhere(monkeypatch):
    """C-contiguous float32/float64 arrays of one dtype take the loops; a transposed view and a
    broadcast gradient take the array code, with the same numbers."""
    calls = _count_calls(monkeypatch)
    x, w, b, grad = _case((6, 10), np.float32, seed=1, affine="both")
    _run(x, w, b, grad, True, monkeypatch)
    assert calls == ["layer_norm_forward", "layer_norm_backward"]
    calls.clear()
    view = np.ascontiguousarray(x.T).T                       # x's values, Fortran order
    broadcast = np.broadcast_to(grad[:1], grad.shape)
    for args in ((view, w, b, grad), (x, w, b, broadcast)):
        for a, c in zip(_run(*args, False, monkeypatch), _run(*args, True, monkeypatch)):
            assert_same_bits(a, c)
    assert calls == ["layer_norm_forward"]                  # only the forward of (x, broadcast)


def test_a_numpy_float64_eps_does_not_promote_float32_rows(monkeypatch):
    """eps=np.float64(1e-5) on float32 rows: float32 results, the bits of eps=1e-5, with the
    loops and with the array code (NumPy 2 would compute the std in float64 otherwise)."""
    x, w, b, grad = _case((5, 33), np.float32, seed=2, affine="both")
    runs = []
    for compiled in (False, True):
        for eps in (1e-5, np.float64(1e-5)):
            monkeypatch.setattr(LayerNorm, "compiled", compiled)
            ctx = Context((True, True, True))
            out = LayerNorm.forward(ctx, x, w, b, eps=eps)
            runs.append([out, *LayerNorm.backward(ctx, grad)])
    for run in runs[1:]:
        for a, c in zip(runs[0], run):
            assert a.dtype == np.float32
            assert_same_bits(a, c)


def test_a_weight_of_the_wrong_length_gets_the_array_codes_error_not_a_loop(monkeypatch):
    """A direct LayerNorm.forward with a weight or bias that is not (C,) (layer_norm() refuses
    it first): the loops would read past its end, so the array code runs and raises NumPy's
    broadcast error, loops on or off."""
    x, w, b, _ = _case((4, 9), np.float32, seed=5, affine="both")
    for compiled in (False, True):
        monkeypatch.setattr(LayerNorm, "compiled", compiled)
        for weight, bias in ((w[:5], b), (w, b[:5])):
            with pytest.raises(ValueError, match="broadcast"):
                LayerNorm.forward(Context((True, True, True)), x, weight, bias)
