"""The dispatch plan on the GPU: histogram, scans and the stable rank of every slot, integers only.

Input: the T*k expert ids of the (token, expert) slots, slot s = t*k + j, flattened (-1 = empty slot,
as expert-choice routing leaves). Output: NumpyDispatch.plan's arrays, equal element for element.

The rank of a slot inside its expert's queue must be STABLE (earlier token first) and therefore
must not come from an atomic counter: `r = atomic.add(count, e, 1)` hands out ranks in whatever
order the threads happen to arrive, a different order every run. Instead, a counting sort (the
first pass of a GPU radix sort) in four kernels:

    slots:   | chunk 0       | chunk 1       | chunk 2   |       P = ceil(n / chunk) chunks,
             | 0 1 0 2 ...   | 1 1 0 ...     | ...       |       one thread each

    1. chunk_histogram   thread p counts its chunk:  hist[e, p] = #slots of expert e in chunk p
    2. scan_chunks       thread e scans row e of hist (exclusive): hist[e, p] = #slots of expert e
                         in the chunks BEFORE p; the row's total is counts[e]
    3. exclusive_scan    over the kept counts min(counts[e], C): offsets[e], where expert e's
                         segment of the buffer starts (one block, shared memory)
    4. place_slots       thread p walks its chunk in slot order: a slot of expert e has rank
                         hist[e, p] (earlier chunks, from the scan) and bumps it for the next one
                         (earlier slots of its own chunk). Thread p owns column p: no races.

Every number is produced by one thread in a fixed order, so the plan is the same every run. The
histogram could use integer atomics instead (integer addition is exact, so arrival order does not
matter there), but step 4 needs the per-chunk table anyway.
"""
import functools

import numpy as np
from numba import cuda, int64

from .host import launch_1d, read_int

# Slots per thread in steps 1 and 4. Small chunks = more threads; each thread then walks fewer
# slots but step 2 walks a longer row. 64 keeps P around a few hundred for a training batch.
DEFAULT_CHUNK = 64


@cuda.jit
def chunk_histogram(ids, chunk, hist):
    """Grid: one thread per chunk. hist (E, P): hist[e, p] = slots of expert e in chunk p.

    Expert-major layout: neighbouring threads (chunks p, p+1) write neighbouring addresses.
    """
    p = cuda.grid(1)                         # blockIdx.x * blockDim.x + threadIdx.x
    if p >= hist.shape[1]:
        return                                   # the last block is only partly used
    for e in range(hist.shape[0]):
        hist[e, p] = 0
    for s in range(p * chunk, min((p + 1) * chunk, ids.shape[0])):
        e = ids[s]
        if e >= 0:                               # -1: an empty slot, routed nowhere
            hist[e, p] += 1


@cuda.jit
def scan_chunks(hist, capacity, counts, kept):
    """Grid: one thread per expert. Row e of hist becomes its exclusive prefix sum, in place.

    counts[e] = slots routed to e; kept[e] = min(counts[e], capacity) (capacity < 0: dropless).
    A serial scan per thread is right here: a row has only P entries, and E rows run in parallel.
    """
    e = cuda.grid(1)                         # blockIdx.x * blockDim.x + threadIdx.x
    if e >= hist.shape[0]:
        return
    total = 0
    for p in range(hist.shape[1]):
        c = hist[e, p]
        hist[e, p] = total                       # slots of e in chunks 0..p-1
        total += c
    counts[e] = total
    kept[e] = total if capacity < 0 else min(total, capacity)


