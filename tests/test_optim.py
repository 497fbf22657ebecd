"""Optimizers, schedules and clipping (tinysparse/optim.py).

Optimizer steps are compared with updates written out by hand in NumPy, in float64, so that any
difference in the formula (bias correction, where weight decay applies, momentum) shows up.
"""
import math
import re

import numpy as np
import pytest

import tinysparse as ts
from tinysparse import Tensor, nn, optim
from tinysparse import functional as F
from tinysparse.nn import Parameter


# ---- SGD -----------------------------------------------------------------------------------------

def _quadratic_grads(params):
    """loss = sum(p^2) for every p: grad = 2p, easy to do by hand."""
    loss = sum(((p * p).sum() for p in params), Tensor(np.zeros(())))
    loss.backward()


def test_sgd_without_momentum():
    p = Parameter(np.array([1.0, -2.0]))
    opt = optim.SGD([p], lr=0.1)
    _quadratic_grads([p])
    opt.step()
    np.testing.assert_allclose(p.data, [1.0 - 0.1 * 2.0, -2.0 + 0.1 * 4.0], rtol=1e-15)


def test_sgd_with_momentum_and_weight_decay_by_hand():
    p0 = np.array([1.0, -2.0, 0.5])
    p = Parameter(p0.copy())
    opt = optim.SGD([p], lr=0.1, momentum=0.9, weight_decay=0.01)
    expected, v = p0.copy(), np.zeros(3)
    for _ in range(3):
        opt.zero_grad()
        _quadratic_grads([p])
        opt.step()
        g = 2 * expected + 0.01 * expected
        v = 0.9 * v + g
        expected = expected - 0.1 * v
        np.testing.assert_allclose(p.data, expected, rtol=1e-14)


def test_sgd_skips_parameters_without_gradients():
    a, b = Parameter(np.ones(2)), Parameter(np.ones(2))
    opt = optim.SGD([a, b], lr=0.5)
    _quadratic_grads([a])
    opt.step()
    np.testing.assert_array_equal(a.data, [0.0, 0.0])
    np.testing.assert_array_equal(b.data, [1.0, 1.0])


def test_optimizer_argument_checks():
    with pytest.raises(ValueError, match="empty"):
        optim.SGD([], lr=0.1)
    with pytest.raises(ValueError, match="positive"):
        optim.AdamW([Parameter(np.ones(2))], lr=0.0)


# ---- AdamW ---------------------------------------------------------------------------------------

def numpy_adamw(params, grads_per_step, lr, betas, eps, wd, decayed):
    """AdamW (Loshchilov & Hutter, Algorithm 2) written out plainly; returns the params per step."""
    b1, b2 = betas
    params = [p.copy() for p in params]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    history = []
    for t, grads in enumerate(grads_per_step, start=1):
        for i, (p, g) in enumerate(zip(params, grads)):
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            m_hat = m[i] / (1 - b1 ** t)
            v_hat = v[i] / (1 - b2 ** t)
            decay = lr * wd * p if decayed[i] else 0.0
            params[i] = p - decay - lr * m_hat / (np.sqrt(v_hat) + eps)
        history.append([p.copy() for p in params])
    return history


@pytest.mark.parametrize("decay_1d", [False, True])
def test_adamw_matches_numpy_for_three_steps(decay_1d):
    rng = np.random.default_rng(0)
    initial = [rng.standard_normal((3, 2)), rng.standard_normal(2), rng.standard_normal((1, 4))]
    grads = [[rng.standard_normal(p.shape) for p in initial] for _ in range(3)]
    lr, betas, eps, wd = 0.1, (0.8, 0.95), 1e-8, 0.5  # large lr and decay: differences show
    params = [Parameter(p.copy()) for p in initial]
    opt = optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=wd, decay_1d=decay_1d)
    decayed = [True, decay_1d, True]
    expected = numpy_adamw(initial, grads, lr, betas, eps, wd, decayed)
    for step in range(3):
        for p, g in zip(params, grads[step]):
            p.grad = g.copy()
        opt.step()
        for i, p in enumerate(params):
            np.testing.assert_allclose(p.data, expected[step][i], rtol=1e-12, atol=1e-14,
                                       err_msg=f"step {step + 1}, param {i}")
    # the 1-D parameter's decay really made a difference (the test can tell the two apart)
    undecayed = numpy_adamw(initial, grads, lr, betas, eps, wd, [True, not decay_1d, True])
    assert not np.allclose(undecayed[-1][1], params[1].data)


