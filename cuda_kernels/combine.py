"""Un-permute and combine: every token adds up its k experts' answers, weighted by the gates.

    combine:            out[t]        = sum_j gates[t, j] * y[slot(t, j)]     j = 0..k-1 in order
    combine_backward:   dy[slot(t,j)] = gates[t, j] * g[t]                    (plain writes)
                        dgates[t, j]  = sum_c g[t, c] * y[slot(t, j), c]      c = 0..C-1 in order

No floating-point atomics anywhere, so the results are bitwise the same on every run:

- combine is token-major: one thread row per token t pulls its k rows of y; each output element
  has exactly one writer, and its k terms are added in the fixed order j = 0..k-1.
- dy: every kept buffer row belongs to exactly one (t, j) slot, so each dy row is written once,
  by the thread row of its token. A dropped slot (slot = -1) writes nothing and reads zeros.
- dgates: a dot product per (t, j), summed by one thread over c in order. (A faster version
  splits the C products over a warp and adds them with a shuffle tree: still a fixed order, so
  still deterministic, but the order differs from this one and so do the last bits.)
"""
from numba import cuda

from .host import launch_1d, launch_rows


@cuda.jit
def combine_kernel(y, gates, slot_position, zero, out):
    """Row kernel (host.launch_rows): out (T, C)[t, c] = sum_j gates[t, j] * y[slot(t, j), c]."""
    t = cuda.blockIdx.x * cuda.blockDim.y + cuda.threadIdx.y
    if t >= out.shape[0]:
        return
    for c in range(cuda.threadIdx.x, out.shape[1], cuda.blockDim.x):
        acc = zero
        for j in range(slot_position.shape[1]):
            row = slot_position[t, j]
            if row >= 0:                            # a dropped slot adds nothing
                acc += gates[t, j] * y[row, c]
        out[t, c] = acc


@cuda.jit
def combine_dy_kernel(g, gates, slot_position, dy):
    """Row kernel over tokens: dy[slot(t, j), c] = gates[t, j] * g[t, c] for every kept slot."""
    t = cuda.blockIdx.x * cuda.blockDim.y + cuda.threadIdx.y
    if t >= g.shape[0]:
        return
    for j in range(slot_position.shape[1]):
        row = slot_position[t, j]
        if row >= 0:
            gate = gates[t, j]
            for c in range(cuda.threadIdx.x, g.shape[1], cuda.blockDim.x):
                dy[row, c] = gate * g[t, c]


@cuda.jit
def combine_dgates_kernel(g, y, slot_position, zero, dgates):
    """One thread per slot (t, j), i = t*k + j: dgates[t, j] = g[t] . y[slot(t, j)]; 0 if dropped."""
    i = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    k = slot_position.shape[1]
    if i >= slot_position.shape[0] * k:
        return
    t = i // k
    j = i - t * k
    row = slot_position[t, j]
    acc = zero
    if row >= 0:
        for c in range(g.shape[1]):
            acc += g[t, c] * y[row, c]
    dgates[t, j] = acc


def combine(y, gates, slot_position, zero, out, col_threads=32, rows_per_block=8):
    grid, block = launch_rows(out.shape[0], out.shape[1], col_threads, rows_per_block)
    combine_kernel[grid, block](y, gates, slot_position, zero, out)


def combine_backward(g, y, gates, slot_position, zero, dy, dgates,
                     col_threads=32, rows_per_block=8, threads=128):
    """dy (S, C) and dgates (T, k) are written (every row of dy belongs to one kept slot);
    zero has dgates' dtype."""
    grid, block = launch_rows(g.shape[0], g.shape[1], col_threads, rows_per_block)
    combine_dy_kernel[grid, block](g, gates, slot_position, dy)
    combine_dgates_kernel[launch_1d(gates.shape[0] * gates.shape[1], threads)](
        g, y, slot_position, zero, dgates)
