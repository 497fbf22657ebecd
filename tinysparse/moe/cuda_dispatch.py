"""dispatch_backend='cuda': NumpyDispatch's interface on the Numba CUDA kernels of cuda_kernels/.

    from tinysparse.moe.cuda_dispatch import CudaDispatch
    backend = CudaDispatch(matmul="tiled", tile=16)       # or matmul="naive"
    MoE(..., dispatch_backend="cuda")                      # the registry makes CudaDispatch()

Every method takes the arrays NumpyDispatch takes and returns the same results (the plan exactly;
floats up to rounding, since sums run in another order than NumPy's BLAS). Arrays may be

- CuPy arrays (a real GPU): the kernels work on them in place, zero-copy, and return CuPy arrays;
- NumPy arrays: copied to the device and back, NumPy arrays returned. On a real GPU that is two
  PCIe trips per call; under the CUDA simulator (NUMBA_ENABLE_CUDASIM=1) it is how the whole MoE
  layer runs forward and backward on the CPU, so CI tests every kernel without a GPU.

Which kernels, and how big their blocks are, is set here once (see __init__). Under the simulator
every GPU thread is a Python thread (~150 us each), so the defaults there are smaller: a tile of 4
and one thread per row. The results do not depend on these settings beyond rounding.
"""
import numpy as np

from cuda_kernels import combine as K_combine
from cuda_kernels import matmul_naive, matmul_tiled, permute
from cuda_kernels import host
from cuda_kernels import plan as K_plan
from cuda_kernels.host import SIMULATED, Outputs, device_view, simulator_paced, zero_of

from .dispatch import DispatchPlan

MATMULS = {"naive": matmul_naive, "tiled": matmul_tiled}


def compile_problem():
    """None when Numba compiles CUDA kernels here, else why, in one line naming the fix
    (cuda_kernels.host.compile_problem: one trivial kernel compiled, once per process)."""
    return host.compile_problem()

# (tile, col_threads, rows_per_block, plan_chunk): a GPU's and the simulator's defaults
GPU_DEFAULTS = dict(tile=16, col_threads=32, rows_per_block=8, plan_chunk=K_plan.DEFAULT_CHUNK)
SIM_DEFAULTS = dict(tile=4, col_threads=1, rows_per_block=16, plan_chunk=16)


def _result_type(*arrays):
    return np.result_type(*(a.dtype for a in arrays))


