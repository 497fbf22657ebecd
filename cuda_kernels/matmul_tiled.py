"""Grouped matmul with shared-memory tiles: the fast version of matmul_naive.py, same results.

The idea (the classic CUDA tiled GEMM; llm.c's dev/cuda matmul kernels go further):

    a block of TILE x TILE threads computes a TILE x TILE tile of the output. The inner dimension
    is walked in steps of TILE: each step, the block loads one TILE x TILE tile of each operand
    from global memory into SHARED memory, every thread loading one element of each, then every
    thread runs TILE multiply-adds out of shared memory. Each value loaded from DRAM is used
    TILE times instead of once.

              k0 ->                         for each step k0:
        +----+----+----+          ^           sA <- A[rows, k0:k0+TILE]    (one element per thread)
   rows |sA  |    |    |   @   k0 |sB          sB <- B[k0:k0+TILE, cols]
        +----+----+----+          v           syncthreads()   the tiles are complete
                                              acc += sA[ty, :] . sB[:, tx]
                                              syncthreads()   all are done before the next load

The two barriers matter: without the first a thread could read a tile element another thread
has not written yet; without the second a fast thread could overwrite the tile for step k0+1
while a slow one still reads step k0. Elements past the matrix edge (sizes that are not
multiples of TILE) are loaded as zeros, so the inner loop needs no bounds checks.

Grouping: a tile must not straddle two experts (they multiply by different W). Forward and dX cut
every expert's rows into ceil(n_e / TILE) row tiles and number them expert by expert; block
(bx, by) takes row tile by (find_row_tile) and column tile bx. There are at most
ceil(S / TILE) + E row tiles, so the grid is launched that tall and the spare blocks return at once,
with no host round trip to count the real ones. dW: block (bx, by, e) owns the (by, bx) tile of
dw[e] and walks expert e's rows TILE at a time, in order: no atomics.

In all three kernels every output element adds its terms in the naive kernel's order (the zero
padding terms change nothing), so the two agree bit for bit in the simulator (tested); on a GPU
they can differ only where the compiler fuses multiply-adds differently.

TILE and the element type are compile-time constants (shared arrays have a fixed size and type),
so `kernels(tile, dtype)` compiles one set per pair and caches it. TILE = 16: 256 threads and
2 KiB (float32) of shared memory per block.
"""
import functools

import numpy as np
from numba import cuda, from_dtype

from .host import ceil_div, check_grid

DEFAULT_TILE = 16


@cuda.jit(device=True)
def find_row_tile(offsets, tile_id, tile):
    """(expert, first row, end of the expert's rows) of row tile `tile_id`; expert -1 past the last.

    Expert e's rows [offsets[e], offsets[e+1]) make ceil(n_e / tile) row tiles; tiles are numbered
    expert by expert. Every thread of the block computes the same answer (a walk over E offsets):
    cheaper than a barrier to share one thread's.
    """
    for e in range(offsets.shape[0] - 1):
        lo = offsets[e]
        hi = offsets[e + 1]
        n_tiles = (hi - lo + tile - 1) // tile
        if tile_id < n_tiles:
            return e, lo + tile_id * tile, hi
        tile_id -= n_tiles
    return -1, 0, 0


