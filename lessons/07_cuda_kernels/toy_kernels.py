"""Chapter 07's own small kernels and instruments; run.py imports this AFTER choosing the mode.

    where_am_i, block_map       section 1: the index arithmetic every kernel starts with
    vector_add                  section 1: the bounds guard, on a size that is no multiple of the block
    racy_count, atomic_count    section 4: a race, and the integer atomic that fixes it
    atomic_sum                  section 4: a floating-point atomic, whose order is the arrival order
    hillis_steele_trace         section 2: the scan of cuda_kernels/plan.py, step by step in NumPy
    CountingArray               section 3: counts a kernel's global-memory reads (simulator only)
    median_ms                   timings: launch, wait for the GPU, repeat, take the median
    cupy_reference_ms           the NumPy reference on CuPy arrays (cuBLAS), timed (GPU only)

Importing this module imports numba, which reads NUMBA_ENABLE_CUDASIM once, at its first import.
"""
import statistics
import time

import numpy as np
from numba import cuda


@cuda.jit
def where_am_i(block_of, thread_of, index_of):
    """One thread per element: thread (blockIdx.x, threadIdx.x) owns element i."""
    i = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x     # = cuda.grid(1)
    if i < index_of.shape[0]:          # the bounds guard: the last block is only partly used
        block_of[i] = cuda.blockIdx.x
        thread_of[i] = cuda.threadIdx.x
        index_of[i] = i


@cuda.jit
def where_am_i_unguarded(index_of):
    """The same without the guard: the spare threads of the last block write past the end."""
    i = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    index_of[i] = i


@cuda.jit
def block_map(out):
    """A 2-D launch, as the matmul kernels use: x runs along columns (the contiguous axis), y along
    rows. out[row, col] = the number of the block that owns the element."""
    col = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    row = cuda.blockIdx.y * cuda.blockDim.y + cuda.threadIdx.y
    if row < out.shape[0] and col < out.shape[1]:
        out[row, col] = cuda.blockIdx.y * cuda.gridDim.x + cuda.blockIdx.x


@cuda.jit
def vector_add(a, b, out):
    i = cuda.grid(1)                   # blockIdx.x * blockDim.x + threadIdx.x, in one call
    if i < out.shape[0]:
        out[i] = a[i] + b[i]


@cuda.jit
def racy_count(counter):
    """Every thread adds 1 with a plain read-modify-write: threads that read the same old value
    write the same new one, and all but one of their increments are lost."""
    counter[0] += 1


@cuda.jit
def atomic_count(counter):
    cuda.atomic.add(counter, 0, 1)     # read-modify-write as one indivisible step


@cuda.jit
def atomic_sum(values, total):
    """total[0] += values[i] for every i, atomically: correct, but added in ARRIVAL order."""
    i = cuda.grid(1)
    if i < values.shape[0]:
        cuda.atomic.add(total, 0, values[i])


def hillis_steele_trace(values):
    """The inclusive scan of plan.block_scan_kernel, one row per step: at step d every element
    adds the element d places to its left (if there is one). log2(n) steps for n values."""
    buf = np.asarray(values, dtype=np.int64).copy()
    steps, d = [("input", buf.copy())], 1
    while d < len(buf):
        shifted = np.concatenate([np.zeros(d, np.int64), buf[:-d]])   # every "thread" reads first,
        buf = buf + shifted                                            # then all write (the barrier)
        steps.append((f"d = {d}", buf.copy()))
        d *= 2
    return steps


class CountingArray:
    """A stand-in for a device array that counts the element reads a kernel makes.

    Only under the simulator: it passes objects that are not NumPy arrays to the kernel
    unchanged, so `x[i, a]` inside the kernel calls __getitem__ here. (A compiled kernel reads
    GPU memory directly; there, use a profiler: Nsight Compute's dram__bytes_read.)
    """

    def __init__(self, a):
        self.a = np.ascontiguousarray(a)
        self.shape, self.dtype, self.ndim = self.a.shape, self.a.dtype, self.a.ndim
        self._log = []                 # list.append is atomic under the GIL: threads can share it

    def __getitem__(self, index):
        self._log.append(1)
        return self.a[index]

    @property
    def reads(self):
        return len(self._log)


def median_ms(fn, repeats, warmup=1):
    """Median wall time of fn() in milliseconds. A launch returns before the GPU is done (it only
    queues the kernel), so every timing waits for the GPU with cuda.synchronize()."""
    for _ in range(warmup):            # the first call compiles the kernel: not timed
        fn()
    cuda.synchronize()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def cupy_reference_ms(REF, x, g, w, b, offsets):
    """The NumPy reference on CuPy arrays (one cuBLAS matmul per expert), ms per op; {} without CuPy."""
    try:
        from tinysparse.engine import backend     # the one module that imports cupy
        if not backend.cuda_available():
            print("  (CuPy is not installed: no cuBLAS column; pip install -e '.[cuda]')")
            return {}
        cp = backend.get_xp("cuda")
        cx, cg, cw, cb = (cp.asarray(a) for a in (x, g, w, b))
        return {op: median_ms(fn, 10) for op, fn in [
            ("forward", lambda: REF.grouped_mm(cx, cw, cb, offsets)),
            ("dX", lambda: REF.grouped_mm_dx(cg, cw, offsets)),
            ("dW", lambda: REF.grouped_mm_dw(cx, cg, offsets, with_bias=False))]}
    except Exception as exc:                 # a timing column is not worth failing the chapter for
        print(f"  (no CuPy column: {exc.__class__.__name__}: {str(exc)[:120]})")
        return {}
