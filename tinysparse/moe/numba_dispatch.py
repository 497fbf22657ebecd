"""dispatch_backend='numba': the dispatch interface of NumpyDispatch on compiled CPU kernels.

The kernels live in numba_kernels.py; this class gives them NumpyDispatch's signatures
(plan, gather, scatter, grouped_mm, grouped_mm_dx, grouped_mm_dw, combine, combine_backward)
and allocates their outputs. The results match the NumPy reference up to rounding (another
BLAS call pattern sums in another order) and are bitwise repeatable: same inputs and the same
BLAS settings, same bits, whatever Numba's thread count.

Two flavours, chosen per call by how the process runs NumPy's BLAS (parallel_pays):

- serial: each kernel is one loop on the calling thread, and the grouped matmuls are NumPy's
  own (threaded) BLAS, one call per expert segment, writing straight into the output.
- parallel: every kernel is a prange loop over Numba's threads; the grouped matmuls are cut into
  tasks of about 256 rows, each one single-threaded GEMM (np.dot: scipy's BLAS) inside the loop.

Why not always parallel? NumPy's OpenBLAS keeps its workers spinning for about 0.1 s after each
threaded matmul anywhere in the model; on 2 cores a Numba worker then shares a core with a
spinning thread, and every barrier waits on it (OPENBLAS_THREAD_TIMEOUT=4 stops the spinning, but
then every NumPy matmul wakes sleeping threads: slower overall). Measured on 2 cores (MoE layer
forward+backward, T=1024, n_embd 128, float32, median ms of 3 runs; "BLAS" = threads of NumPy's
matmuls):

                                 dense FFN 4C   E=8 top-2 d256   E=64 top-8 d64
    BLAS 2, numpy backend            6.1             9.1              16.6
    BLAS 2, numba serial                             8.3              13.0
    BLAS 2, numba parallel                         20-90             29-93   (the pools fight)
    BLAS 1, numpy backend            9.1            11.6              18.9
    BLAS 1, numba serial                            11.1              16.1
    BLAS 1, numba parallel                           8.4              11.9

So: parallel when NumPy's BLAS runs one thread (OPENBLAS_NUM_THREADS=1, threadpoolctl, a 1-core
machine) and Numba has more than one; otherwise serial, where NumPy's BLAS threads do the GEMMs.
"""
import functools
import os

import numba
import numpy as np

from . import numba_kernels as K
from .dispatch import DispatchPlan, expert_segments


# ---- BLAS threads --------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _blas_libs():
    """(NumPy's BLAS, the BLAS that np.dot inside a kernel calls) as threadpoolctl controllers.

    NumPy wheels bundle their own OpenBLAS; Numba's np.dot calls scipy's (scipy.linalg.cython_blas),
    a second library with a second thread pool. scipy's is imported before the controller looks:
    a controller made earlier never sees it, and never limits it. With one shared BLAS (conda,
    MKL) both lists hold the same library.
    """
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:                 # without threadpoolctl: correct, just never parallel
        return [], []
    import scipy.linalg.cython_blas  # noqa: F401
    libs = ThreadpoolController().select(user_api="blas").lib_controllers
    numpy_dir = os.path.realpath(os.path.dirname(np.__file__))   # wheels: BLAS in numpy.libs
    numpy_libs = [lib for lib in libs if os.path.realpath(lib.filepath).startswith(numpy_dir)] or libs
    kernel_libs = [lib for lib in libs if lib not in numpy_libs] or libs
    return numpy_libs, kernel_libs


def numpy_blas_threads():
    """Threads of the BLAS NumPy itself calls (None when threadpoolctl cannot tell)."""
    return max((lib.num_threads for lib in _blas_libs()[0]), default=None)


def parallel_pays():
    """The rule measured above: parallel when NumPy's BLAS runs one thread and Numba more."""
    return numpy_blas_threads() == 1 and numba.get_num_threads() > 1


class _OneBlasThread:
    """BLAS held to one thread while Numba's workers each call it: otherwise every worker's GEMM
    starts BLAS threads of its own and they all fight for the same cores (10-80x slower). Only
    libraries that run more than one thread are touched: a no-op costs ~1 us, threadpoolctl's
    threadpool_limits ~10 us a call."""

    def __enter__(self):
        self.saved = [(lib, lib.num_threads) for lib in _blas_libs()[1] if lib.num_threads != 1]
        for lib, _ in self.saved:
            lib.set_num_threads(1)

    def __exit__(self, *exc):
        for lib, n in self.saved:
            lib.set_num_threads(n)


def _c(a, dtype=None):
    """A C-contiguous array (a no-op when it already is one), of `dtype` when given."""
    return np.ascontiguousarray(a, dtype=dtype)


