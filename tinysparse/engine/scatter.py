"""full[index] += values, where an index may repeat: the backward of every gather.

An embedding lookup reads a row once per occurrence of its token, so its backward must ADD all
those rows' gradients into the one weight row. np.add.at does exactly that, one element after
another in index order: deterministic. CuPy's add.at (and cupyx.scatter_add) run on the GPU with
floating-point atomicAdd: the repeats land in whatever order the threads happen to run, and since
(a + b) + c != a + (b + c) in floating point, the result changes from run to run. tinysparse
promises the same numbers for the same seed, so on a GPU it takes one of two atomic-free routes:

- rows of a table (index is one integer array into axis 0, the embedding case): a one-hot
  matmul, dW = onehot(index)^T @ dY. One GEMM; cuBLAS gives bitwise-repeatable results.
- anything else: sort the target positions (stably), give every element its rank among the
  elements that hit the same position (a scan, as in MoE dispatch), and add rank 0 of every
  position, then rank 1, ...: inside one round no two elements collide, so each round is a
  plain indexed add, and the rounds run in a fixed order.

Both routes are array-module generic, so the tests check them on NumPy against np.add.at.
"""
import numpy as np

from .backend import array_module
from .compiled import kernels as compiled_kernels

ONE_HOT_LIMIT = 1 << 26     # one-hot matrix elements (256 MB in float32) before we sort instead
compiled = True             # rows of a table through scatter_kernels.py on the CPU (np.add.at's bits)


def index_add(full, index, values):
    """full[index] += values with repeated indices accumulated, deterministically; in place."""
    xp = array_module(values)
    if xp is np:
        if not _add_rows_compiled(full, index, values):
            np.add.at(full, index, values)          # sequential in index order: deterministic
    elif _is_row_index(index) and index.size * full.shape[0] <= ONE_HOT_LIMIT:
        index_add_one_hot(full, index, values)
    else:
        index_add_by_rank(full, index, values)


def _add_rows_compiled(full, index, values):
    """True when the rows case (an integer array into axis 0, values of shape index.shape +
    full.shape[1:], all C-contiguous, one float dtype) was done by the compiled loop; False
    leaves the work, and any IndexError, to np.add.at."""
    if not (compiled and _is_row_index(index) and full.ndim >= 1
            and values.shape == index.shape + full.shape[1:]):
        return False
    kernels = compiled_kernels(".scatter_kernels", full, values)
    if not kernels:
        return False
    D = int(np.prod(full.shape[1:]))
    return kernels.index_add_rows(full.reshape(full.shape[0], D),                # (n, D) view
                                  np.ascontiguousarray(index, dtype=np.int64).reshape(-1),   # (N,)
                                  values.reshape(-1, D))                        # (N, D)


def _is_row_index(index):
    return not isinstance(index, tuple) and hasattr(index, "dtype") and index.dtype.kind in "iu"


def index_add_one_hot(full, rows, values):
    """full[rows] += values for an integer array `rows` into axis 0, as one matmul."""
    xp = array_module(values)
    n = full.shape[0]
    rows = rows.reshape(-1).astype(xp.int64, copy=False)                 # (N,); uint8 ids too
    rows = xp.where(rows < 0, rows + n, rows)                            # NumPy's negative indices
    g = values.reshape(rows.shape[0], int(np.prod(full.shape[1:])))    # (N, D): D = row size
    one_hot = (xp.arange(n)[:, None] == rows[None, :]).astype(g.dtype)   # (n, N): 1 where row r is read
    full += (one_hot @ g).reshape(full.shape)                            # (n, D) -> full's shape


def index_add_by_rank(full, index, values):
    """full[index] += values for any index NumPy accepts: repeats added one rank at a time.
    `full` must be C-contiguous (the adds go through a flat view of it)."""
    if not full.flags.c_contiguous:
        raise ValueError("index_add_by_rank needs a C-contiguous target array")
    xp = array_module(values)
    # the flat position in `full` of every element of values (same shape as values)
    positions = xp.arange(full.size).reshape(full.shape)[index]
    positions = xp.broadcast_to(positions, values.shape).reshape(-1)     # (N,)
    flat_values = xp.broadcast_to(values, values.shape).reshape(-1)      # (N,)
    order = xp.argsort(positions, kind="stable")                         # equal positions stay in order
    pos, val = positions[order], flat_values[order]
    if pos.size == 0:
        return
    # rank among equal positions = index in sorted order - index where the run of equals starts
    run_start = xp.searchsorted(pos, pos, side="left")                   # (N,) first of each run
    rank = xp.arange(pos.shape[0]) - run_start
    rounds = int(rank.max()) + 1               # the one wait for a GPU: how many rounds there are
    # a round adds the elements of one rank; the others are sent to a spare last element (thrown
    # away), not picked by a boolean mask, whose result's size a GPU would have to report
    padded = xp.concatenate([full.reshape(-1), xp.zeros(1, dtype=full.dtype)])
    spare = full.size
    for r in range(rounds):                                              # rank 0 everywhere, then 1, ...
        take = rank == r
        padded[xp.where(take, pos, spare)] += xp.where(take, val, val.dtype.type(0))
    full[...] = padded[:-1].reshape(full.shape)
