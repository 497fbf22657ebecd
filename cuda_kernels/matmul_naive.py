"""Grouped matmul, the naive way: one thread per output element, straight from global memory.

The buffer's rows are grouped by expert: rows [offsets[e], offsets[e+1]) belong to expert e.

    forward:  out[i, j] = sum_a x[i, a] * w[e, a, j] + b[e, j]      e = expert of row i
    dX:       dx[i, a]  = sum_j g[i, j] * w[e, a, j]                 (g W_e^T)
    dW:       dw[e, a, j] = sum over e's rows i of x[i, a] * g[i, j] (x_e^T g_e)
    db:       db[e, j]  = sum over e's rows i of g[i, j]

Launch: a 2-D grid of 2-D blocks (host.launch_2d), thread (x, y) of block (bx, by) computes output
element (row = by*blockDim.y + y, column = bx*blockDim.x + x). Threads past the edge of the output
(the last blocks are only partly used when the size is not a multiple of the block) return.

This is the reference the tiled kernels (matmul_tiled.py) are checked against: simple enough to
trust by reading. It is slow because every thread reads its whole row of x and column of w from
global memory (DRAM, hundreds of cycles a load) and neighbouring threads re-read the same values:
2 flops per 2 loads. Tiling reuses each loaded value TILE times from shared memory.

dW and db need no atomics: each output element has one thread, which walks its expert's rows in
order. (The common alternative, one thread per input row adding into dW with atomicAdd, races:
the sum's order, and with it the last bits, would change every run.)
"""
from numba import cuda

from .host import launch_2d


@cuda.jit(device=True)
def expert_of_row(offsets, i):
    """The expert e with offsets[e] <= i < offsets[e+1], by binary search over the E+1 offsets.

    A device function: compiled into (inlined in) the kernels that call it, callable only from
    the GPU. Empty experts (offsets[e] == offsets[e+1]) are skipped by the search's invariant,
    offsets[lo] <= i < offsets[hi].
    """
    lo = 0
    hi = offsets.shape[0] - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if offsets[mid] <= i:
            lo = mid
        else:
            hi = mid
    return lo


@cuda.jit
def mm_kernel(x, w, b, has_bias, offsets, zero, out):
    """out (S, d_out) = x (S, d_in) @ w[e] (+ b[e]) per row; thread x = column j, y = row i."""
    j, i = cuda.grid(2)                      # blockIdx * blockDim + threadIdx, in x and y
    if i >= out.shape[0] or j >= out.shape[1]:
        return
    e = expert_of_row(offsets, i)
    acc = zero
    for a in range(x.shape[1]):
        acc += x[i, a] * w[e, a, j]            # neighbouring threads (j, j+1): neighbouring w
    if has_bias:
        acc += b[e, j]
    out[i, j] = acc


@cuda.jit
def mm_dx_kernel(g, w, offsets, zero, dx):
    """dx (S, d_in) = g (S, d_out) @ w[e]^T per row; thread x = column a, y = row i."""
    a, i = cuda.grid(2)                      # blockIdx * blockDim + threadIdx, in x and y
    if i >= dx.shape[0] or a >= dx.shape[1]:
        return
    e = expert_of_row(offsets, i)
    acc = zero
    for j in range(g.shape[1]):
        acc += g[i, j] * w[e, a, j]
    dx[i, a] = acc


@cuda.jit
def mm_dw_kernel(x, g, offsets, zero, dw):
    """dw (E, d_in, d_out): grid z = expert e; thread x = column j, y = row a of dw[e].

    An expert with no rows gets zeros (the loop does not run).
    """
    e = cuda.blockIdx.z
    j, a = cuda.grid(2)                      # blockIdx * blockDim + threadIdx, in x and y
    if a >= dw.shape[1] or j >= dw.shape[2]:
        return
    acc = zero
    for i in range(offsets[e], offsets[e + 1]):   # the expert's rows, in order
        acc += x[i, a] * g[i, j]
    dw[e, a, j] = acc


@cuda.jit
def bias_grad_kernel(g, offsets, zero, db):
    """db (E, d_out)[e, j] = sum of g[i, j] over expert e's rows; thread x = column j, y = expert e."""
    j, e = cuda.grid(2)                      # blockIdx * blockDim + threadIdx, in x and y
    if e >= db.shape[0] or j >= db.shape[1]:
        return
    acc = zero
    for i in range(offsets[e], offsets[e + 1]):
        acc += g[i, j]
    db[e, j] = acc


# ---- launchers (device arrays in, the output array written) --------------------------------------
# `tile` is the side of the square thread block here; the tiled module uses the same keyword for
# its tile size, so the dispatch backend can call either module the same way.

def grouped_mm(x, w, b, offsets, zero, out, tile=16):
    grid, block = launch_2d(out.shape[0], out.shape[1], tile)
    has_bias = b is not None
    mm_kernel[grid, block](x, w, b if has_bias else w[0], has_bias, offsets, zero, out)


def grouped_mm_dx(g, w, offsets, zero, dx, tile=16):
    grid, block = launch_2d(dx.shape[0], dx.shape[1], tile)
    mm_dx_kernel[grid, block](g, w, offsets, zero, dx)


def grouped_mm_dw(x, g, offsets, zero, dw, tile=16):
    (gx, gy), block = launch_2d(dw.shape[1], dw.shape[2], tile)
    mm_dw_kernel[(gx, gy, dw.shape[0]), block](x, g, offsets, zero, dw)


def bias_grad(g, offsets, zero, db, tile=16):
    grid, block = launch_2d(db.shape[0], db.shape[1], tile)
    bias_grad_kernel[grid, block](g, offsets, zero, db)
