"""Why a grouped matmul costs more than its FLOPs say, split into three measured factors.

The layer suite's scaling row keeps the active FLOPs fixed (T tokens, top-2 experts of width 2C)
and multiplies the experts E = 8 ... 128; the fine-grained layer has E=64 top-8 of width C/2. The
forward product of every one of them does the multiply-adds of ONE dense (T, C) @ (C, k d)
matmul, yet takes longer. Four versions of it, taking turns call by call, say where the time goes:

    dense         (T, C) @ (C, k d): the one matmul of equal FLOPs
    one weight    E calls of (S/E, C) @ (C, d), equal row counts, every call on the SAME weight:
                  only the shape differs from dense (rows per call, E calls instead of one)
    E weights     the same calls, each on its own expert's weight (E C d floats in all)
    routed        the real routing's segments (uneven row counts), the default's BLAS calls
    padded        the same segments, each padded with zero rows to a multiple of 16 (what
                  MegaBlocks does on a GPU, to blocks of 128): is the unevenness the odd sizes?

so that  routed / dense = shape x weights x uneven, with

    shape    = one weight / dense      fewer rows per GEMM call: the BLAS packs each weight
                                       and then uses it for only S/E rows (intensity drops)
    weights  = E weights / one weight  the experts' weights no longer fit in the cache: every
                                       call reads its weight from L3 or DRAM
    uneven   = routed / E weights      row counts that differ from expert to expert (the
                                       BLAS's edge code for the rows past its block)

The padded version is not a factor; it tests a cure for the third one.

Physical, not Python: the Python loop over the experts is timed too (about 1 us an expert,
`loop` below), and the same BLAS run on its favourite shapes is `matmul_gflops`'s peak.
"""
import time

import numpy as np

from ..moe.dispatch import NumpyDispatch, expert_segments
from .common import time_calls

PAD_ROWS = 16
SHAPES = [(f"E{E} top-2 d2C", E, 2, 2) for E in (8, 16, 32, 64, 128)] + [("E64 top-8 dC/2", 64, 8, 0.5)]


def _loop(x, w, offsets, out, same_weight=False):
    """out[lo:hi] = x[lo:hi] @ w[e] for every segment (w[0] for all when same_weight)."""
    for e, lo, hi in expert_segments(offsets):
        np.matmul(x[lo:hi], w[0 if same_weight else e], out=out[lo:hi])
    return out


def _calls(T, C, E, k, d, rng):
    """{version: call} on fixed random inputs, and the weights' size in MB."""
    ids = np.argsort(rng.random((T, E)), axis=1)[:, :k]              # (T, k) distinct experts
    routed = NumpyDispatch().plan(ids, E).offsets
    S = T * k
    even = (np.arange(E + 1) * S) // E                                 # equal row counts
    blocks = -(-np.diff(routed) // PAD_ROWS) * PAD_ROWS                # counts rounded up
    padded = np.concatenate([[0], np.cumsum(blocks)])
    r = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    x, w, xd, wd = r(padded[-1], C), r(E, C, d), r(T, C), r(C, k * d)  # x: room for the padding
    out, out_d = np.empty((padded[-1], d), np.float32), np.empty((T, k * d), np.float32)
    calls = {"dense": lambda: np.matmul(xd, wd, out=out_d),
             "one weight": lambda: _loop(x, w, even, out, same_weight=True),
             "E weights": lambda: _loop(x, w, even, out),
             "routed": lambda: _loop(x, w, routed, out),
             "padded": lambda: _loop(x, w, padded, out)}
    return calls, w.nbytes / 2**20, even


def _python_loop_us(offsets, reps=200):
    """Microseconds per expert of the segment loop alone (no matmul): the Python share."""
    t0 = time.perf_counter()
    for _ in range(reps):
        for _segment in expert_segments(offsets):
            pass
    return (time.perf_counter() - t0) / reps / (len(offsets) - 1) * 1e6


def run_why(T, C, warmup, iters, seed=0, emit=print):
    """Print the table (its rows, which hold times, through `emit`: a lesson passes
    lesson.measured); return {label: {version: median ms}}, the factors' inputs."""
    rng = np.random.default_rng(seed)
    print(f"\nwhy the grouped matmul costs more than its FLOPs: the forward x W_e at fixed active "
          f"FLOPs, T={T}, n_embd {C}; median ms of {iters} calls taking turns")
    print(f"{'layer':<17}{'rows/expert':>12}{'weights MB':>11}{'dense':>8}{'one weight':>11}"
          f"{'E weights':>10}{'routed':>8}{'padded':>8}{'loop us':>8}   "
          f"routed/dense = shape x weights x uneven")
    results = {}
    for label, E, k, width in SHAPES:
        d = max(1, int(width * C))
        calls, mb, even = _calls(T, C, E, k, d, rng)
        times = time_calls(calls, warmup, iters)
        med = {name: float(np.median(t)) for name, t in times.items()}
        shape, weights = med["one weight"] / med["dense"], med["E weights"] / med["one weight"]
        uneven = med["routed"] / med["E weights"]
        results[label] = med
        emit(f"{label:<17}{T * k / E:>12.0f}{mb:>11.1f}{med['dense']:>8.2f}{med['one weight']:>11.2f}"
             f"{med['E weights']:>10.2f}{med['routed']:>8.2f}{med['padded']:>8.2f}"
             f"{_python_loop_us(even):>8.2f}   "
              f"{med['routed'] / med['dense']:.2f}x = {shape:.2f} x {weights:.2f} x {uneven:.2f}")
    return results