@functools.lru_cache(maxsize=None)
def kernels(tile, dtype):
    """The tiled forward, dX and dW kernels for one tile size and element type."""
    T = tile
    acc_type = from_dtype(np.dtype(dtype))

    @cuda.jit
    def mm(x, w, b, has_bias, offsets, zero, out):
        """out (S, d_out) = x @ w[e] (+ b[e]). Thread (tx, ty) of block (bx, by) computes
        out[row0 + ty, bx*T + tx] of row tile by."""
        e, row0, row_end = find_row_tile(offsets, cuda.blockIdx.y, T)
        if e < 0:
            return                               # a spare block: all its threads leave together
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        i = row0 + ty                            # output row (buffer row)
        j = cuda.blockIdx.x * T + tx             # output column
        d_in = x.shape[1]
        sx = cuda.shared.array((T, T), acc_type)  # sx[r, a] = x[row0 + r, a0 + a]
        sw = cuda.shared.array((T, T), acc_type)  # sw[a, c] = w[e, a0 + a, col0 + c]
        acc = zero
        for a0 in range(0, d_in, T):
            sx[ty, tx] = x[i, a0 + tx] if i < row_end and a0 + tx < d_in else zero
            sw[ty, tx] = w[e, a0 + ty, j] if a0 + ty < d_in and j < out.shape[1] else zero
            cuda.syncthreads()
            for a in range(T):
                acc += sx[ty, a] * sw[a, tx]
            cuda.syncthreads()
        if i < row_end and j < out.shape[1]:
            if has_bias:
                acc += b[e, j]
            out[i, j] = acc

    @cuda.jit
    def mm_dx(g, w, offsets, zero, dx):
        """dx (S, d_in) = g @ w[e]^T. Thread (tx, ty) computes dx[row0 + ty, bx*T + tx]."""
        e, row0, row_end = find_row_tile(offsets, cuda.blockIdx.y, T)
        if e < 0:
            return
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        i = row0 + ty
        col0 = cuda.blockIdx.x * T
        d_out = g.shape[1]
        sg = cuda.shared.array((T, T), acc_type)  # sg[r, c] = g[row0 + r, c0 + c]
        swt = cuda.shared.array((T, T), acc_type)  # swt[c, a] = w[e, col0 + a, c0 + c] = W^T
        acc = zero
        for c0 in range(0, d_out, T):
            sg[ty, tx] = g[i, c0 + tx] if i < row_end and c0 + tx < d_out else zero
            # read w row-wise (tx along w's last axis: coalesced), store transposed in shared
            swt[tx, ty] = w[e, col0 + ty, c0 + tx] \
                if col0 + ty < dx.shape[1] and c0 + tx < d_out else zero
            cuda.syncthreads()
            for c in range(T):
                acc += sg[ty, c] * swt[c, tx]
            cuda.syncthreads()
        if i < row_end and col0 + tx < dx.shape[1]:
            dx[i, col0 + tx] = acc

    @cuda.jit
    def mm_dw(x, g, offsets, zero, dw):
        """dw (E, d_in, d_out): block (bx, by, e), thread (tx, ty) computes dw[e, by*T+ty, bx*T+tx]."""
        e = cuda.blockIdx.z
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        a0 = cuda.blockIdx.y * T                 # first row of the dw tile (an x column)
        c0 = cuda.blockIdx.x * T                 # first column of the dw tile (a g column)
        lo = offsets[e]
        hi = offsets[e + 1]
        sx = cuda.shared.array((T, T), acc_type)  # sx[r, a] = x[r0 + r, a0 + a]
        sg = cuda.shared.array((T, T), acc_type)  # sg[r, c] = g[r0 + r, c0 + c]
        acc = zero
        for r0 in range(lo, hi, T):              # the expert's rows, T at a time, in order
            r = r0 + ty
            sx[ty, tx] = x[r, a0 + tx] if r < hi and a0 + tx < dw.shape[1] else zero
            sg[ty, tx] = g[r, c0 + tx] if r < hi and c0 + tx < dw.shape[2] else zero
            cuda.syncthreads()
            for rr in range(T):
                acc += sx[rr, ty] * sg[rr, tx]
            cuda.syncthreads()
        if a0 + ty < dw.shape[1] and c0 + tx < dw.shape[2]:
            dw[e, a0 + ty, c0 + tx] = acc

    return mm, mm_dx, mm_dw


def _row_tiles(offsets, n_rows, tile):
    """Grid height for forward/dX: an upper bound on the row tiles, sum_e ceil(n_e / tile)."""
    return max(1, ceil_div(n_rows, tile) + offsets.shape[0] - 1)


# ---- launchers (device arrays in, the output array written) --------------------------------------

def grouped_mm(x, w, b, offsets, zero, out, tile=DEFAULT_TILE):
    mm, _, _ = kernels(tile, out.dtype)
    grid = check_grid((ceil_div(out.shape[1], tile), _row_tiles(offsets, out.shape[0], tile)),
                      "tiled grouped_mm")
    has_bias = b is not None
    mm[grid, (tile, tile)](x, w, b if has_bias else w[0], has_bias, offsets, zero, out)


def grouped_mm_dx(g, w, offsets, zero, dx, tile=DEFAULT_TILE):
    _, mm_dx, _ = kernels(tile, dx.dtype)
    grid = check_grid((ceil_div(dx.shape[1], tile), _row_tiles(offsets, dx.shape[0], tile)),
                      "tiled grouped_mm_dx")
    mm_dx[grid, (tile, tile)](g, w, offsets, zero, dx)


def grouped_mm_dw(x, g, offsets, zero, dw, tile=DEFAULT_TILE):
    _, _, mm_dw = kernels(tile, dw.dtype)
    grid = check_grid((ceil_div(dw.shape[2], tile), ceil_div(dw.shape[1], tile), dw.shape[0]),
                      "tiled grouped_mm_dw")
    mm_dw[grid, (tile, tile)](x, g, offsets, zero, dw)