class CudaDispatch:
    """The dispatch primitives as Numba CUDA kernels.

    matmul          'tiled' (shared-memory tiles, matmul_tiled.py) or 'naive' (one thread per
                    output element, matmul_naive.py)
    tile            tiled: the tile side (threads per block = tile**2); naive: the block side
    col_threads     threads that share one row in the row kernels (gather, scatter, combine)
    rows_per_block  rows a block of those kernels handles
    plan_chunk      slots per thread in the plan's histogram and placement kernels
    (None: the GPU's defaults, or the simulator's when NUMBA_ENABLE_CUDASIM=1)
    """
    name = "cuda"

    def __init__(self, matmul="tiled", tile=None, col_threads=None, rows_per_block=None,
                 plan_chunk=None):
        if matmul not in MATMULS:
            raise ValueError(f"CudaDispatch matmul={matmul!r} is invalid: use 'tiled' or 'naive'")
        problem = compile_problem()              # a broken numba-cuda: say so now, in one line
        if problem is not None:                  # (get_backend turns it into its ValueError)
            raise ImportError(problem)
        given = dict(tile=tile, col_threads=col_threads, rows_per_block=rows_per_block,
                     plan_chunk=plan_chunk)
        defaults = SIM_DEFAULTS if SIMULATED else GPU_DEFAULTS
        cfg = {k: defaults[k] if v is None else int(v) for k, v in given.items()}
        for k, v in cfg.items():
            if v < 1:
                raise ValueError(f"CudaDispatch {k}={v} is invalid: it must be an integer >= 1")
        # a block holds at most 1024 threads on every CUDA GPU so far
        if cfg["tile"] > 32 or cfg["col_threads"] * cfg["rows_per_block"] > 1024:
            raise ValueError(f"CudaDispatch tile={cfg['tile']}, col_threads={cfg['col_threads']}, "
                             f"rows_per_block={cfg['rows_per_block']} is invalid: a block holds at "
                             f"most 1024 threads (tile <= 32, col_threads * rows_per_block <= 1024)")
        self.matmul = matmul
        self.mm = MATMULS[matmul]
        self.tile, self.col_threads = cfg["tile"], cfg["col_threads"]
        self.rows_per_block, self.plan_chunk = cfg["rows_per_block"], cfg["plan_chunk"]

    def __repr__(self):
        return (f"CudaDispatch(matmul={self.matmul!r}, tile={self.tile}, col_threads="
                f"{self.col_threads}, rows_per_block={self.rows_per_block}, "
                f"plan_chunk={self.plan_chunk})")

    @property
    def _rows(self):
        return dict(col_threads=self.col_threads, rows_per_block=self.rows_per_block)

    # ---- 1-2. the plan -----------------------------------------------------------------------------
    @simulator_paced
    def plan(self, expert_ids, n_expert, capacity=None):
        T, k = expert_ids.shape
        out = Outputs(like=expert_ids)
        ids = device_view(expert_ids.reshape(-1))              # (T*k,), slot s = t*k + j
        token_index, slot_position, offsets, counts, rank = K_plan.plan_arrays(
            ids, k, n_expert, capacity, out, chunk=self.plan_chunk)
        return DispatchPlan(token_index=out.back(token_index),
                            slot_position=out.back(slot_position).reshape(T, k),
                            offsets=out.back(offsets), counts=out.back(counts),
                            rank=out.back(rank).reshape(T, k), capacity=capacity)

    # ---- 3. gather (permute) and its backward --------------------------------------------------
    @simulator_paced
    def gather(self, x, token_index):
        out = Outputs(like=x)
        buffer = out.empty((token_index.shape[0], x.shape[1]), x.dtype)
        permute.gather(device_view(x), device_view(token_index), buffer, **self._rows)
        return out.back(buffer)

    @simulator_paced
    def scatter(self, g, slot_position):
        out = Outputs(like=g)
        dx = out.empty((slot_position.shape[0], g.shape[1]), g.dtype)
        permute.scatter(device_view(g), device_view(slot_position), zero_of(g.dtype), dx,
                        **self._rows)
        return out.back(dx)

    # ---- 4. grouped GEMM ------------------------------------------------------------------------
    @simulator_paced
    def grouped_mm(self, x, w, b, offsets):
        out = Outputs(like=x)
        dtype = _result_type(x, w)
        y = out.empty((x.shape[0], w.shape[2]), dtype)
        self.mm.grouped_mm(device_view(x), device_view(w), None if b is None else device_view(b),
                           device_view(offsets), zero_of(dtype), y, tile=self.tile)
        return out.back(y)

    @simulator_paced
    def grouped_mm_dx(self, g, w, offsets):
        out = Outputs(like=g)
        dtype = _result_type(g, w)
        dx = out.empty((g.shape[0], w.shape[1]), dtype)
        self.mm.grouped_mm_dx(device_view(g), device_view(w), device_view(offsets),
                              zero_of(dtype), dx, tile=self.tile)
        return out.back(dx)

    @simulator_paced
    def grouped_mm_dw(self, x, g, offsets, with_bias=True):
        out = Outputs(like=g)
        dtype = _result_type(x, g)
        E = offsets.shape[0] - 1
        d_g, d_off = device_view(g), device_view(offsets)
        dw = out.empty((E, x.shape[1], g.shape[1]), dtype)
        self.mm.grouped_mm_dw(device_view(x), d_g, d_off, zero_of(dtype), dw, tile=self.tile)
        db = None
        if with_bias:                      # a column sum per expert: not a matmul, one kernel
            db = out.empty((E, g.shape[1]), dtype)
            matmul_naive.bias_grad(d_g, d_off, zero_of(dtype), db)
        return out.back(dw), out.back(db)

    # ---- 5. combine -----------------------------------------------------------------------------
    @simulator_paced
    def combine(self, y, gates, slot_position):
        out = Outputs(like=y)
        dtype = _result_type(y, gates)
        res = out.empty((slot_position.shape[0], y.shape[1]), dtype)
        K_combine.combine(device_view(y), device_view(gates), device_view(slot_position),
                          zero_of(dtype), res, **self._rows)
        return out.back(res)

    @simulator_paced
    def combine_backward(self, g, y, gates, slot_position):
        out = Outputs(like=g)
        dy = out.empty(y.shape, _result_type(g, gates))
        dgates_dtype = _result_type(g, y)
        dgates = out.empty(gates.shape, dgates_dtype)
        K_combine.combine_backward(device_view(g), device_view(y), device_view(gates),
                                   device_view(slot_position), zero_of(dgates_dtype), dy, dgates,
                                   **self._rows)
        return out.back(dy), out.back(dgates)
