"""Why the dense step's ratio to PyTorch depends on the thread count: the same training step on
one thread and on --threads, both frameworks taking turns in one run (the step suite prints it
after its table; --profile adds the same split per Function).

NumPy runs only its matmuls (OpenBLAS) on more than one thread: its ufuncs, and tinysparse's @njit
loops (GELU, layer norm, attention's softmax, AdamW), run on one. PyTorch runs those elementwise
kernels on its OpenMP threads too. So from one thread to two, PyTorch's whole step speeds up and
tinysparse's matmuls alone do: on a machine where the two are level on one thread, tinysparse
falls behind on two. Running our loops on Numba's threads as well is no cure on 2 cores: those
workers and OpenBLAS's, which keep spinning after each matmul, then fight over the cores
(lessons/06_cpu_dispatch/README.md, "Two thread pools, two cores", measured it for the MoE
kernels; numba_dispatch.parallel_pays is the rule that came of it).
"""
import numpy as np

from .common import paired_ratio, step, threads, time_alternating
from .profile import _clocked, _function_rows


def _on_threads(run, n, torch):
    """run() with both frameworks held to n threads for the call."""
    def call():
        with threads(n, torch):
            return run()
    return call


def time_thread_scaling(runs, n, warmup, iters, settle, torch):
    """{name: step()} (say tinysparse's and PyTorch's) -> {(name, k): (milliseconds, losses)} for
    k = 1 and k = n threads: every step on every thread count takes turns, one each per round
    (time_alternating), so the machine's drift hits all four alike."""
    steps = {(name, k): _on_threads(run, k, torch) for k in (1, n) for name, run in runs.items()}
    return time_alternating(steps, warmup, iters, settle)


def scaling_rows(timed, names, n):
    """The table of time_thread_scaling's result: one row per thread count (1, n) with each
    name's median milliseconds and, for two names, the median of the first's per-round ratios
    to the second's; then the speedup of each name from 1 to n threads (median at 1 / median at
    n). Returns (rows, speedups): rows [(k, [ms per name], ratio or None)], speedups [x per name]."""
    rows = []
    for k in (1, n):
        ms = [float(np.median(timed[(name, k)][0])) for name in names]
        ratio = (paired_ratio(timed[(names[0], k)][0], timed[(names[1], k)][0])[0]
                 if len(names) == 2 else None)
        rows.append((k, ms, ratio))
    speedups = [one / many for one, many in zip(rows[0][1], rows[1][1])]
    return rows, speedups


def print_thread_scaling(timed, names, n):
    """Print scaling_rows: the step on 1 and n threads per framework, their ratio, the speedups."""
    rows, speedups = scaling_rows(timed, names, n)
    iters = len(timed[(names[0], 1)][0])
    print(f"\nthread scaling: the step on 1 thread and on {n}, {iters} timed steps each, all "
          f"taking turns (NumPy threads only its matmuls; bench/scaling.py says why it matters)")
    ratio_head = f"{f'{names[0]}/{names[1]}':>22}" if len(names) == 2 else ""
    print(f"{'threads':<14}" + "".join(f"{name + ' ms':>16}" for name in names) + ratio_head)
    for k, ms, ratio in rows:
        print(f"{k:<14}" + "".join(f"{m:16.2f}" for m in ms)
              + (f"{ratio:21.2f}x" if ratio is not None else ""))
    print(f"{f'speedup 1->{n}':<14}" + "".join(f"{s:15.2f}x" for s in speedups))


def function_scaling(one, many, top):
    """Per Function phase, from two profiles ({'Class.phase': seconds} for the same number of
    steps on 1 thread and on n): [(name, seconds on 1, seconds on n, speedup)], the `top` phases
    that take longest on n threads first (ties by name). A phase missing from one profile counts 0 there."""
    names = sorted(set(one) | set(many), key=lambda name: (-many.get(name, 0.0), name))[:top]
    return [(name, one.get(name, 0.0), many.get(name, 0.0),
             one.get(name, 0.0) / many[name] if many.get(name) else float("nan")) for name in names]


def print_function_scaling(one, many, steps, n, top):
    """Print function_scaling as milliseconds per step."""
    print(f"\nprofile per thread count: ms/step of each Function on 1 thread and on {n} "
          f"(the same timers as above, {steps} steps each)")
    print(f"  {'Function':<38}{'1 thread':>10}{f'{n} threads':>11}{'speedup':>9}")
    for name, t1, tn, speedup in function_scaling(one, many, top):
        print(f"  {name:<38}{t1 / steps * 1e3:10.2f}{tn / steps * 1e3:11.2f}{speedup:8.2f}x")


def profile_thread_scaling(model, opt, idx, targets, steps, n, top=8):
    """profile.py's per-Function timers around `steps` training steps on 1 thread, then on n;
    print_function_scaling of the two (which Functions gain from the threads, which do not)."""
    def profile(k):
        with threads(k, None):
            return _function_rows(_clocked(lambda: step(model, opt, idx, targets), steps)[1])
    print_function_scaling(profile(1), profile(n), steps, n, top)
