"""The grouped matmul against one dense matmul of equal FLOPs: `python -m tinysparse bench --suite gmm`.

At the layer suite's fine-grained shape (T tokens, n_embd C, E=64 experts, top-8, width C/2)
the grouped matmul multiplies S = 8T buffer rows, about 8T/64 rows per expert, by each expert's
(C, C/2) weights: forward y = x W_e, dX = g W_e^T, dW_e = x_e^T g_e. One dense matmul of
(T, C) @ (C, 4C) does the same multiply-adds. Each direction runs as

    numba (default)       what dispatch_backend='auto' runs here, bitwise the transcripts' numbers
    numpy reference       dispatch.NumpyDispatch
    numba parallel        opt-in (NumbaDispatch(parallel=True)): experts split over Numba's
                          threads, one single-threaded GEMM each (other bits: see below)
    per-expert BLAS       the bare loop of np.matmul calls on the sorted rows, nothing else
    padded batched        every expert's rows padded to the busiest one's, one stacked np.matmul
    dense, equal FLOPs    the one matmul the MoE's FLOPs are compared with

all taking turns call by call, except those that run Numba's thread pool (numba parallel, and
the default where it picks that flavour): they take turns in a second block. Numba's workers keep
spinning after a parallel kernel, and on 2 cores the next BLAS call shares its cores with them:
measured, the per-expert BLAS loop timed right after numba parallel took 5.0 ms a call, and 2.5
ms with numba parallel timed apart; the dense matmul 2.1 and 1.4 ms.

Then why: the GFLOP/s the BLAS reaches at one expert's shape against the dense shape (best of,
common.matmul_gflops), and that gap split into its factors at every expert count of the layer
suite (grouped_why.py); and the awkward routings (experts without rows, one expert holding
every row, sizes that are no multiple of a task), numba against the reference.

Bits: OpenBLAS's result for a row depends on the call's row count and thread count (measured:
the same rows in one call or two, at 1 or 2 threads, differ in the last bit). So only the
default's very calls give the default's bits: the other strategies stay opt-in.
"""
import time

import numpy as np

from ..moe.dispatch import NumpyDispatch, get_backend
from ..moe.numba_dispatch import NumbaDispatch, parallel_pays
from .targets import record as record_target
from .common import matmul_gflops, threads, time_calls
from .grouped_why import run_why, segment_matmuls

E, TOP_K = 64, 8


def _routing(T, n_expert, top_k, rng, experts=None):
    """(T, top_k) distinct expert ids per token, drawn from `experts` (default: all of them)."""
    pool = np.arange(n_expert) if experts is None else np.asarray(experts)
    if top_k > pool.size:
        raise ValueError(f"top_k {top_k} > {pool.size} experts to draw from")
    return pool[np.argsort(rng.random((T, pool.size)), axis=1)[:, :top_k]]


def _padded(x, w, offsets):
    """The padded batched strategy: (E, busiest, d_in) @ w, then the real rows picked back."""
    counts = np.diff(offsets)
    cap = max(int(counts.max()), 1)
    rows = (np.arange(len(counts))[:, None] * cap + np.arange(cap)[None, :])[
        np.arange(cap)[None, :] < counts[:, None]]                  # (S,) padded row of each row
    xp = np.zeros((len(counts) * cap, x.shape[1]), dtype=x.dtype)
    xp[rows] = x
    return np.matmul(xp.reshape(len(counts), cap, -1), w).reshape(len(counts) * cap, -1)[rows]


def _intensity(m, k, n, itemsize=4):
    """FLOPs per byte of an (m, k) @ (k, n) GEMM that reads A and B once and writes C once."""
    return 2 * m * k * n / (itemsize * (m * k + k * n + m * n))


def _per_expert(x, w, offsets):
    """The bare per-expert BLAS loop (the default dispatch's serial calls) into a new array."""
    return segment_matmuls(x, w, offsets, np.empty((x.shape[0], w.shape[2]), dtype=x.dtype))


