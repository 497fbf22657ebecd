"""dispatch_backend='numba': the dispatch interface of NumpyDispatch on compiled CPU kernels.

The kernels live in numba_kernels.py; this class gives them NumpyDispatch's signatures
(plan, gather, scatter, grouped_mm, grouped_mm_dx, grouped_mm_dw, combine, combine_backward)
and allocates their outputs. The results match the NumPy reference up to rounding (another
BLAS call pattern sums in another order) and are bitwise repeatable: same inputs, same bits.

Parallel or serial? Measured on 2 cores (MoE layer forward+backward, T=1024 tokens, C=128,
median ms; "BLAS" is how many threads NumPy's own matmuls use):

                            E=8 top-2 d256    E=64 top-8 d64
    numpy,  BLAS 2                8.3              15.3
    numba serial,   BLAS 2        8.0              13.1
    numba parallel, BLAS 2       ~23               ~24     (the thread pools fight)
    numpy,  BLAS 1               11.7              18.7
    numba parallel, BLAS 1        8.7              11.9

Numba's workers pay off only when NumPy's BLAS runs no threads of its own: those keep spinning
for a while after every matmul elsewhere in the model, and Numba's barrier then waits on
descheduled workers. So the kernels run in parallel when NumPy's BLAS is single-threaded
(OPENBLAS_NUM_THREADS=1, threadpoolctl, a 1-core machine) and Numba has more than one thread;
otherwise serially, with the grouped matmuls handed to NumPy's threaded BLAS, one call per
expert segment.
"""
import contextlib
import functools

import numpy as np

import numba

from . import numba_kernels as K
from .dispatch import DispatchPlan, NumpyDispatch


@functools.lru_cache(maxsize=None)
def _blas_controller():
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:                 # without threadpoolctl: correct, just slower on many cores
        return None
    return ThreadpoolController()


def numpy_blas_threads():
    """Threads of the BLAS NumPy itself calls (None when threadpoolctl cannot tell)."""
    controller = _blas_controller()
    if controller is None:
        return None
    libs = [lib for lib in controller.select(user_api="blas").lib_controllers
            if "numpy" in lib.filepath]
    return max((lib.num_threads for lib in libs), default=None)


def parallel_pays():
    """The rule measured above: parallel when NumPy's BLAS runs one thread and Numba more."""
    return numba.get_num_threads() > 1 and numpy_blas_threads() == 1


@contextlib.contextmanager
def one_blas_thread():
    """BLAS limited to one thread while Numba's prange workers each call it: otherwise every
    worker's GEMM starts BLAS threads of its own and they all fight for the same cores."""
    controller = _blas_controller()
    if controller is None:
        yield
        return
    with controller.limit(limits=1, user_api="blas"):
        yield


def _c(a, dtype=None):
    """A C-contiguous array (a no-op when it already is one), of `dtype` when given."""
    return np.ascontiguousarray(a, dtype=dtype)


class NumbaDispatch:
    """parallel: True or False forces a flavour; None (default) decides per call (parallel_pays)."""
    name = "numba"

    def __init__(self, chunk_rows=K.CHUNK_ROWS, parallel=None):
        self.chunk_rows = chunk_rows          # rows per grouped-matmul task
        self.parallel = parallel

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

    def gather(self, x, token_index):
        out = np.empty((token_index.shape[0], x.shape[1]), dtype=x.dtype)
        self._kernels().gather_kernel(_c(x), _c(token_index, np.int64), out)
        return out

    def scatter(self, g, slot_position):
        out = np.empty((slot_position.shape[0], g.shape[1]), dtype=g.dtype)
        self._kernels().scatter_kernel(_c(g), _c(slot_position, np.int64), out)
        return out

    def _tasks(self, offsets):
        return K.chunks(_c(offsets, np.int64), self.chunk_rows)

    # ---- grouped matmul: parallel kernels over row chunks, or NumPy's BLAS per segment ----------
    def grouped_mm(self, x, w, b, offsets):
        if not self._parallel():              # NumPy's threaded BLAS, one call per segment
            return NumpyDispatch.grouped_mm(self, x, w, b, offsets)
        dtype = np.result_type(x, w) if b is None else np.result_type(x, w, b)
        out = np.empty((x.shape[0], w.shape[2]), dtype=dtype)
        bias = np.zeros((w.shape[0], w.shape[2]), dtype=dtype) if b is None else _c(b, dtype)
        with one_blas_thread():
            K.PARALLEL.grouped_mm_kernel(_c(x, dtype), _c(w, dtype), bias, b is not None,
                                         self._tasks(offsets), out)
        return out

    def grouped_mm_dx(self, g, w, offsets):
        if not self._parallel():
            return NumpyDispatch.grouped_mm_dx(self, g, w, offsets)
        dtype = np.result_type(g, w)
        out = np.empty((g.shape[0], w.shape[1]), dtype=dtype)
        with one_blas_thread():
            K.PARALLEL.grouped_mm_dx_kernel(_c(g, dtype), _c(w, dtype), self._tasks(offsets), out)
        return out

    def grouped_mm_dw(self, x, g, offsets, with_bias=True):
        if not self._parallel():
            return NumpyDispatch.grouped_mm_dw(self, x, g, offsets, with_bias)
        dtype = np.result_type(x, g)
        E = offsets.shape[0] - 1
        dw = np.empty((E, x.shape[1], g.shape[1]), dtype=dtype)
        db = np.empty((E, g.shape[1]), dtype=dtype)
        with one_blas_thread():
            K.PARALLEL.grouped_mm_dw_kernel(_c(x, dtype), _c(g, dtype), _c(offsets, np.int64),
                                            with_bias, dw, db)
        return dw, (db if with_bias else None)

    # ---- combine and its backward ---------------------------------------------------------------
    def combine(self, y, gates, slot_position):
        dtype = np.result_type(y, gates)
        out = np.empty((slot_position.shape[0], y.shape[1]), dtype=dtype)
        self._kernels().combine_kernel(_c(y, dtype), _c(gates, dtype),
                                       _c(slot_position, np.int64), out)
        return out

    def combine_backward(self, g, y, gates, slot_position):
        dtype = np.result_type(g, y, gates)
        dy = np.zeros((y.shape[0], y.shape[1]), dtype=dtype)
        dgates = np.empty(gates.shape, dtype=dtype)
        self._kernels().combine_backward_kernel(_c(g, dtype), _c(y, dtype), _c(gates, dtype),
                                                _c(slot_position, np.int64), dy, dgates)
        return dy, dgates