def test_adamw_state_dict_round_trip_gives_identical_steps():
    rng = np.random.default_rng(1)
    initial = [rng.standard_normal((2, 3)), rng.standard_normal(3)]
    grads = [[rng.standard_normal(p.shape) for p in initial] for _ in range(4)]

    def run(params, opt, steps):
        for g in steps:
            for p, gi in zip(params, g):
                p.grad = gi.copy()
            opt.step()

    a = [Parameter(p.copy()) for p in initial]
    opt_a = optim.AdamW(a, lr=0.05, weight_decay=0.1)
    run(a, opt_a, grads[:2])
    saved = opt_a.state_dict()
    assert saved["step_count"] == 2 and len(saved["m"]) == 2
    b = [Parameter(p.data.copy()) for p in a]
    opt_b = optim.AdamW(b, lr=0.9, weight_decay=0.1)  # lr comes from the state
    opt_b.load_state_dict(saved)
    saved["m"][0][:] = 0.0  # the loaded state is a copy
    run(a, opt_a, grads[2:])
    run(b, opt_b, grads[2:])
    for pa, pb in zip(a, b):
        np.testing.assert_array_equal(pa.data, pb.data)
    with pytest.raises(ValueError, match="does not match"):
        optim.AdamW([Parameter(np.ones(5))]).load_state_dict(opt_a.state_dict())


def test_sgd_state_dict_round_trip():
    a = Parameter(np.array([1.0, 2.0]))
    opt = optim.SGD([a], lr=0.1, momentum=0.9)
    _quadratic_grads([a])
    opt.step()
    b = Parameter(a.data.copy())
    opt_b = optim.SGD([b], lr=0.1, momentum=0.9)
    opt_b.load_state_dict(opt.state_dict())
    for p, o in ((a, opt), (b, opt_b)):
        o.zero_grad()
        _quadratic_grads([p])
        o.step()
    np.testing.assert_array_equal(a.data, b.data)


# ---- schedules and clipping ----------------------------------------------------------------------