class NumbaDispatch:
    """parallel: True or False forces a flavour; None (default) decides per call (parallel_pays)."""
    name = "numba"

    def __init__(self, parallel=None, chunk_rows=K.CHUNK_ROWS):
        self.parallel = parallel
        self.chunk_rows = chunk_rows          # rows per grouped-matmul task (parallel flavour)

    def _parallel(self):
        return parallel_pays() if self.parallel is None else self.parallel

    def _kernels(self):
        return K.PARALLEL if self._parallel() else K.SERIAL

    def plan(self, expert_ids, n_expert, capacity=None):
        T, k = expert_ids.shape
        counts, offsets, slot_position, rank, token_index = K.plan_kernel(
            _c(expert_ids.reshape(-1), np.int64), n_expert, k, -1 if capacity is None else capacity)
        return DispatchPlan(token_index=token_index, slot_position=slot_position.reshape(T, k),
                            offsets=offsets, counts=counts, rank=rank.reshape(T, k),
                            capacity=capacity)

    # ---- gather (permute) and its backward ------------------------------------------------------
    def gather(self, x, token_index):
        out = np.empty((token_index.shape[0], x.shape[1]), dtype=x.dtype)
        self._kernels().gather_kernel(_c(x), _c(token_index, np.int64), out)
        return out

    def scatter(self, g, slot_position):
        out = np.empty((slot_position.shape[0], g.shape[1]), dtype=g.dtype)
        self._kernels().scatter_kernel(_c(g), _c(slot_position, np.int64), out)
        return out

    # ---- grouped matmul: NumPy's BLAS per segment, or tasks inside one parallel kernel ----------
    def grouped_mm(self, x, w, b, offsets):
        dtype = np.result_type(x, w)                             # as the reference: b is cast
        out = np.empty((x.shape[0], w.shape[2]), dtype=dtype)
        offsets = _c(offsets, np.int64)
        if self._parallel():
            bias = np.zeros((w.shape[0], w.shape[2]), dtype=dtype) if b is None else _c(b, dtype)
            with _OneBlasThread():
                K.PARALLEL.grouped_mm_kernel(_c(x, dtype), _c(w, dtype), bias, b is not None,
                                             K.chunks(offsets, self.chunk_rows), out)
            return out
        for e, lo, hi in expert_segments(offsets):
            np.matmul(x[lo:hi], w[e], out=out[lo:hi])            # (n_e, d_in) @ (d_in, d_out)
        if b is not None:                                        # one pass, not E calls
            K.SERIAL.add_bias_kernel(out, _c(b, dtype), offsets)
        return out

    def grouped_mm_dx(self, g, w, offsets):
        # y_e = x_e W_e  =>  dx_e = g_e W_e^T
        dtype = np.result_type(g, w)
        dx = np.empty((g.shape[0], w.shape[1]), dtype=dtype)
        offsets = _c(offsets, np.int64)
        if self._parallel():
            with _OneBlasThread():
                K.PARALLEL.grouped_mm_dx_kernel(_c(g, dtype), _c(w, dtype),
                                                K.chunks(offsets, self.chunk_rows), dx)
            return dx
        for e, lo, hi in expert_segments(offsets):
            np.matmul(g[lo:hi], w[e].T, out=dx[lo:hi])           # a transposed view, no copy
        return dx

    def grouped_mm_dw(self, x, g, offsets, with_bias=True):
        # dW_e = x_e^T g_e, db_e = sum of g_e's rows; an expert that got no rows gets zeros.
        dtype = np.result_type(x, g)
        E = offsets.shape[0] - 1
        dw = np.empty((E, x.shape[1], g.shape[1]), dtype=dtype)
        db = np.empty((E, g.shape[1]), dtype=dtype) if with_bias else None
        offsets = _c(offsets, np.int64)
        parallel = self._parallel()
        if parallel:
            with _OneBlasThread():
                K.PARALLEL.grouped_mm_dw_kernel(_c(x, dtype), _c(g, dtype), offsets, dw)
        else:
            for e, lo, hi in expert_segments(offsets):
                np.matmul(x[lo:hi].T, g[lo:hi], out=dw[e])       # (d_in, n_e) @ (n_e, d_out)
            dw[np.diff(offsets) == 0] = 0.0
        if with_bias:
            (K.PARALLEL if parallel else K.SERIAL).bias_grad_kernel(_c(g, dtype), offsets, db)
        return dw, db

    # ---- combine and its backward ---------------------------------------------------------------
    def combine(self, y, gates, slot_position):
        dtype = np.result_type(y, gates)
        out = np.empty((slot_position.shape[0], y.shape[1]), dtype=dtype)
        self._kernels().combine_kernel(_c(y, dtype), _c(gates, dtype),
                                       _c(slot_position, np.int64), out)
        return out

    def combine_backward(self, g, y, gates, slot_position):
        dtype = np.result_type(g, y, gates)
        dy = np.empty((y.shape[0], y.shape[1]), dtype=dtype)   # every row is some kept slot's
        dgates = np.empty(gates.shape, dtype=dtype)
        self._kernels().combine_backward_kernel(_c(g, dtype), _c(y, dtype), _c(gates, dtype),
                                                _c(slot_position, np.int64), dy, dgates)
        return dy, dgates
