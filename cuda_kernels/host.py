"""The host side of every kernel: where the arrays live, and how many threads to launch.

A kernel reads and writes device memory only. The dispatch backend is handed either

- CuPy arrays (on a real GPU): they already live in device memory. `cuda.as_cuda_array` wraps one
  in a Numba device array through the `__cuda_array_interface__` protocol, zero-copy: the kernel
  and CuPy see the same bytes. Outputs are allocated by CuPy (its memory pool is much faster than
  a fresh cudaMalloc per call) and handed back as CuPy arrays.
- NumPy arrays: they are copied to the device (`cuda.to_device`), the outputs are device arrays,
  and the results are copied back (`copy_to_host`). On a real GPU that costs two PCIe transfers per
  call: correct, not fast. Under the CUDA simulator (NUMBA_ENABLE_CUDASIM=1) the "device" is host
  memory and this is how the whole MoE layer runs on the CPU in the tests.

Either way the caller gets back the array type it gave. Nothing here imports cupy (or anything of
tinysparse): a CuPy array's module is already loaded when such an array exists, and is found
through the array's own type.

Launch geometry: a launch is `kernel[grid, block](args)`, grid = blocks, block = threads per block
(each up to 3-D). Every helper clamps the block to the work there is: under the simulator each
thread is a Python thread (~150 us to start), so launching 128 threads for 3 rows of work would
cost 40 times what the work does.
"""
import functools
import sys

import numpy as np
from numba import config as _numba_config
from numba import cuda

# True when kernels run in the CUDA simulator (Python threads on the CPU). Numba decided it from
# NUMBA_ENABLE_CUDASIM when it was first imported; ask numba, never re-read the variable ourselves
# (numba parses it with int(): "true" means a warning and the real GPU, not the simulator).
SIMULATED = bool(_numba_config.ENABLE_CUDASIM)


# ---- the simulator's shared memory, made thread-safe ---------------------------------------------
#
# On a GPU, `cuda.shared.array(shape, dtype)` is a declaration: the block's shared memory exists
# before any thread runs. The simulator (numba 0.68, numba/cuda/simulator/kernelapi.py) emulates
# it lazily, when a thread first EXECUTES that line, keyed by (file, line), once per launch:
#
#     res = self._allocations.get(caller)
#     if res is None:                            # <- check ...
#         res = np.empty(shape, dtype)
#         self._allocations[caller] = res        # <- ... then set: not atomic
#     return res
#
# The block's threads are Python threads that all reach that line at about the same time. If one
# is preempted between its get and its store (more likely with simulator_paced's 0.1 ms switch
# interval), another thread finds no array, makes its own, and the block's threads end up with two
# different "shared" tiles: each sees only the elements written by threads holding the same one,
# and np.empty's leftovers in the rest. That is a race in the simulator, not in the kernels (their
# barriers are right), but it hits every kernel here that uses shared memory (the tiled forward,
# dX and dW, and the plan's scan): rarely, a wrong sum or plan, gone on a rerun (the likely cause
# of a one-off GradcheckError in test_moe_gradcheck_through_cuda, whose margins are otherwise
# five orders of magnitude wide). test_simulated_shared_memory_survives_thread_switches in
# tests/test_cuda_kernels_launch.py forces the preemption: numba's version fails it nearly every
# launch.
#
# The fix: the same emulation with the get-or-create under a lock, so every thread of a block gets
# the same array. The key is read from the caller's frame (sys._getframe), the same (file, line)
# the original gets from traceback.extract_stack, which walks and formats the whole stack and
# costs far more, once per thread per shared array. Only under the simulator; a GPU is untouched.

