"""GELU's compiled loops (engine/gelu_kernels.py) against its array code: the same bits, forward,
saved arrays and backward, in float32 and float64, on odd shapes (empty, 0-d, lengths that are
not multiples of a SIMD width), on values across 20 orders of magnitude and on the special ones
(+-0, +-inf, nan, the +-30 clip). NaN is compared as NaN (its payload bits are not a result)."""
import contextlib

import numpy as np
import pytest

import tinysparse as ts
from tinysparse.engine import functional as F
from tinysparse.engine import gelu_kernels
from tinysparse.engine.function import Context

from kernel_helpers import assert_same_bits, count_calls, gpt_after_three_steps

SPECIAL = [0.0, -0.0, np.inf, -np.inf, np.nan, 30.0, -30.0, 30.5, -30.5, 1e30, -1e30, 1e-30,
           -1e-30, 5e-324, 0.5, -0.5]


def _inputs(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * 10.0 ** rng.integers(-10, 10, shape)
    flat = x.reshape(-1)
    flat[:len(SPECIAL)] = SPECIAL[:flat.size]
    grad = rng.standard_normal(shape) * 10.0 ** rng.integers(-6, 6, shape)
    return x.astype(dtype), grad.astype(dtype)


def _run(x, grad, compiled, monkeypatch):
    monkeypatch.setattr(F.GELU, "compiled", compiled)
    ctx = Context((True,))
    with np.errstate(all="ignore"):
        y = F.GELU.forward(ctx, x)
        dx = F.GELU.backward(ctx, grad)
    return [y, *ctx.saved, dx]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1037,), (7, 13), (3, 5, 2), (), (0, 4), (2, 64, 33)])
def test_the_compiled_gelu_is_bitwise_the_array_code(dtype, shape, monkeypatch):
    x, grad = _inputs(shape, dtype, seed=len(shape) + int(np.prod(shape)))
    expected = _run(x, grad, False, monkeypatch)
    got = _run(x, grad, True, monkeypatch)
    for a, b in zip(expected, got):
        assert_same_bits(a, b)


def test_the_loops_run_where_they_apply_and_the_array_code_elsewhere(monkeypatch):
    """Counted calls: C-contiguous float32/float64 NumPy arrays go through the loops; a
    transposed view, a broadcast gradient and float16 (computed in float32 by apply) are
    handled too, each with the array code's values."""
    calls = count_calls(monkeypatch, gelu_kernels, ("gelu_two_u", "gelu_output", "gelu_backward"))
    x, grad = _inputs((6, 9), np.float32, seed=3)
    got = _run(x, grad, True, monkeypatch)
    assert calls == ["gelu_two_u", "gelu_output", "gelu_backward"]
    calls.clear()
    view, broadcast = x.T, np.broadcast_to(grad[:1], grad.shape)   # not C-contiguous
    for args in ((view, grad.T.copy()), (x, broadcast)):
        expected = _run(*args, False, monkeypatch)
        for a, b in zip(expected, _run(*args, True, monkeypatch)):
            assert_same_bits(a, b)
    assert calls == ["gelu_two_u", "gelu_output"]       # only the forward of (x, broadcast)
    assert_same_bits(got[0], _run(x, grad, False, monkeypatch)[0])
    calls.clear()
    with np.errstate(over="ignore"):                    # 1e30 -> inf in float16
        half, results = ts.Tensor(x.astype(np.float16), requires_grad=True), []
    for compiled in (False, True):
        monkeypatch.setattr(F.GELU, "compiled", compiled)
        half.grad = None
        with np.errstate(all="ignore"):                # inf and nan among the inputs
            y = F.gelu(half)
            y.backward(ts.Tensor(grad.astype(np.float16)))
        results.append((y.numpy().tobytes(), half.grad.tobytes(), y.dtype, half.grad.dtype))
    assert results[0] == results[1] and results[1][2:] == (np.float16, np.float16)
    assert calls == ["gelu_two_u", "gelu_output", "gelu_backward"]   # float16 ran in float32


def test_gelu_values_are_those_of_the_formula_through_the_loops():
    """Not only equal to the array code: equal to 0.5 x (1 + tanh u) (float64), and its
    gradient passes gradcheck on every element with the loops on."""
    assert F.GELU.compiled
    rng = np.random.default_rng(7)
    x = ts.Tensor(rng.standard_normal((5, 11)) * 3, requires_grad=True)
    u = np.sqrt(2 / np.pi) * (x.data + 0.044715 * x.data ** 3)
    np.testing.assert_allclose(F.gelu(x).numpy(), 0.5 * x.data * (1 + np.tanh(u)), rtol=1e-12,
                               atol=1e-15)
    assert ts.gradcheck(F.gelu, x)


def test_training_steps_of_a_gpt_are_bitwise_the_same_with_and_without_the_loops(monkeypatch):
    """End to end: three AdamW steps of a small GPT with the engine's loops (GELU's, layer
    norm's, attention's softmax, the embedding backward) and three with the array code
    (bench's array_code(), the "before" row of make bench), from the same weights: every
    parameter equal to the last bit, and so are the greedy tokens it samples afterwards with
    the KV cache."""
    from tinysparse.bench.common import array_code
    from tinysparse.engine import row_kernels, scatter_kernels
    calls = [count_calls(monkeypatch, gelu_kernels, ("gelu_output",)),
             count_calls(monkeypatch, row_kernels, ("layer_norm_forward", "softmax_shift")),
             count_calls(monkeypatch, scatter_kernels, ("index_add_rows",))]
    finals, ran = [], []
    for compiled in (False, True):
        with array_code() if not compiled else contextlib.nullcontext():
            model, final = gpt_after_three_steps()
            final["sampled"] = model.generate(np.zeros((1, 1), np.int64), 12, top_k=1).tobytes()
        finals.append(final)
        ran.append(set(sum(calls, [])))
        for c in calls:
            c.clear()
    assert finals[0] == finals[1]
    assert ran == [set(), {"gelu_output", "layer_norm_forward", "softmax_shift", "index_add_rows"}]