def test_cosine_lr_warmup_peak_decay_and_floor():
    lr = lambda s: optim.cosine_lr(s, max_lr=1.0, warmup_steps=10, max_steps=110, min_lr=0.1)  # noqa: E731
    assert lr(0) == pytest.approx(0.1)
    assert lr(4) == pytest.approx(0.5)
    assert lr(9) == pytest.approx(1.0)
    assert lr(10) == pytest.approx(1.0)
    assert lr(60) == pytest.approx(0.55)         # halfway through the decay: the mean
    assert lr(35) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi / 4)))
    assert lr(110) == pytest.approx(0.1) and lr(1000) == pytest.approx(0.1)
    values = [lr(s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    warm = [lr(s) for s in range(10)]
    assert all(a < b for a, b in zip(warm, warm[1:]))


def test_cosine_schedule_drives_the_optimizer():
    opt = optim.SGD([Parameter(np.ones(1))], lr=1.0)
    sched = optim.CosineSchedule(opt, max_lr=2.0, warmup_steps=2, max_steps=6)
    seen = [sched.step() for _ in range(3)]
    assert seen == pytest.approx([1.0, 2.0, 2.0]) and opt.lr == pytest.approx(2.0)
    other = optim.CosineSchedule(opt, max_lr=2.0, warmup_steps=2, max_steps=6)
    other.load_state_dict(sched.state_dict())
    assert other.step() == sched.step()


def test_clip_grad_norm_scales_to_max_norm_and_returns_the_old_norm():
    a, b, c = Parameter(np.zeros(2)), Parameter(np.zeros((2, 2))), Parameter(np.zeros(3))
    a.grad, b.grad = np.array([3.0, 0.0]), np.array([[0.0, 4.0], [0.0, 12.0]])
    held = b.grad
    norm = optim.clip_grad_norm([a, b, c], max_norm=1.3)
    assert norm == pytest.approx(13.0, rel=1e-12)
    new_norm = math.sqrt((a.grad ** 2).sum() + (b.grad ** 2).sum())
    assert new_norm == pytest.approx(1.3, rel=1e-5)
    np.testing.assert_allclose(a.grad, [0.3, 0.0], rtol=1e-5)       # the direction is kept
    np.testing.assert_allclose(b.grad, [[0, 0.4], [0, 1.2]], rtol=1e-5)
    np.testing.assert_array_equal(held, [[0.0, 4.0], [0.0, 12.0]])  # replaced, not modified
    assert c.grad is None


def test_clip_grad_norm_leaves_small_gradients_alone():
    a = Parameter(np.zeros(2, np.float32))
    a.grad = np.array([0.3, 0.4], np.float32)
    held = a.grad
    assert optim.clip_grad_norm([a], max_norm=1.0) == pytest.approx(0.5)
    assert a.grad is held
    assert optim.clip_grad_norm([Parameter(np.zeros(2))], 1.0) == 0.0
    b = Parameter(np.zeros(2, np.float32))
    b.grad = np.array([30.0, 40.0], np.float32)
    optim.clip_grad_norm([b], max_norm=1.0)
    assert b.grad.dtype == np.float32


# ---- learning --------------------------------------------------------------------------------

def test_mlp_learns_xor_with_adamw():
    ts.manual_seed(0)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(256, 2)).astype(np.float32)
    y = ((x[:, 0] > 0) != (x[:, 1] > 0)).astype(np.int64)  # XOR of the signs: not linear
    model = nn.Sequential([nn.Linear(2, 32), nn.Tanh(), nn.Linear(32, 32), nn.GELU(),
                           nn.Linear(32, 2)])
    opt = optim.AdamW(model.parameters(), lr=0.02, weight_decay=0.01)
    inputs = Tensor(x)
    for _ in range(300):
        loss = F.cross_entropy(model(inputs), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with ts.no_grad():
        accuracy = (model(inputs).numpy().argmax(axis=1) == y).mean()
    assert accuracy > 0.9, f"accuracy {accuracy:.2f} after 300 AdamW steps, loss {loss.item():.3f}"
    assert loss.dtype == np.float32

# ---- refusals (issue 11, kinds 2 and 6) ----------------------------------------------------------

def test_an_optimizer_given_a_module_names_the_fix():
    model = nn.Linear(2, 3)
    with pytest.raises(TypeError, match=re.escape("AdamW takes an iterable of parameters, got a "
                                                  "Linear module; pass model.parameters()")):
        optim.AdamW(model)
    with pytest.raises(TypeError, match=re.escape("SGD takes an iterable of parameters, got a "
                                                  "single Tensor; pass [tensor]")):
        optim.SGD(model.weight)
    with pytest.raises(TypeError, match="parameter groups"):
        optim.AdamW([{"params": model.parameters(), "lr": 1e-3}])
    with pytest.raises(TypeError, match="item 0 of the parameters is a ndarray"):
        optim.AdamW([np.ones(3)])
    with pytest.raises(ValueError, match="listed more than once"):   # it would step twice
        optim.AdamW(model.parameters() + [model.weight])

@pytest.mark.parametrize("make, match", [
    (lambda p: optim.AdamW(p, lr=math.nan), r"AdamW lr must be a positive finite number, got nan"),
    (lambda p: optim.AdamW(p, lr=math.inf), r"AdamW lr must be a positive finite number, got inf"),
    (lambda p: optim.SGD(p, lr=-0.1), r"SGD lr must be a positive finite number, got -0.1"),
    (lambda p: optim.AdamW(p, betas=(1.0, 0.999)), r"AdamW betas\[0\] must be a finite number in \[0, 1\)"),
    (lambda p: optim.AdamW(p, betas=(0.9, math.nan)), r"AdamW betas\[1\] must be a finite number in \[0, 1\)"),
    (lambda p: optim.AdamW(p, eps=0.0), r"AdamW eps must be a positive finite number, got 0.0"),
    (lambda p: optim.AdamW(p, weight_decay=math.nan), r"AdamW weight_decay must be a finite number >= 0, got nan"),
    (lambda p: optim.AdamW(p, weight_decay=-0.1), r"AdamW weight_decay must be a finite number >= 0"),
    (lambda p: optim.AdamW(p, lr=0.5, weight_decay=2.0), r"AdamW lr \* weight_decay = 1 must be below 1"),
    (lambda p: optim.SGD(p, momentum=math.nan), r"SGD momentum must be a finite number in \[0, 1\)"),
    (lambda p: optim.SGD(p, momentum=1.0), r"SGD momentum must be a finite number in \[0, 1\)"),
    (lambda p: optim.SGD(p, weight_decay=math.inf), r"SGD weight_decay must be a finite number >= 0"),
    (lambda p: optim.CosineSchedule(optim.SGD(p), max_lr=1e-3, warmup_steps=10, max_steps=100,
                                    min_lr=1e-2), r"CosineSchedule min_lr must be a finite number in \[0, 0.001\]"),
])
def test_optimizers_refuse_rates_outside_their_domain(make, match):
    with pytest.raises(ValueError, match=match):
        make([Parameter(np.ones(2))])


@pytest.mark.parametrize("max_norm", [math.nan, -1.0, 0.0])
def test_clip_grad_norm_refuses_a_max_norm_without_meaning(max_norm):
    p = Parameter(np.ones(2))
    p.grad = np.array([3.0, 4.0], dtype=np.float32)
    with pytest.raises(ValueError, match=r"clip_grad_norm max_norm must be a positive number "
                                         r"\(math.inf: no clipping\), got"):
        optim.clip_grad_norm([p], max_norm)      # nan used to turn clipping off silently
    assert optim.clip_grad_norm([p], math.inf) == 5.0
    np.testing.assert_array_equal(p.grad, [3.0, 4.0])
