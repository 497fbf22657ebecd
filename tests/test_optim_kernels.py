"""AdamW's compiled update (optim_kernels.py) against its array code: bitwise the same numbers,
step after step, in float32 and float64, with and without weight decay, on gradients that span
many orders of magnitude (where a different rounding or a fused multiply-add would show)."""
import numpy as np
import pytest

import tinysparse as ts
from tinysparse import optim

from kernel_helpers import gpt_after_three_steps


def _pair(dtype, shapes, fused_flags=(False, None), **kw):
    """Two AdamW optimizers over equal parameters, one per `fused` setting."""
    rng = np.random.default_rng(0)
    datas = [rng.standard_normal(s).astype(dtype) for s in shapes]
    runs = []
    for fused in fused_flags:
        params = [ts.Tensor(d.copy(), requires_grad=True) for d in datas]
        runs.append((params, optim.AdamW(params, fused=fused, **kw)))
    return runs


def _step_both(runs, rng, dtype):
    grads = [(rng.standard_normal(p.shape) * 10.0 ** rng.integers(-12, 6, p.shape)).astype(dtype)
             for p in runs[0][0]]
    for params, opt in runs:
        for p, g in zip(params, grads):
            p.grad = g.copy()
        opt.step()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kw", [dict(lr=3e-3, weight_decay=0.1),
                                dict(lr=1e-2, weight_decay=0.0, betas=(0.8, 0.95)),
                                dict(lr=1e-3, weight_decay=0.5, decay_1d=True, eps=1e-6)])
def test_the_compiled_update_is_bitwise_the_array_code(dtype, kw):
    runs = _pair(dtype, [(7, 13), (13,), (3, 5, 2), ()], **kw)   # matrices, biases, a scalar
    rng = np.random.default_rng(1)
    for _ in range(5):
        _step_both(runs, rng, dtype)
    (ref, ref_opt), (new, new_opt) = runs
    for a, b in zip(ref, new):
        assert a.data.tobytes() == b.data.tobytes()
    for slot in ("m", "v"):
        for a, b in zip(getattr(ref_opt, slot), getattr(new_opt, slot)):
            assert a.tobytes() == b.tobytes()
    assert not np.array_equal(ref[0].data, _pair(dtype, [(7, 13)])[0][0][0].data)  # it moved


def test_the_compiled_update_runs_and_non_contiguous_parameters_fall_back(monkeypatch):
    """Where the loop applies it runs (a poisoned array path would fail); a Fortran-ordered
    parameter takes the array code and still gets the same numbers."""
    rng = np.random.default_rng(2)
    data = np.asfortranarray(rng.standard_normal((6, 4)).astype(np.float32))
    p_f, p_c = ts.Tensor(data.copy(order="F"), requires_grad=True), ts.Tensor(data.copy(), requires_grad=True)
    opt_f, opt_c = optim.AdamW([p_f], lr=1e-2), optim.AdamW([p_c], lr=1e-2)
    g = rng.standard_normal((6, 4)).astype(np.float32)
    p_f.grad, p_c.grad = np.asfortranarray(g), g.copy()
    opt_f.step()
    calls = []
    real = optim._compiled_adamw()
    from tinysparse import optim_kernels
    monkeypatch.setattr(optim_kernels, "adamw_kernel", lambda *a: calls.append(1) or real(*a))
    opt_c.step()
    assert calls == [1]
    assert not p_f.data.flags.c_contiguous
    p_c2 = ts.Tensor(data.copy(), requires_grad=True)
    opt_c2 = optim.AdamW([p_c2], lr=1e-2, fused=False)
    p_c2.grad = g.copy()
    opt_c2.step()
    assert p_f.data.tobytes() != data.tobytes()
    np.testing.assert_array_equal(p_f.data, p_c2.data)


def test_fused_must_be_none_true_or_false():
    p = ts.Tensor(np.zeros(3, np.float32), requires_grad=True)
    with pytest.raises(ValueError, match="fused='yes' must be None"):
        optim.AdamW([p], fused="yes")


@pytest.mark.parametrize("extra", [dict(), dict(n_expert=4, top_k=2)])
def test_training_steps_of_a_gpt_are_bitwise_the_same_either_way(extra):
    """End to end: a dense and a MoE GPT, three AdamW steps with the compiled update and three
    with the array code, from the same weights: every parameter equal to the last bit."""
    finals = [gpt_after_three_steps(fused, **extra)[1] for fused in (False, None)]
    assert finals[0] == finals[1]


def test_a_division_by_zero_gives_what_the_array_code_gives_not_an_exception():
    """eps = 1e-50 passes AdamW's check (> 0) but rounds to 0 in float32: with a zero gradient
    the step divides 0 by 0. The array code makes nan; so must the loop (IEEE division,
    error_model='numpy'), where Numba's default raised ZeroDivisionError."""
    runs = _pair(np.float32, [(5,)], lr=1e-2, eps=1e-50)
    for params, opt in runs:
        params[0].grad = np.zeros(5, np.float32)
        with np.errstate(invalid="ignore"):
            opt.step()
    (ref, _), (new, _) = runs
    assert np.isnan(ref[0].data).all()
    np.testing.assert_array_equal(ref[0].data, new[0].data)
