"""The sparse-dispatch kernels on the CPU, compiled by Numba (@njit): one loop each, no temporaries.

NumPy's version of dispatch (dispatch.py) is a handful of whole-array calls per step: argsort,
bincount, fancy indexing, and one small matmul call per expert. Each call allocates a temporary
and crosses from Python into C; with 64 experts and 6 grouped matmuls a layer, those crossings
add up. Here every primitive is one compiled loop:

    plan        a counting sort: histogram, exclusive scan, then one pass handing out ranks
    gather      buffer[i] = x[token_index[i]]                       (parallel over buffer rows)
    scatter     dx[t] = sum_j g[slot(t, j)], j = 0..k-1             (parallel over tokens)
    grouped_mm  y = x_e W_e + b_e over row chunks of one expert       (parallel over chunks)
    mm_dw       dW_e = x_e^T g_e, db_e = sum of g_e's rows            (parallel over experts)
    combine     out[t] = sum_j gate[t, j] y[slot(t, j)]              (parallel over tokens)

Determinism: every output element is written by exactly one thread, and each sum runs in a
fixed order (j = 0..k-1, a segment's rows first to last), so results do not depend on the thread
count or on scheduling. No atomics anywhere.

Two flavours of every kernel with a loop over rows, tokens or experts: PARALLEL (prange over
Numba's worker threads) and SERIAL (the same code, prange read as range). Why both: thread pools
fight. np.dot in a kernel calls a BLAS GEMM; if that BLAS starts threads of its own, each prange
worker's GEMM competes with the others (10-80x slower, measured), so numba_dispatch.py holds
BLAS to one thread inside parallel kernels. And NumPy's own BLAS threads keep spinning for a
while after every matmul elsewhere in the model: on 2 cores, Numba's workers then wait on
descheduled threads at every barrier, and a MoE layer took 2-3x LONGER in parallel than
serially. numba_dispatch.py picks the flavour from how the process runs BLAS.
"""
from types import FunctionType, SimpleNamespace

import numpy as np
from numba import njit, prange

CHUNK_ROWS = 64     # rows of one expert segment per grouped-matmul task (see _chunks)


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


# Rows are copied and added with explicit loops over the columns, never `out[i, :] = x[r, :]`
# or `out[t, :] += w * y[r, :]`: Numba may build a temporary array for each such slice
# expression, a malloc and a free per row, and right after a threaded BLAS call (its threads
# still spinning) that made a 0.05 ms gather take 4 ms here (measured).

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


@njit(cache=True)
def chunks(offsets, chunk_rows):
    """(n_tasks, 3) array of (expert, lo, hi): every segment cut into pieces of <= chunk_rows
    rows, so that the parallel loop balances work even when one expert got most tokens."""
    n = 0
    for e in range(offsets.shape[0] - 1):
        n += (offsets[e + 1] - offsets[e] + chunk_rows - 1) // chunk_rows
    tasks = np.empty((n, 3), dtype=np.int64)
    i = 0
    for e in range(offsets.shape[0] - 1):
        for lo in range(offsets[e], offsets[e + 1], chunk_rows):
            tasks[i, 0], tasks[i, 1], tasks[i, 2] = e, lo, min(lo + chunk_rows, offsets[e + 1])
            i += 1
    return tasks


def grouped_mm_kernel(x, w, b, has_bias, tasks, out):
    """out[lo:hi] = x[lo:hi] @ w[e] (+ b[e]) for every task (e, lo, hi); tasks never overlap.
    np.dot's third argument writes the product straight into out's rows: no temporary."""
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


def grouped_mm_dw_kernel(x, g, offsets, has_bias, dw, db):
    """dW_e = x_e^T g_e and db_e = sum of g_e's rows: one expert per task, rows in order."""
    for e in prange(offsets.shape[0] - 1):
        lo, hi = offsets[e], offsets[e + 1]
        if hi > lo:
            np.dot(x[lo:hi].T, g[lo:hi], dw[e])
        else:
            dw[e] = 0.0                                        # no tokens: nothing to learn
        if has_bias:
            for c in range(g.shape[1]):
                db[e, c] = 0.0
            for r in range(lo, hi):                            # fixed order: first row to last
                for c in range(g.shape[1]):
                    db[e, c] += g[r, c]


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
    exactly one (t, j), so the token-parallel loop never writes a row twice."""
    T, k = slot_position.shape
    C = g.shape[1]
    for t in prange(T):
        for j in range(k):
            row = slot_position[t, j]
            if row < 0:
                dgates[t, j] = 0.0
                continue
            acc = 0.0
            for c in range(C):
                acc += g[t, c] * y[row, c]
            dgates[t, j] = acc
            gate = gates[t, j]
            for c in range(C):
                dy[row, c] = gate * g[t, c]


# ---- the two flavours of each kernel ------------------------------------------------------------

_LOOP_KERNELS = (gather_kernel, scatter_kernel, grouped_mm_kernel, grouped_mm_dx_kernel,
                 grouped_mm_dw_kernel, combine_kernel, combine_backward_kernel)


def _renamed(fn, suffix):
    """A copy of fn under another name. Numba's on-disk cache is keyed by the function's name
    and signature, not by parallel=True/False: without distinct names, the serial flavour
    would load the parallel machine code from the cache (it did, measured: 4 ms a call)."""
    copy = FunctionType(fn.__code__, fn.__globals__, fn.__name__ + suffix)
    copy.__qualname__ = fn.__qualname__ + suffix
    return copy


PARALLEL = SimpleNamespace(**{f.__name__: njit(parallel=True, cache=True)(f)
                              for f in _LOOP_KERNELS})
SERIAL = SimpleNamespace(**{f.__name__: njit(cache=True)(_renamed(f, "_serial"))
                            for f in _LOOP_KERNELS})
