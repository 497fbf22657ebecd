"""Why the dense step's ratio to PyTorch can depend on the thread count: the same training step
on one thread and on --threads, both frameworks taking turns in one run (the step suite prints
it after its table; --profile adds the same split per Function).

NumPy runs only its matmuls (OpenBLAS) on more than one thread: its ufuncs, and tinysparse's @njit
loops (GELU, layer norm, attention's softmax, AdamW), run on one. PyTorch runs those elementwise
kernels on its OpenMP threads too. So from one thread to two, PyTorch's whole step can speed up
where tinysparse's matmuls alone do: on a machine where the two are level on one thread,
tinysparse then falls behind on two. Running our loops on Numba's threads as well is no cure on
2 cores: those workers and OpenBLAS's, which keep spinning after each matmul, then fight over
the cores (lessons/06_sparse_dispatch/README.md, "Two thread pools, two cores", measured it for
the MoE kernels; numba_dispatch.parallel_pays is the rule that came of it).
"""
import functools
import math
from collections import defaultdict

import numpy as np

from .common import paired_ratio, step, threads, time_alternating
from .profile import clocked, step_rows


def _check_threads(n):
    if n < 2:
        raise ValueError(f"thread scaling compares 1 thread with n > 1, got n={n}")


def time_thread_scaling(runs, n, warmup, iters, settle, torch):
    """{name: step()} (say tinysparse's and PyTorch's) -> {(name, k): (milliseconds, losses)} for
    k = 1 and k = n threads: every step on every thread count takes turns, one each per round
    (time_alternating), so the machine's drift hits all alike; each step's thread count is set
    outside its timer. ValueError for n < 2."""
    _check_threads(n)
    keys = [(name, k) for k in (1, n) for name in runs]
    return time_alternating({key: runs[key[0]] for key in keys}, warmup, iters, settle,
                            setting={key: functools.partial(threads, key[1], torch) for key in keys})


def scaling_rows(timed, names, n):
    """The table of time_thread_scaling's result, each ratio the (median, 25th, 75th percentile)
    of the per-round ratios (common.paired_ratio), as the step suite's own ratio:
    rows [(k, [median ms per name], ratio of names[0] to names[1] or None)] for k = 1 and n, and
    speedups [per name: its time on 1 thread over its time on n, per round]."""
    rows = []
    for k in (1, n):
        ms = [float(np.median(timed[(name, k)][0])) for name in names]
        ratio = (paired_ratio(timed[(names[0], k)][0], timed[(names[1], k)][0])
                 if len(names) == 2 else None)
        rows.append((k, ms, ratio))
    speedups = [paired_ratio(timed[(name, 1)][0], timed[(name, n)][0]) for name in names]
    return rows, speedups


def _ratio(r):
    return f"{r[0]:.2f}x ({r[1]:.2f}-{r[2]:.2f})"


def print_thread_scaling(timed, names, n):
    """Print scaling_rows: the step on 1 and n threads per framework, their ratio, the speedups."""
    rows, speedups = scaling_rows(timed, names, n)
    iters = len(timed[(names[0], 1)][0])
    print(f"\nthread scaling: the step on 1 thread and on {n}, {iters} timed steps each, all "
          f"taking turns (NumPy threads only its matmuls; bench/scaling.py says why it matters)")
    print("ms: medians; ratios and speedups: the median of the per-round ratios (quartiles)")
    ratio_head = f"{f'{names[0]}/{names[1]}':>24}" if len(names) == 2 else ""
    print(f"{'threads':<14}" + "".join(f"{name + ' ms':>24}" for name in names) + ratio_head)
    for k, ms, ratio in rows:
        print(f"{k:<14}" + "".join(f"{m:24.2f}" for m in ms)
              + (f"{_ratio(ratio):>24}" if ratio is not None else ""))
    print(f"{f'speedup 1->{n}':<14}" + "".join(f"{_ratio(s):>24}" for s in speedups))


def function_scaling(one, many, top):
    """Per row of a step's profile, from two profiles of the same number of steps, on 1 thread
    and on n, each (total seconds, {'Class.phase': seconds}, [(bucket, seconds)]) as
    profile.step_rows gives them: [(name, seconds on 1, seconds on n, speedup)] for the `top`
    Functions slowest on n threads (ties by name), the other Functions in one row, each bucket
    (engine, optimizer, model code), and the whole step. A Function missing from one profile
    counts 0 there; a speedup with 0 seconds on n threads is NaN."""
    (total1, rows1, buckets1), (total_n, rows_n, buckets_n) = one, many
    names = sorted(set(rows1) | set(rows_n), key=lambda name: (-rows_n.get(name, 0.0), name))
    table = [(name, rows1.get(name, 0.0), rows_n.get(name, 0.0)) for name in names[:top]]
    if len(names) > top:
        table.append((f"({len(names) - top} more Functions)",
                      sum(rows1.get(name, 0.0) for name in names[top:]),
                      sum(rows_n.get(name, 0.0) for name in names[top:])))
    table += [(name, t1, tn) for (name, t1), (_, tn) in zip(buckets1, buckets_n)]
    table.append(("the whole step", total1, total_n))
    return [(name, t1, tn, t1 / tn if tn else math.nan) for name, t1, tn in table]


def print_function_scaling(one, many, steps, n, top):
    """Print function_scaling as milliseconds per step ('-' for a speedup with no time on n)."""
    print(f"\nprofile per thread count: ms/step on 1 thread and on {n}, {steps} steps each, the "
          f"two taking turns step by step (the same timers as the profile above)")
    print(f"  {'where the time goes':<38}{'1 thread':>10}{f'{n} threads':>11}{'speedup':>9}")
    for name, t1, tn, speedup in function_scaling(one, many, top):
        shown = "-" if math.isnan(speedup) else f"{speedup:.2f}x"
        print(f"  {name:<38}{t1 / steps * 1e3:10.2f}{tn / steps * 1e3:11.2f}{shown:>9}")


def profile_thread_scaling(model, opt, idx, targets, steps, n, top=8):
    """profile.py's timers around `steps` training steps on 1 thread and `steps` on n, one of
    each in turn; print_function_scaling of the two (which Functions gain from the threads,
    which do not). ValueError for n < 2."""
    _check_threads(n)
    totals, seconds = {1: 0.0, n: 0.0}, {1: defaultdict(float), n: defaultdict(float)}
    for _ in range(steps):
        for k in (1, n):
            with threads(k, None):
                total, per_bucket = clocked(lambda: step(model, opt, idx, targets), 1, opt)
            totals[k] += total
            for bucket, t in per_bucket.items():
                seconds[k][bucket] += t
    one, many = ((totals[k], *step_rows(totals[k], seconds[k], opt)) for k in (1, n))
    print_function_scaling(one, many, steps, n, top)
