"""The sparse-dispatch kernels on the CPU, compiled by Numba (@njit): one loop each, no temporaries.

NumPy's version of dispatch (dispatch.py) is a handful of whole-array calls per step: argsort,
bincount, fancy indexing, a zero-padded copy of the buffer, one small matmul call per expert.
Each call allocates a temporary and crosses from Python into C. Here every primitive is one
compiled loop that reads its inputs once and writes its output once:

    plan        a counting sort: histogram, exclusive scan, then one pass handing out ranks
    gather      buffer[i] = x[token_index[i]]                       (parallel over buffer rows)
    scatter     dx[t] = sum_j g[slot(t, j)], j = 0..k-1             (parallel over tokens)
    grouped_mm  y = x_e W_e + b_e on row chunks of one expert         (parallel over chunks)
    mm_dx       dx = g_e W_e^T on the same chunks                     (parallel over chunks)
    mm_dw       dW_e = x_e^T g_e                                      (parallel over experts)
    bias_grad   db_e = sum of g_e's rows, first to last               (parallel over experts)
    combine     out[t] = sum_j gate[t, j] y[slot(t, j)]              (parallel over tokens)

Determinism: every output element is written by exactly one thread, and each sum runs in a
fixed order (j = 0..k-1; a segment's rows first to last; a task's GEMM on ONE BLAS thread; the
SIMD lanes of one compiled dot product), so results do not depend on Numba's thread count or on
scheduling. No atomics anywhere.

Two flavours of every loop kernel: PARALLEL (prange over Numba's worker threads) and SERIAL (the
same code, prange read as range; its grouped matmuls are NumPy's, in numba_dispatch.py). Why both:
thread pools fight. np.dot in a kernel calls a BLAS GEMM; if that BLAS starts threads of its own,
each prange worker's GEMM competes with the others (10-80x slower), so numba_dispatch.py holds
that BLAS to one thread inside parallel kernels. And NumPy's own BLAS (OpenBLAS) keeps its worker
threads spinning for a while (about 0.1 s) after every threaded matmul anywhere in the model: on 2
cores a Numba worker then shares its core with a spinning thread and every barrier waits for it (a
parallel kernel ran 2-8x slower, measured). numba_dispatch.py picks the flavour from how the
process runs NumPy's BLAS.
"""
from types import FunctionType, SimpleNamespace

import numpy as np
from numba import njit, prange

CHUNK_ROWS = 256    # about this many rows per grouped-matmul task (see chunks; 64: 20% slower)


@njit(cache=True)
def plan_kernel(flat_ids, n_expert, k, capacity):
    """Slots s = t*k + j with expert flat_ids[s] (-1: empty) -> the dispatch plan.

    A counting sort, the stable sort by expert that MegaBlocks does with radix sort on a GPU:
      1. histogram: counts[e] = slots routed to e
      2. exclusive scan of the kept counts: expert e owns buffer rows [offsets[e], offsets[e+1])
      3. one pass in slot order: a slot's rank is how many earlier slots chose its expert, so
         earlier tokens come first inside every expert (stable), and rank >= capacity is dropped.
    capacity < 0 means dropless.
    """
    n_slots = flat_ids.shape[0]
    counts = np.zeros(n_expert, dtype=np.int64)
    for s in range(n_slots):                                   # 1. histogram
        if flat_ids[s] >= 0:
            counts[flat_ids[s]] += 1
    offsets = np.zeros(n_expert + 1, dtype=np.int64)
    for e in range(n_expert):                                  # 2. exclusive scan of kept counts
        kept = counts[e] if capacity < 0 else min(counts[e], capacity)
        offsets[e + 1] = offsets[e] + kept
    seen = np.zeros(n_expert, dtype=np.int64)
    rank = np.full(n_slots, -1, dtype=np.int64)
    slot_position = np.full(n_slots, -1, dtype=np.int64)
    token_index = np.empty(offsets[n_expert], dtype=np.int64)
    for s in range(n_slots):                                   # 3. ranks, in slot order
        e = flat_ids[s]
        if e < 0:
            continue
        r = seen[e]
        seen[e] += 1
        rank[s] = r
        if capacity < 0 or r < capacity:
            row = offsets[e] + r
            slot_position[s] = row
            token_index[row] = s // k
    return counts, offsets, slot_position, rank, token_index