def _calls(T, C, d, rng, dtype=np.float32):
    """{direction: {strategy: a call}} on fixed random inputs at E=64 top-8."""
    ref, default, par = NumpyDispatch(), get_backend("numba"), NumbaDispatch(parallel=True)
    plan = ref.plan(_routing(T, E, TOP_K, rng), E)
    off, S = plan.offsets, plan.n_kept
    r = lambda *shape: rng.standard_normal(shape).astype(dtype)    # noqa: E731
    x, g, w = r(S, C), r(S, d), r(E, C, d)
    xd, gd, wd = r(T, C), r(T, TOP_K * d), r(C, TOP_K * d)           # equal FLOPs: S*C*d = T*C*8d
    wt = w.transpose(0, 2, 1)                                        # views: W_e^T, as dX reads it
    return {
        "forward": {"numba (default)": lambda: default.grouped_mm(x, w, None, off),
                    "numpy reference": lambda: ref.grouped_mm(x, w, None, off),
                    "numba parallel": lambda: par.grouped_mm(x, w, None, off),
                    "per-expert BLAS": lambda: _per_expert(x, w, off),
                    "padded batched": lambda: _padded(x, w, off),
                    "dense": lambda: xd @ wd},
        "dX": {"numba (default)": lambda: default.grouped_mm_dx(g, w, off),
               "numpy reference": lambda: ref.grouped_mm_dx(g, w, off),
               "numba parallel": lambda: par.grouped_mm_dx(g, w, off),
               "per-expert BLAS": lambda: _per_expert(g, wt, off),
               "padded batched": lambda: _padded(g, wt, off),
               "dense": lambda: gd @ wd.T},
        "dW": {"numba (default)": lambda: default.grouped_mm_dw(x, g, off, with_bias=False),
               "numpy reference": lambda: ref.grouped_mm_dw(x, g, off, with_bias=False),
               "numba parallel": lambda: par.grouped_mm_dw(x, g, off, with_bias=False),
               "dense": lambda: xd.T @ gd},
    }


def _awkward(C, d, rng):
    """(name, T, expert ids) of routings that break careless kernels."""
    T = 1000                                              # no multiple of a 256-row task
    return [("experts without rows (odd ids never chosen)", T,
             _routing(T, E, TOP_K, rng, experts=np.arange(0, E, 2))),
            ("one expert holding every row (top-1)", T, np.zeros((T, 1), dtype=np.int64)),
            ("1000 tokens, random top-8", T, _routing(T, E, TOP_K, rng)),
            ("a single token", 1, _routing(1, E, TOP_K, rng))]


def _check_awkward(C, d, rng, iters):
    """Each awkward routing: numba's three products against the reference, and numba's time."""
    ref, numba = NumpyDispatch(), get_backend("numba")
    print(f"\nawkward routings, E={E}, n_embd {C}, width {d}: numba against the reference "
          f"(forward, dX, dW)")
    print(f"{'routing':<46}{'rows':>6}{'max |diff|':>12}{'same bits':>11}{'numba ms':>10}")
    for name, T, ids in _awkward(C, d, rng):
        plan = ref.plan(ids, E)
        x = rng.standard_normal((plan.n_kept, C)).astype(np.float32)
        g = rng.standard_normal((plan.n_kept, d)).astype(np.float32)
        w = rng.standard_normal((E, C, d)).astype(np.float32)
        run = lambda be: (be.grouped_mm(x, w, None, plan.offsets),          # noqa: E731
                          be.grouped_mm_dx(g, w, plan.offsets),
                          be.grouped_mm_dw(x, g, plan.offsets, with_bias=False)[0])
        want, got = run(ref), run(numba)
        diff = max(float(np.abs(a - b).max(initial=0.0)) for a, b in zip(want, got))
        same = all(np.array_equal(a, b) for a, b in zip(want, got))
        ms = np.median(time_calls({"numba": lambda: run(numba)}, 1, iters)["numba"])
        print(f"{name:<46}{plan.n_kept:>6}{diff:>12.1e}{'yes' if same else 'no':>11}{ms:>10.2f}")