def _thread_safe_simulator_shared_memory():
    """Replace the simulator's FakeCUDAShared.array by a version whose allocation is atomic."""
    import threading

    from numba.core import types
    from numba.cuda.simulator import kernelapi
    from numba.np import numpy_support

    shared_cls = kernelapi.FakeCUDAShared
    if getattr(shared_cls.array, "thread_safe", False):
        return                                   # installed already
    unsafe_array = shared_cls.array
    lock = threading.Lock()

    def array(self, shape, dtype):
        if shape == 0:                           # dynamic shared memory: one preallocated
            return unsafe_array(self, shape, dtype)   # buffer, nothing created here, no race
        if isinstance(dtype, types.Type):
            dtype = numpy_support.as_dtype(dtype)
        frame = sys._getframe(1)                 # the kernel line that declares the array
        caller = (frame.f_code.co_filename, frame.f_lineno)
        with lock:                               # get-or-create as one step
            res = self._allocations.get(caller)
            if res is None:
                res = np.empty(shape, dtype)
                self._allocations[caller] = res
        return res

    array.thread_safe = True
    array.__wrapped__ = unsafe_array             # numba's own, for tests that compare
    shared_cls.array = array


if SIMULATED:
    _thread_safe_simulator_shared_memory()


# ---- can Numba compile a kernel here? -------------------------------------------------------------
#
# numba-cuda 0.30.4 (its last release: the project is in maintenance mode) registers an overload
# of np.row_stack when its typing registries load, at the first kernel compile. NumPy 2.5 removed
# np.row_stack, so with NumPy >= 2.5 every compile raises AttributeError (NVIDIA/numba-cuda#907,
# seen on a lent H200 with NumPy 2.5.2). Compiling one trivial kernel finds that, or any other
# broken install, at once, in one line, instead of a traceback from deep inside the first launch.

def _probe_kernel(a):
    a[0] = 1


def _compile_probe():
    cuda.jit("void(int32[:])")(_probe_kernel)   # a signature: compiled now, launched never


@functools.lru_cache(maxsize=None)
def compile_problem():
    """None when Numba compiles CUDA kernels here (always, under the simulator), else why, in one
    line that names the fix. Compiles one trivial kernel, once per process."""
    if SIMULATED:
        return None
    try:
        _compile_probe()
    except Exception as exc:                    # any failure: kernels cannot run here
        why = f"{exc.__class__.__name__}: {exc}".splitlines()[0][:200]
        if "module 'numpy' has no attribute" in why:
            return (f"numba-cuda cannot compile kernels with NumPy {np.__version__} ({why}); "
                    f"install NumPy below 2.5: pip install 'numpy<2.5'")
        return f"Numba cannot compile a CUDA kernel here ({why}); see `make cuda-install`"
    return None


def ceil_div(a, b):
    return (a + b - 1) // b


def simulator_paced(method):
    """Decorator for host functions that launch kernels: under the simulator, let Python switch
    threads every 0.1 ms (instead of every 5 ms) while they run.

    The simulator runs a block's threads as Python threads and waits at cuda.syncthreads() by
    polling them; with the default switch interval every barrier costs milliseconds, and a tiled
    matmul (two barriers per tile step) runs 5-10x slower. The interval is restored on return;
    on a real GPU this does nothing.
    """
    if not SIMULATED:
        return method

    @functools.wraps(method)
    def paced(*args, **kwargs):
        before = sys.getswitchinterval()
        sys.setswitchinterval(min(before, 1e-4))
        try:
            return method(*args, **kwargs)
        finally:
            sys.setswitchinterval(before)
    return paced


# ---- arrays: caller's type <-> device arrays -----------------------------------------------------

def on_gpu(a):
    """True for an array that already lives in GPU memory (CuPy, or any __cuda_array_interface__)."""
    return hasattr(a, "__cuda_array_interface__") and not isinstance(a, np.ndarray)


def device_view(a):
    """A Numba device array of `a`: zero-copy for GPU arrays, a copy to the device for NumPy."""
    if isinstance(a, np.ndarray):
        return cuda.to_device(np.ascontiguousarray(a))
    if on_gpu(a) and not SIMULATED:
        return _wrap(a)                          # CuPy (or Numba's own device array): same memory
    return a                                     # already a (simulated) device array


def _wrap(a):
    """Numba's view of a GPU array. sync=False: by default Numba would wait for the stream the
    array was exported with (all queued GPU work) on every call. No wait is needed: the kernels
    launch on the legacy default stream, which runs in order after CuPy's default stream and
    after its ordinary (blocking) streams."""
    return cuda.as_cuda_array(a, sync=False)