@njit(cache=True)
def chunks(offsets, chunk_rows):
    """(n_tasks, 3) array of (expert, lo, hi): every segment cut into n // chunk_rows equal
    pieces (at least one), so that the parallel loop balances work even when one expert got
    most tokens, and no piece is a small leftover (a GEMM of a few rows runs far below peak).
    The cut depends on the offsets alone, never on the thread count: same tasks, same bits."""
    E = offsets.shape[0] - 1
    pieces = np.empty(E, dtype=np.int64)
    for e in range(E):
        pieces[e] = max(1, (offsets[e + 1] - offsets[e]) // chunk_rows)
    tasks = np.empty((pieces.sum(), 3), dtype=np.int64)
    i = 0
    for e in range(E):
        lo, n = offsets[e], offsets[e + 1] - offsets[e]
        if n == 0:
            continue
        for p in range(pieces[e]):                             # piece p: rows [n*p/P, n*(p+1)/P)
            tasks[i, 0] = e
            tasks[i, 1] = lo + n * p // pieces[e]
            tasks[i, 2] = lo + n * (p + 1) // pieces[e]
            i += 1
    return tasks[:i]


# Rows are copied and added with explicit loops over the columns, never `out[i, :] = x[r, :]`
# or `out[t, :] += w * y[r, :]`: Numba may build a temporary array for each such slice
# expression, a malloc and a free per row (a 0.05 ms gather took 4 ms that way, measured).
# The column loops have no loop-carried sum, so LLVM turns them into SIMD as they are.

def gather_kernel(x, token_index, out):
    C = x.shape[1]
    for i in prange(token_index.shape[0]):
        r = token_index[i]
        for c in range(C):
            out[i, c] = x[r, c]


def scatter_kernel(g, slot_position, out):
    T, k = slot_position.shape
    C = g.shape[1]
    for t in prange(T):
        for c in range(C):
            out[t, c] = 0.0
        for j in range(k):                                     # fixed order j = 0..k-1
            row = slot_position[t, j]
            if row >= 0:
                for c in range(C):
                    out[t, c] += g[row, c]


def combine_kernel(y, gates, slot_position, out):
    T, k = slot_position.shape
    C = y.shape[1]
    for t in prange(T):
        for c in range(C):
            out[t, c] = 0.0
        for j in range(k):                                     # fixed order j = 0..k-1
            row = slot_position[t, j]
            if row >= 0:
                gate = gates[t, j]
                for c in range(C):
                    out[t, c] += gate * y[row, c]


def combine_backward_kernel(g, y, gates, slot_position, dy, dgates):
    """dgates[t, j] = <g[t], y[slot]>; dy[slot] = gates[t, j] g[t]. Each buffer row belongs to
    exactly one kept (t, j), so the token-parallel loop writes every row of dy exactly once."""
    T, k = slot_position.shape
    C = g.shape[1]
    for t in prange(T):
        for j in range(k):
            row = slot_position[t, j]
            if row < 0:                                        # dropped or empty: no answer
                dgates[t, j] = 0.0
                continue
            acc = 0.0                                          # SIMD lanes: see _OPTIONS
            for c in range(C):
                acc += g[t, c] * y[row, c]
            dgates[t, j] = acc
            gate = gates[t, j]
            for c in range(C):
                dy[row, c] = gate * g[t, c]


# ---- bias terms of the grouped matmul (the serial flavour's GEMMs are NumPy's) ------------------

def add_bias_kernel(out, b, offsets):
    """out[r] += b[e] for every row r of expert e's segment."""
    for e in prange(offsets.shape[0] - 1):
        for r in range(offsets[e], offsets[e + 1]):
            for c in range(out.shape[1]):
                out[r, c] += b[e, c]


def bias_grad_kernel(g, offsets, db):
    """db[e] = sum of g's rows in expert e's segment, first row to last (0 when it is empty)."""
    for e in prange(offsets.shape[0] - 1):
        for c in range(g.shape[1]):
            db[e, c] = 0.0
        for r in range(offsets[e], offsets[e + 1]):
            for c in range(g.shape[1]):
                db[e, c] += g[r, c]


# ---- grouped matmul with the GEMMs inside the kernel (parallel flavour) -------------------------
# np.dot's third argument writes the product straight into out's rows: no temporary. The tasks
# never overlap, and each task's product is one single-threaded BLAS call.

def grouped_mm_kernel(x, w, b, has_bias, tasks, out):
    """out[lo:hi] = x[lo:hi] @ w[e] (+ b[e]) for every task (e, lo, hi)."""
    for i in prange(tasks.shape[0]):
        e, lo, hi = tasks[i, 0], tasks[i, 1], tasks[i, 2]
        np.dot(x[lo:hi], w[e], out[lo:hi])
        if has_bias:
            for r in range(lo, hi):
                for c in range(out.shape[1]):
                    out[r, c] += b[e, c]


def grouped_mm_dx_kernel(g, w, tasks, out):
    """dx[lo:hi] = g[lo:hi] @ w[e]^T (w[e]^T is a transposed view: BLAS reads it as is)."""
    for i in prange(tasks.shape[0]):
        e, lo, hi = tasks[i, 0], tasks[i, 1], tasks[i, 2]
        np.dot(g[lo:hi], w[e].T, out[lo:hi])


def grouped_mm_dw_kernel(x, g, offsets, dw):
    """dW_e = x_e^T g_e: one expert per task, all its rows in one GEMM (a fixed order)."""
    for e in prange(offsets.shape[0] - 1):
        lo, hi = offsets[e], offsets[e + 1]
        if hi > lo:
            np.dot(x[lo:hi].T, g[lo:hi], dw[e])
        else:
            dw[e] = 0.0                                        # no tokens: nothing to learn


# ---- the two flavours of each kernel ------------------------------------------------------------

_LOOP_KERNELS = (gather_kernel, scatter_kernel, combine_kernel, combine_backward_kernel,
                 add_bias_kernel, bias_grad_kernel)
_GEMM_KERNELS = (grouped_mm_kernel, grouped_mm_dx_kernel, grouped_mm_dw_kernel)


def _renamed(fn, suffix):
    """A copy of fn under another name. Numba's on-disk cache is keyed by the function's name
    and signature, not by parallel=True/False: without distinct names, the serial flavour
    would load the parallel machine code from the cache (it did, measured: 4 ms a call)."""
    copy = FunctionType(fn.__code__, fn.__globals__, fn.__name__ + suffix)
    copy.__qualname__ = fn.__qualname__ + suffix
    return copy


# dgates is a dot product over C columns. Summed strictly left to right it cannot use SIMD
# (0.44 ms at T=1024, k=8, C=128); fastmath 'reassoc' lets LLVM keep partial sums in SIMD lanes
# (0.12 ms). The order then is the compiled code's, the same on every call and every thread.
_OPTIONS = {"combine_backward_kernel": dict(fastmath={"reassoc"})}

PARALLEL = SimpleNamespace(**{f.__name__: njit(parallel=True, cache=True,
                                               **_OPTIONS.get(f.__name__, {}))(f)
                              for f in _LOOP_KERNELS + _GEMM_KERNELS})
SERIAL = SimpleNamespace(**{f.__name__: njit(cache=True, **_OPTIONS.get(f.__name__, {}))(
                                _renamed(f, "_serial"))
                            for f in _LOOP_KERNELS})
