"""bench --profile's clock: every second of a step is in exactly one row, and nothing stays wrapped."""
import time

import numpy as np
import pytest

from tinysparse import optim
from tinysparse.bench.common import build_model, fixed_batch, step
from tinysparse.bench.profile import clocked, engine_own, function_rows, profile_steps
from tinysparse.engine.function import Function
from tinysparse.engine.tensor import Tensor
from tinysparse.gpt import GPTConfig

CONFIG = GPTConfig(vocab_size=32, n_layer=1, n_head=2, n_embd=16, block_size=8)


class _Inner(Function):
    @staticmethod
    def forward(ctx, x):
        time.sleep(0.02)
        return x * 2

    @staticmethod
    def backward(ctx, grad):
        return grad * 2


class _Outer(Function):
    # calls _Inner's forward directly, as PackedCausalAttention calls Attention's
    @staticmethod
    def forward(ctx, x):
        time.sleep(0.01)
        return _Inner.forward(ctx, x) + 1

    @staticmethod
    def backward(ctx, grad):
        time.sleep(0.03)
        return _Inner.backward(ctx, grad)


def test_a_nested_phase_counts_once_in_the_outermost_function():
    x = Tensor(np.ones(3), requires_grad=True)
    total, seconds = clocked(lambda: _Outer.apply(x).sum().backward(), steps=1)
    rows = function_rows(seconds)
    assert "_Inner.forward" not in rows and "_Inner.backward" not in rows
    assert rows["_Outer.forward"] >= 0.03 and rows["_Outer.backward"] >= 0.03   # inner's time in it
    assert sum(rows.values()) + engine_own(seconds) <= total + 1e-3


def test_the_timers_are_taken_out_afterwards():
    before = (vars(_Outer)["forward"], vars(Function)["apply"], vars(Tensor)["backward"])
    model = build_model(CONFIG)
    opt = optim.AdamW(model.parameters(), lr=1e-3)
    opt_step = type(opt).step
    idx, targets = fixed_batch(CONFIG, 2)
    clocked(lambda: step(model, opt, idx, targets), steps=1, optimizer=opt)
    assert (vars(_Outer)["forward"], vars(Function)["apply"], vars(Tensor)["backward"]) == before
    assert type(opt).step is opt_step


def test_a_profiled_step_adds_up_to_its_time(capsys):
    model = build_model(CONFIG)
    opt = optim.AdamW(model.parameters(), lr=1e-3)
    idx, targets = fixed_batch(CONFIG, 2)
    step(model, opt, idx, targets)
    profile_steps(model, opt, idx, targets, steps=3, top=100)
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("profile:"))
    per_step = float(header.rsplit(",", 1)[1].split()[0])               # "..., 12.3 ms/step"
    rows = {line[:40].strip(): float(line[40:].split()[0]) for line in out.splitlines()
            if line.startswith("  ") and line.rstrip().endswith("%") and "share" not in line}
    assert "MatMul.forward" in rows and "AdamW" in " ".join(rows)
    assert rows["model code (nn/gpt Python, the rest)"] > 0            # no second counted twice
    # the header's ms/step is printed to 0.1 ms and each row to 0.01 ms: rounding, nothing more
    assert sum(rows.values()) == pytest.approx(per_step, abs=0.05 + 0.005 * len(rows))


def test_on_a_gpu_every_timed_call_waits_for_the_device_before_and_after(capsys):
    """sync= (backend.synchronize on a GPU) brackets each outermost timed call and the whole
    run, so a row holds its kernels' time; the header says the profile was synchronised."""
    calls = []
    x = Tensor(np.ones(3), requires_grad=True)
    clocked(lambda: _Outer.apply(x).sum().backward(), steps=1, sync=lambda: calls.append(1))
    # apply and forward of _Outer and of sum (4), Tensor.backward and two backward phases (3):
    # each outermost of its kind, each bracketed; and the run itself (2)
    assert len(calls) == 2 * 7 + 2
    model = build_model(CONFIG)
    opt = optim.AdamW(model.parameters(), lr=1e-3)
    idx, targets = fixed_batch(CONFIG, 2)
    profile_steps(model, opt, idx, targets, steps=1, sync=lambda: None)
    assert "the device synchronised around each" in capsys.readouterr().out