def _cupy_of(like):
    """The cupy module when `like` is a CuPy array, else None. A CuPy array exists only once its
    module was imported, so it is looked up, never imported here (tinysparse.engine.backend is the
    one place that imports cupy)."""
    if not on_gpu(like) or SIMULATED:
        return None
    package = type(like).__module__.split(".")[0]
    return sys.modules.get("cupy") if package == "cupy" else None


class Outputs:
    """Allocates a call's outputs next to its inputs and hands results back as the caller's type.

        out = Outputs(like=x)                   # x: the caller's NumPy or CuPy array
        d_y = out.empty((S, C), np.float32)     # a device array for the kernel to write
        return out.back(d_y)                    # NumPy (copied to the host) or CuPy (zero-copy)
    """

    def __init__(self, like):
        self.xp = _cupy_of(like)
        self._owners = {}                       # id(device view) -> (the view, its CuPy array)

    def empty(self, shape, dtype):
        if self.xp is None:
            return cuda.device_array(shape, dtype=dtype)
        a = self.xp.empty(shape, dtype=dtype)
        view = _wrap(a)
        self._owners[id(view)] = (view, a)      # the view is kept: its id stays unique
        return view

    def back(self, d):
        if d is None:
            return None
        if self.xp is None:
            return d.copy_to_host()
        if id(d) in self._owners:
            return self._owners[id(d)][1]
        return self.xp.asarray(d)


def read_int(d, i):
    """One integer of a device array, copied to the host (a synchronisation point: use sparingly)."""
    return int(d[i:i + 1].copy_to_host()[0])


def zero_of(dtype):
    """A typed zero, passed to kernels as the accumulator's start: `acc = zero` makes the sum
    float32 for float32 arrays. (A literal 0.0 would be float64, and a consumer GPU runs float64
    at 1/32 to 1/64 of its float32 speed.)"""
    return np.dtype(dtype).type(0)


# ---- launch geometry -----------------------------------------------------------------------------

def launch_1d(n, threads=128):
    """(grid, block) for n independent items, one thread each:
    i = blockIdx.x * blockDim.x + threadIdx.x."""
    threads = max(1, min(threads, n))
    return max(1, ceil_div(n, threads)), threads


def launch_rows(n_rows, n_cols, col_threads=32, rows_per_block=8):
    """(grid, block) for row kernels: block = (col_threads, rows_per_block) threads.

    threadIdx.y picks the block's row, threadIdx.x strides over the row's columns, so the 32
    threads of a warp read 32 neighbouring floats: one coalesced memory transaction. The grid
    is 1-D over rows: row = blockIdx.x * blockDim.y + threadIdx.y.
    """
    cx = max(1, min(col_threads, n_cols))
    ry = max(1, min(rows_per_block, n_rows))
    return max(1, ceil_div(n_rows, ry)), (cx, ry)


# CUDA's limits on a grid: 2**31 - 1 blocks along x, 65535 along y and z.
MAX_GRID = (2 ** 31 - 1, 65535, 65535)


def check_grid(grid, what):
    """Refuse a grid the GPU cannot launch, with the way out, instead of a driver error."""
    for axis, (n, limit) in enumerate(zip(grid, MAX_GRID)):
        if n > limit:
            raise ValueError(f"{what}: the launch needs {n} blocks along grid axis {'xyz'[axis]}, "
                             f"over CUDA's limit of {limit}; split the batch into fewer tokens "
                             f"per call or use a larger tile")
    return grid


def launch_2d(n_rows, n_cols, side=16):
    """(grid, block) for one thread per element of an (n_rows, n_cols) output: x = column, y = row."""
    bx, by = max(1, min(side, n_cols)), max(1, min(side, n_rows))
    grid = (max(1, ceil_div(n_cols, bx)), max(1, ceil_div(n_rows, by)))
    return check_grid(grid, f"a {n_rows} x {n_cols} output"), (bx, by)
