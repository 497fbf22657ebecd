"""Time every dispatch primitive, forward and backward, on each backend: where does a MoE layer's
dispatch time go, and which backend is faster at a given shape?

    from tinysparse.moe.timing import time_primitives, print_primitives
    print_primitives(time_primitives(["numpy", "numba"], T=1024, n_embd=128, n_expert=64,
                                     top_k=8, d_expert=64, blas_threads=2))

The routing is top-k over random scores (about T*k/E rows per expert). The experts' two grouped
matmuls (n_embd -> d_expert and back, with biases) are timed together, as the layer calls them.
Backends take turns call by call, so a burst of someone else's load hits them all alike; the
result is the median over `iters` rounds after `warmup` untimed ones.
"""
import contextlib
import time

import numpy as np

from .dispatch import get_backend

ROWS = ("plan", "gather", "scatter", "grouped_mm", "grouped_mm_dx", "grouped_mm_dw",
        "combine", "combine_backward")


def _calls(backend, T, n_embd, n_expert, top_k, d_expert, dtype, seed):
    """{row: a function of no arguments running that primitive on fixed random inputs}."""
    rng = np.random.default_rng(seed)
    ids = np.argsort(rng.random((T, n_expert)), axis=1)[:, :top_k]          # k distinct experts
    plan = backend.plan(ids, n_expert)
    S, off, sp = plan.n_kept, plan.offsets, plan.slot_position

    def r(*shape):
        return rng.standard_normal(shape).astype(dtype)

    x, buf, y, g_tok = r(T, n_embd), r(S, n_embd), r(S, n_embd), r(T, n_embd)
    w1, b1, w2, b2 = r(n_expert, n_embd, d_expert), r(n_expert, d_expert), \
        r(n_expert, d_expert, n_embd), r(n_expert, n_embd)
    h, g_h = r(S, d_expert), r(S, d_expert)
    gates = rng.random((T, top_k)).astype(dtype)
    return {
        "plan": lambda: backend.plan(ids, n_expert),
        "gather": lambda: backend.gather(x, plan.token_index),
        "scatter": lambda: backend.scatter(buf, sp),
        "grouped_mm": lambda: (backend.grouped_mm(buf, w1, b1, off),
                               backend.grouped_mm(h, w2, b2, off)),
        "grouped_mm_dx": lambda: (backend.grouped_mm_dx(g_h, w1, off),
                                  backend.grouped_mm_dx(y, w2, off)),
        "grouped_mm_dw": lambda: (backend.grouped_mm_dw(buf, g_h, off),
                                  backend.grouped_mm_dw(h, y, off)),
        "combine": lambda: backend.combine(y, gates, sp),
        "combine_backward": lambda: backend.combine_backward(g_tok, y, gates, sp),
    }


def time_primitives(backends=("numpy", "numba"), T=1024, n_embd=128, n_expert=64, top_k=8,
                    d_expert=64, dtype=np.float32, iters=30, warmup=3, blas_threads=None, seed=0):
    """{row: {backend: median ms}} for every row of ROWS; blas_threads: BLAS limit (threadpoolctl)."""
    calls = {name: _calls(get_backend(name), T, n_embd, n_expert, top_k, d_expert, dtype, seed)
             for name in backends}
    limit = contextlib.nullcontext()
    if blas_threads is not None:
        from threadpoolctl import threadpool_limits
        limit = threadpool_limits(blas_threads, user_api="blas")
    times = {row: {name: [] for name in backends} for row in ROWS}
    with limit:
        for i in range(warmup + iters):
            for row in ROWS:
                for name in backends:
                    t0 = time.perf_counter()
                    calls[name][row]()
                    if i >= warmup:
                        times[row][name].append((time.perf_counter() - t0) * 1e3)
    return {row: {name: float(np.median(t)) for name, t in per.items()}
            for row, per in times.items()}


def print_primitives(result):
    names = list(next(iter(result.values())))
    print(f"{'primitive':<18}" + "".join(f"{n:>10}" for n in names))
    for row, per in [*result.items(), ("total", {n: sum(r[n] for r in result.values())
                                                  for n in names})]:
        print(f"{row:<18}" + "".join(f"{per[n]:10.3f}" for n in names))
