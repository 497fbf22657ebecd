"""What every benchmark suite shares: one training step, thread limits, a float32 matmul peak,
alternating timed steps, seeded models and batches, the optional torch import, and the engine
with its compiled loops off (the array code, timed beside them).

Fairness on a busy machine: the frameworks take turns, one step each, so a burst of someone
else's load hits both alike; the median is the headline and the min shows the quiet-machine speed.
Before each step a short untimed pause (--settle) lets the other framework's idle worker threads
go to sleep: OpenBLAS's spin for about 0.1 s after a call, and on 2 cores that alone made torch's
steps 2.4x slower when they followed a tinysparse step (measured; with the pause, each framework
runs as fast as it does alone).
"""
import contextlib
import functools
import gc
import math
import time

import numpy as np

from ..engine import random as ts_random
from ..engine import scatter
from ..engine.functional import GELU, Attention, LayerNorm
from ..gpt import GPT

LOSS_TOLERANCE = 1e-4               # first-step losses must agree this well: same model, same numbers


# ---- one training step: the same code for both frameworks (zero_grad sets grads to None) --------

def step(model, opt, idx, targets):
    opt.zero_grad()
    _, loss = model(idx, targets)
    loss.backward()
    opt.step()
    return loss


@contextlib.contextmanager
def array_code():
    """The engine's fused Functions run their NumPy array code inside (their @njit loops off:
    GELU, layer norm, attention's softmax, the embedding backward), the "before" of the loops,
    timed in the same run."""
    saved = GELU.compiled, LayerNorm.compiled, Attention.compiled, scatter.compiled
    GELU.compiled = LayerNorm.compiled = Attention.compiled = scatter.compiled = False
    try:
        yield
    finally:
        GELU.compiled, LayerNorm.compiled, Attention.compiled, scatter.compiled = saved


@contextlib.contextmanager
def threads(n, torch):
    """Both frameworks on n threads: torch's own setting, and NumPy's BLAS via threadpoolctl."""
    try:
        from threadpoolctl import threadpool_limits
        blas = threadpool_limits(n)
    except ImportError:
        print("note: threadpoolctl is not installed, so NumPy's BLAS threads are not limited "
              "(pip install threadpoolctl)")
        blas = contextlib.nullcontext()
    previous = torch.get_num_threads() if torch else None
    try:
        with blas:
            if torch:
                torch.set_num_threads(n)
            yield
    finally:
        if torch:
            torch.set_num_threads(previous)


def matmul_gflops(m, k, n, min_seconds=0.25):
    """Best-of float32 NumPy (m, k) @ (k, n) in GFLOP/s: the peak a step's GEMMs could reach."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((m, k), dtype=np.float32), rng.standard_normal((k, n), dtype=np.float32)
    out = np.empty((m, n), dtype=np.float32)
    np.matmul(a, b, out=out)                                   # warm up (threads, pages)
    best, reps, start = math.inf, 0, time.perf_counter()
    while reps < 3 or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        np.matmul(a, b, out=out)
        best, reps = min(best, time.perf_counter() - t0), reps + 1
    return 2.0 * m * k * n / best / 1e9


def time_alternating(steps, warmup, iters, settle, setting=None):
    """{name: step()} -> {name: (milliseconds, losses)}: the steps take turns, one each per round,
    so a burst of someone else's load hits them all alike; `settle` seconds (untimed) before each
    step let the previous one's idle BLAS threads stop spinning. The first `warmup` rounds are
    not timed (their losses are kept: the first loss checks that twins compute the same).
    `setting`, {name: a function returning a context manager} (say threads(1, torch)), puts a
    step's own setting in place around its pause and its timed call, outside the timer."""
    runs = {name: ([], []) for name in steps}
    gc.collect()
    for i in range(warmup + iters):
        for name, step in steps.items():
            with (setting[name]() if setting else contextlib.nullcontext()):
                if len(steps) > 1:
                    time.sleep(settle)
                t0 = time.perf_counter()
                loss = float(step().item())    # inside the timing: on a GPU the read waits for it
                elapsed = (time.perf_counter() - t0) * 1e3
            runs[name][1].append(loss)
            if i >= warmup:
                runs[name][0].append(elapsed)
    return runs


