"""Why a grouped matmul costs more than its FLOPs say, split into three measured factors.

The layer suite's scaling row keeps the active FLOPs fixed (T tokens, top-2 experts of width 2C)
and multiplies the experts E = 8 ... 128; the fine-grained layer has E=64 top-8 of width C/2. The
forward product of every one of them does the multiply-adds of ONE dense (T, C) @ (C, k d)
matmul, yet takes longer. Five versions of it, taking turns call by call, say where the time goes:

    dense         (T, C) @ (C, k d): the one matmul of equal FLOPs
    one weight    E calls of (S/E, C) @ (C, d), equal row counts, every call on the SAME weight:
                  only the shape differs from dense (rows per call, E calls instead of one)
    E weights     the same calls, each on its own expert's weight (E C d floats in all)
    routed        the real routing's segments (uneven row counts): the per-segment np.matmul
                  calls that the default dispatch makes here (NumbaDispatch's serial flavour)
    padded        the same segments, each with extra rows up to a multiple of 16 (zeros in a
                  real dispatch; any values here, since only the time is read), as MegaBlocks
                  pads to blocks on a GPU: does making the calls regular pay for the extra rows?

so that  routed / dense = shape x weights x uneven (exactly: the ratios telescope), with

    shape    = one weight / dense      E calls of S/E rows instead of one call: each call's
                                       fixed cost (Python and NumPy's call, the BLAS's set-up
                                       and packing of the weight) is spread over fewer rows
    weights  = E weights / one weight  the experts' weights outgrow the caches: every call
                                       reads its weight from farther away
    uneven   = routed / E weights      row counts that differ from expert to expert

The padded version is not a factor; it tests a cure for the third one (`pad rows`: the rows it
runs, against S = T k without padding; `min-max`: the fewest and most rows an expert got). Two
columns size the fixed costs, per expert: `call us`, the routed loop on operands of one column
(the same calls with next to no arithmetic: Python, NumPy's dispatch and the BLAS's entry), and
`loop us`, the loop over the segments alone.
"""
import time

import numpy as np

from ..moe.dispatch import NumpyDispatch, expert_segments
from .common import time_calls

PAD_ROWS = 16
SHAPES = [(f"E{E} top-2 d2C", E, 2, 2) for E in (8, 16, 32, 64, 128)] + [("E64 top-8 dC/2", 64, 8, 0.5)]


def segment_matmuls(x, w, offsets, out, same_weight=False):
    """out[lo:hi] = x[lo:hi] @ w[e] for every segment (w[0] for all when same_weight)."""
    for e, lo, hi in expert_segments(offsets):
        np.matmul(x[lo:hi], w[0 if same_weight else e], out=out[lo:hi])
    return out


def _calls(T, C, E, k, d, rng):
    """({version: call}, {"MiB": the experts' weights in MiB, "padded rows": rows after padding,
    "call": the routed loop on one-column operands}) on fixed random inputs."""
    ids = np.argsort(rng.random((T, E)), axis=1)[:, :k]              # (T, k) distinct experts
    routed = NumpyDispatch().plan(ids, E).offsets
    S = T * k
    even = (np.arange(E + 1) * S) // E                                 # equal row counts
    blocks = -(-np.diff(routed) // PAD_ROWS) * PAD_ROWS                # counts rounded up
    padded = np.concatenate([[0], np.cumsum(blocks)])
    r = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    x, w, xd, wd = r(padded[-1], C), r(E, C, d), r(T, C), r(C, k * d)  # x: room for the padding
    out, out_d = np.empty((padded[-1], d), np.float32), np.empty((T, k * d), np.float32)
    x1, w1, out1 = r(S, 1), r(E, 1, 1), np.empty((S, 1), np.float32)
    calls = {"dense": lambda: np.matmul(xd, wd, out=out_d),
             "one weight": lambda: segment_matmuls(x, w, even, out, same_weight=True),
             "E weights": lambda: segment_matmuls(x, w, even, out),
             "routed": lambda: segment_matmuls(x, w, routed, out),
             "padded": lambda: segment_matmuls(x, w, padded, out)}
    facts = {"MiB": w.nbytes / 2**20, "padded rows": int(padded[-1]), "routed": routed,
             "call": lambda: segment_matmuls(x1, w1, routed, out1)}
    return calls, facts


def _per_expert_us(call, n_expert, reps=50):
    """Best-of microseconds per expert of call()."""
    best = np.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - t0)
    return best / n_expert * 1e6


def run_why(T, C, warmup, iters, seed=0, emit=print, indent=""):
    """Time the five versions of every layout in SHAPES at T tokens and n_embd C (medians of
    `iters` calls after `warmup` rounds, in ms) and print the table: its header with print, each
    row (which holds times) with emit(line) (a lesson passes lesson.measured), every line after
    `indent`. Returns {label: {version: median ms}}, the factors' inputs."""
    rng = np.random.default_rng(seed)
    print(f"{indent}why the grouped matmul costs more than its FLOPs: the forward x W_e at fixed "
          f"active FLOPs, T={T}, n_embd {C}; median ms of {iters} calls taking turns")
    print(f"{indent}{'layer':<17}{'rows/expert':>12}{'min-max':>8}{'weights MiB':>12}{'dense':>8}"
          f"{'one weight':>11}{'E weights':>10}{'routed':>8}{'padded':>8}{'pad rows':>9}"
          f"{'call us':>8}{'loop us':>8}   routed/dense = shape x weights x uneven")
    results = {}
    for label, E, k, width in SHAPES:
        d = max(1, int(width * C))
        calls, facts = _calls(T, C, E, k, d, rng)
        times = time_calls(calls, warmup, iters)
        med = {name: float(np.median(t)) for name, t in times.items()}
        shape, weights = med["one weight"] / med["dense"], med["E weights"] / med["one weight"]
        uneven = med["routed"] / med["E weights"]
        call_us = _per_expert_us(facts["call"], E)
        loop_us = _per_expert_us(lambda: [None for _ in expert_segments(facts["routed"])], E)
        results[label] = {**med, "call us": call_us, "loop us": loop_us}
        counts = np.diff(facts["routed"])
        spread = f"{counts.min()}-{counts.max()}"
        emit(f"{indent}{label:<17}{T * k / E:>12.0f}{spread:>8}{facts['MiB']:>12.1f}{med['dense']:>8.2f}"
             f"{med['one weight']:>11.2f}{med['E weights']:>10.2f}{med['routed']:>8.2f}"
             f"{med['padded']:>8.2f}{facts['padded rows']:>9d}{call_us:>8.1f}{loop_us:>8.2f}   "
             f"{med['routed'] / med['dense']:.2f}x = {shape:.2f} x {weights:.2f} x {uneven:.2f}")
    return results