@functools.lru_cache(maxsize=None)
def block_scan_kernel(block):
    """An exclusive-scan kernel for one block of `block` threads (a power of two).

    The shared-memory array's size must be a compile-time constant, so each block size gets its
    own compiled kernel: `block` is frozen into the closure.
    """
    @cuda.jit
    def exclusive_scan(values, out):
        """out[0] = 0, out[i + 1] = values[0] + ... + values[i]; len(out) = len(values) + 1.

        Launch: ONE block of `block` threads. Shared memory is on-chip memory that the threads of
        one block share (~100x faster than global memory); cuda.syncthreads() is the barrier no
        thread of the block passes until all have reached it. The input is walked in pieces of
        `block` values; each piece is scanned in shared memory by Hillis-Steele (log2(block)
        steps: at step d every thread adds the value d places to its left), then shifted by the
        carry, the sum of all earlier pieces.
        """
        buf = cuda.shared.array(block, int64)
        tid = cuda.threadIdx.x
        n = values.shape[0]
        if tid == 0:
            out[0] = 0
        carry = 0
        for base in range(0, n, block):          # every thread runs the same iterations: the
            i = base + tid                       # barriers below are reached by all of them
            buf[tid] = values[i] if i < n else 0
            cuda.syncthreads()
            d = 1
            while d < block:
                v = buf[tid - d] if tid >= d else 0
                cuda.syncthreads()               # everyone has read before anyone writes
                buf[tid] += v
                cuda.syncthreads()               # everyone has written before the next read
                d *= 2
            if i < n:
                out[i + 1] = carry + buf[tid]    # inclusive sum of the piece + earlier pieces
            carry += buf[block - 1]              # the piece's total
            cuda.syncthreads()                   # all have read buf before the next piece
    return exclusive_scan


def exclusive_scan(values, out, max_block=1024):
    """Launch the one-block scan: out (n+1,) = exclusive prefix sums of values (n,), int64."""
    n = values.shape[0]
    block = 1
    while block < min(n, max_block):
        block *= 2                               # the smallest power of two >= n, at most max_block
    block_scan_kernel(block)[1, block](values, out)


@cuda.jit
def place_slots(ids, chunk, k, capacity, hist, offsets, rank, slot_position, token_index):
    """Grid: one thread per chunk, as chunk_histogram. Slot s of expert e gets

        rank[s]           = hist[e, p], then hist[e, p] += 1   (its place in e's queue)
        slot_position[s]  = offsets[e] + rank[s]                (its buffer row), -1 if dropped
        token_index[row]  = s // k                              (the token that fills the row)

    A rank >= capacity is dropped (Switch/GShard); an empty slot gets rank and position -1.
    """
    p = cuda.grid(1)                         # blockIdx.x * blockDim.x + threadIdx.x
    if p >= hist.shape[1]:
        return
    for s in range(p * chunk, min((p + 1) * chunk, ids.shape[0])):
        e = ids[s]
        if e < 0:
            rank[s] = -1
            slot_position[s] = -1
            continue
        r = hist[e, p]                           # e's slots before this one
        hist[e, p] = r + 1
        rank[s] = r
        if capacity < 0 or r < capacity:
            row = offsets[e] + r
            slot_position[s] = row
            token_index[row] = s // k
        else:
            slot_position[s] = -1


def plan_arrays(ids, k, n_expert, capacity, out, chunk=DEFAULT_CHUNK, threads=128):
    """Run the four kernels on the flat device array `ids` (T*k,).

    `out` is a host.Outputs (it allocates device arrays). Returns device arrays
    (token_index, slot_position, offsets, counts, rank), positions and ranks flat (T*k,).
    The buffer size S = offsets[E] is read back to the host: token_index's shape depends on it.
    """
    n = ids.shape[0]
    n_chunks = max(1, -(-n // chunk))
    cap = -1 if capacity is None else int(capacity)
    hist = out.empty((n_expert, n_chunks), np.int64)
    counts = out.empty(n_expert, np.int64)
    kept = out.empty(n_expert, np.int64)
    offsets = out.empty(n_expert + 1, np.int64)
    rank = out.empty(n, np.int64)
    slot_position = out.empty(n, np.int64)

    by_chunk = launch_1d(n_chunks, threads)
    chunk_histogram[by_chunk](ids, chunk, hist)
    scan_chunks[launch_1d(n_expert, threads)](hist, cap, counts, kept)
    exclusive_scan(kept, offsets)
    token_index = out.empty(read_int(offsets, n_expert), np.int64)
    place_slots[by_chunk](ids, chunk, k, cap, hist, offsets, rank, slot_position, token_index)
    return token_index, slot_position, offsets, counts, rank
