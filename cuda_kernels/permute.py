"""Permute (gather) the token rows into the expert-grouped buffer, and its backward (scatter).

    gather:   buffer[i]  = x[token_index[i]]                      i = 0..S-1
    scatter:  dx[t]      = sum_j g[slot_position[t, j]]           j = 0..k-1, in that order

Both are row kernels (host.launch_rows): a block of (col_threads, rows_per_block) threads;
threadIdx.y picks a row, threadIdx.x strides over its columns. A warp of 32 threads therefore
copies 32 neighbouring floats of one row at a time (coalesced loads and stores), and the data
movement, not arithmetic, is all these kernels do.

Why scatter needs no atomics: the natural way to write gather's backward is "for every buffer row
i, add g[i] into dx[token_index[i]]", and two rows of one token would then race (an atomic
float add fixes the race but not the order, so the bits would change from run to run). Turned
around, one thread owns dx[t] and pulls its k rows through slot_position, summing them in the
fixed order j = 0..k-1: no two threads write the same element, and no atomics are needed.
"""
from numba import cuda

from .host import launch_rows


@cuda.jit
def gather_kernel(x, token_index, buffer):
    """buffer (S, C)[i, :] = x[token_index[i], :]."""
    i = cuda.blockIdx.x * cuda.blockDim.y + cuda.threadIdx.y    # this thread's buffer row
    if i >= buffer.shape[0]:
        return
    t = token_index[i]
    for c in range(cuda.threadIdx.x, buffer.shape[1], cuda.blockDim.x):
        buffer[i, c] = x[t, c]


@cuda.jit
def scatter_kernel(g, slot_position, zero, dx):
    """dx (T, C)[t, :] = sum over j of g[slot_position[t, j], :]; a dropped slot (-1) adds nothing."""
    t = cuda.blockIdx.x * cuda.blockDim.y + cuda.threadIdx.y    # this thread's token
    if t >= dx.shape[0]:
        return
    for c in range(cuda.threadIdx.x, dx.shape[1], cuda.blockDim.x):
        acc = zero
        for j in range(slot_position.shape[1]):                 # fixed order: deterministic
            row = slot_position[t, j]
            if row >= 0:
                acc += g[row, c]
        dx[t, c] = acc


def gather(x, token_index, buffer, col_threads=32, rows_per_block=8):
    """Launch gather_kernel on device arrays; buffer (S, C) is written."""
    grid, block = launch_rows(buffer.shape[0], buffer.shape[1], col_threads, rows_per_block)
    gather_kernel[grid, block](x, token_index, buffer)


def scatter(g, slot_position, zero, dx, col_threads=32, rows_per_block=8):
    """Launch scatter_kernel on device arrays; dx (T, C) is written."""
    grid, block = launch_rows(dx.shape[0], dx.shape[1], col_threads, rows_per_block)
    scatter_kernel[grid, block](g, slot_position, zero, dx)
