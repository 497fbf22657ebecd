"""Attention's softmax through the compiled row loops (engine/row_kernels.py) against its array
code: the same bits for the output, the saved probabilities and dq, dk, dv, in float32 and
float64, causal and not (Tq != Tk), on row lengths on both sides of NumPy's summation blocks
(1, 7, 9, 64, 130), on scores spanning 10 orders of magnitude, and with a NaN row."""
import numpy as np
import pytest

from tinysparse.engine import row_kernels
from tinysparse.engine.attention import Attention
from tinysparse.engine.function import Context

from kernel_helpers import assert_same_bits, count_calls


def _case(lead, Tq, Tk, hd, dtype, seed):
    rng = np.random.default_rng(seed)
    scale = 10.0 ** rng.integers(-3, 2, lead + (Tq, 1))           # some rows peaked, some flat
    q = rng.standard_normal(lead + (Tq, hd)) * scale
    k = rng.standard_normal(lead + (Tk, hd))
    v = rng.standard_normal(lead + (Tk, hd))
    g = rng.standard_normal(lead + (Tq, hd))
    return [a.astype(dtype) for a in (q, k, v, g)]


def _run(q, k, v, g, causal, compiled, monkeypatch):
    monkeypatch.setattr(Attention, "compiled", compiled)
    ctx = Context((True, True, True))
    with np.errstate(all="ignore"):
        y = Attention.forward(ctx, q, k, v, causal=causal)
        p = ctx.saved[3].copy()
        grads = Attention.backward(ctx, g)
    return [y, p, *grads]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("lead,Tq,Tk,causal", [((2, 3), 7, 7, True), ((1,), 1, 1, True),
                                               ((2, 2), 9, 9, True), ((3,), 64, 64, True),
                                               ((1, 2), 130, 130, True), ((2,), 5, 130, False),
                                               ((2, 3), 9, 1, False)])
def test_the_compiled_softmax_is_bitwise_the_array_code(dtype, lead, Tq, Tk, causal, monkeypatch):
    q, k, v, g = _case(lead, Tq, Tk, 5, dtype, seed=Tq * 7 + Tk)
    expected = _run(q, k, v, g, causal, False, monkeypatch)
    got = _run(q, k, v, g, causal, True, monkeypatch)
    for a, b in zip(expected, got):
        assert_same_bits(a, b)


def test_a_nan_score_makes_its_row_nan_either_way_and_the_loops_run(monkeypatch):
    calls = count_calls(monkeypatch, row_kernels,
                        ("softmax_shift", "softmax_normalize", "softmax_backward"))
    q, k, v, g = _case((2,), 6, 6, 4, np.float32, seed=1)
    q[1, 3, 0] = np.nan                                  # one query: its row of scores is NaN
    got = _run(q, k, v, g, True, True, monkeypatch)
    assert calls == ["softmax_shift", "softmax_normalize", "softmax_backward"]
    assert np.isnan(got[1][1, 3]).all() and not np.isnan(got[1][1, 2]).any()
    for a, b in zip(_run(q, k, v, g, True, False, monkeypatch), got):
        assert_same_bits(a, b)


def test_causal_attention_with_unequal_lengths_is_the_array_codes_answer(monkeypatch):
    """A direct Attention call with causal=True and Tq != Tk (attention() refuses it): the loops
    would read the (1, 1) ceiling out of bounds, so they step aside and the array code answers
    (one query broadcasts its one-element mask; three queries against 40 keys is its error)."""
    q, k, v, g = _case((1,), 1, 40, 16, np.float32, seed=3)
    expected = _run(q, k, v, g, True, False, monkeypatch)
    for a, b in zip(expected, _run(q, k, v, g, True, True, monkeypatch)):
        assert_same_bits(a, b)
    q3 = np.concatenate([q, q, q], axis=1)
    for compiled in (False, True):
        monkeypatch.setattr(Attention, "compiled", compiled)
        with pytest.raises(ValueError):
            Attention.forward(Context((True, True, True)), q3, k, v, causal=True)