def paired_ratio(numerator, denominator):
    """(median, 25th, 75th percentile) of the per-round ratios numerator[i] / denominator[i] of
    two timings that took turns (time_alternating, time_calls). A round's two runs meet the
    machine in the same state, so their ratio drifts far less than either time: on this
    repository's shared 2-core machine the same step's median moved from 75 to 105 ms between
    runs minutes apart, while its per-round ratio to the PyTorch twin stayed within 1.02-1.04x.
    The quartiles say how far the rounds spread. ValueError when the two are not of one length
    or are empty."""
    if len(numerator) != len(denominator) or not len(numerator):
        raise ValueError(f"paired_ratio needs two timings of one round each, as many of both; "
                         f"got {len(numerator)} and {len(denominator)}")
    ratios = np.asarray(numerator, dtype=float) / np.asarray(denominator, dtype=float)
    q25, median, q75 = np.percentile(ratios, [25, 50, 75])
    return float(median), float(q25), float(q75)


def time_calls(calls, warmup, iters):
    """{name: call()} -> {name: milliseconds of each timed call}: the calls take turns, one each
    per round (no pause: for kernels, whose BLAS threads are the same library's)."""
    times = {name: [] for name in calls}
    gc.collect()
    for i in range(warmup + iters):
        for name, call in calls.items():
            t0 = time.perf_counter()
            call()
            if i >= warmup:
                times[name].append((time.perf_counter() - t0) * 1e3)
    return times


def seconds_per_call(run, calls, settle, warmup=3):
    """Mean seconds of one run() over `calls` calls in a row: after an untimed pause of `settle`
    seconds (the idle BLAS workers of whatever ran before keep spinning for about 0.1 s and would
    slow these calls) and `warmup` untimed calls (caches, pages). One block of a comparison whose
    sides take turns block by block (window.py, window_ops.py)."""
    time.sleep(settle)
    for _ in range(warmup):
        run()
    t0 = time.perf_counter()
    for _ in range(calls):
        run()
    return (time.perf_counter() - t0) / calls


def build_model(config):
    """A tinysparse GPT with seed-0 weights, built without disturbing the caller's generator."""
    saved = ts_random.get_state()
    ts_random.manual_seed(0)
    try:
        return GPT(config).to("cpu")
    finally:
        ts_random.set_state(saved)


def fixed_batch(config, batch_size):
    """(idx, targets), each (B, T): the same random tokens for every model and framework."""
    T = config.block_size
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, size=(batch_size, T + 1))
    return np.ascontiguousarray(tokens[:, :-1]), np.ascontiguousarray(tokens[:, 1:])


def twin_step(model, idx, targets, device="cpu"):
    """A timeable training step of `model`'s PyTorch twin (torch_twins.build_torch_twin: call it
    before any step of model, so both start from the same weights), moved to `device`, with torch's
    AdamW set up as tinysparse's, on the batch idx, targets ((B, T) NumPy integer arrays)."""
    import torch

    from . import torch_twins
    twin = torch_twins.build_torch_twin(model).to(device)
    return functools.partial(step, twin, torch_twins.torch_adamw(twin),
                             torch.from_numpy(idx).to(device), torch.from_numpy(targets).to(device))


def import_torch(args):
    """The torch module, or None (with a printed reason) under --no-torch or when not installed."""
    if args.no_torch:
        print("PyTorch comparison skipped (--no-torch)")
        return None
    try:
        import torch
    except ImportError:
        print("torch is not installed, so the PyTorch comparison is skipped (pip install torch==2.13.0)")
        return None
    return torch