def _timed_in_blocks(per, pool, warmup, iters):
    """{name: (median ms, best ms, median ms / the dense matmul's median)}. The calls on Numba's
    thread pool take turns in a second block of their own, after a pause: its workers spin after
    each parallel kernel and slow whatever runs next on 2 cores, the dense matmul included (in
    one run a dense matmul timed among them took about 5 ms instead of 1.5). So every ratio is to
    the dense matmul of the first block, which no pool disturbed."""
    out, dense = {}, None
    for names in ([n for n in per if n not in pool], [n for n in per if n in pool]):
        if not names:
            continue
        time.sleep(0.2)
        times = time_calls({n: per[n] for n in names}, warmup, iters)
        dense = dense or float(np.median(times["dense"]))
        for n in names:
            out[n] = (float(np.median(times[n])), min(times[n]), float(np.median(times[n])) / dense)
    return out


def run_grouped_bench(args):
    T, C = args.layer_tokens, args.n_embd
    d = max(1, C // 2)
    rng = np.random.default_rng(0)
    calls = _calls(T, C, d, rng)
    iters = max(args.iters, 5)
    with threads(args.threads, None):
        flavour = "parallel" if parallel_pays() else "serial"
        print(f"\ngrouped matmul, T={T}, n_embd {C}, E={E} top-{TOP_K} width {d} "
              f"({T * TOP_K} rows, ~{T * TOP_K // E} per expert), {args.threads} threads, "
              f"numba default flavour here: {flavour}; median of {iters} calls taking turns")
        pool = {"numba parallel"} | ({"numba (default)"} if flavour == "parallel" else set())
        print(f"({', '.join(sorted(pool))} on Numba's thread pool: timed in a block of their own, "
              f"since the pool's spinning workers slow whatever runs next, the dense matmul "
              f"included; every ratio is to the first block's dense matmul)")
        print(f"{'':<10}" + "".join(f"{name:>17}" for name in calls["forward"]))
        best = {}
        for direction, per in calls.items():
            timed = _timed_in_blocks(per, pool, args.warmup, iters)
            best[direction] = {n: b for n, (_, b, _) in timed.items()}
            cells = {n: f"{m:.2f} ms {r:.1f}x" for n, (m, _, r) in timed.items()}
            print(f"{direction:<10}" + "".join(f"{cells.get(n, '-'):>17}" for n in calls["forward"]))
            record_target({"forward": "gmm_fwd", "dX": "gmm_dx", "dW": "gmm_dw"}[direction],
                          timed["numba (default)"][2])
        rows = max(1, T * TOP_K // E)
        flop = 2.0 * T * TOP_K * C * d
        loop, one = (flop / (best["forward"][n] / 1e3) / 1e9 for n in ("per-expert BLAS", "dense"))
        print(f"forward, best of the calls above: the {E} per-expert BLAS calls {loop:.1f} GFLOP/s, "
              f"the dense matmul {one:.1f} GFLOP/s ({one / loop:.2f}x)")
        expert, dense = matmul_gflops(rows, C, d), matmul_gflops(T, C, TOP_K * d)
        print(f"one shape alone, the same operands again and again (warm caches; best of): "
              f"{rows}x{C} @ {C}x{d} {expert:.1f} GFLOP/s; the dense shape ({T}x{C} @ {C}x{TOP_K * d}): "
              f"{dense:.1f} GFLOP/s ({dense / expert:.2f}x)")
        print(f"arithmetic intensity (float32, each operand read once, the output written once): "
              f"one expert's GEMM {_intensity(rows, C, d):.0f} FLOP/byte, the dense GEMM "
              f"{_intensity(T, C, TOP_K * d):.0f} FLOP/byte; {E} calls of "
              f"{2 * rows * C * d / 1e6:.2f} MFLOP each against one of "
              f"{2 * T * C * TOP_K * d / 1e6:.0f} MFLOP")
        time.sleep(0.2)                           # the last block's pool workers: let them rest
        print()
        run_why(T, C, args.warmup, max(args.iters, 15))
        _check_awkward(C, d, rng, max(2, args.iters // 4))
    return 0
