"""What stands between a kernel and its launch (cuda_kernels/host.py, CudaDispatch's settings):
the simulator's shared memory made safe against thread switches, grids over CUDA's limits and
settings refused with the way out, and a numba-cuda that cannot compile named in one line."""
import sys
import time

import numpy as np
import pytest

from cuda_helpers import segments, skip_module_without_a_device
from cuda_kernels import host, matmul_naive, matmul_tiled
from cuda_kernels import plan as K_plan
from tinysparse.moe.cuda_dispatch import CudaDispatch

skip_module_without_a_device()


@pytest.mark.skipif(not host.SIMULATED, reason="a simulator race: a GPU's shared memory is "
                    "declared, not allocated by the threads")
def test_simulated_shared_memory_survives_thread_switches(monkeypatch):
    """Regression: numba's simulator allocates a cuda.shared.array when a thread first runs that
    line, check-then-set: a thread preempted between the check and the set let another thread
    of its block make a second array, and the block's threads then shared different tiles (a
    one-off GradcheckError in test_moe_gradcheck_through_cuda). host.py makes the allocation
    atomic. Here a thread switch is forced inside every np.empty, right where the simulator
    allocates, and the Python switch interval is made tiny: numba's own version then gets a wrong
    tiled matmul or scan on nearly every launch. Every kernel with shared memory must still agree
    bit for bit with one without (the naive matmul), and the scan must be exact, every time."""
    real_empty = np.empty

    def empty_then_switch(*args, **kwargs):
        a = real_empty(*args, **kwargs)
        time.sleep(0)                            # let another thread run right here
        return a

    rng = np.random.default_rng(11)
    offsets = segments([6, 0, 5])                # uneven, an empty expert, 11 rows: not a tile multiple
    x, g = rng.standard_normal((11, 5)), rng.standard_normal((11, 7))
    w, b = rng.standard_normal((3, 5, 7)), rng.standard_normal((3, 7))
    values = rng.integers(0, 50, size=13)
    zero = host.zero_of(np.float64)
    cases = [("grouped_mm", (x, w, b, offsets), (11, 7)), ("grouped_mm_dx", (g, w, offsets), (11, 5)),
             ("grouped_mm_dw", (x, g, offsets), (3, 5, 7))]

    def run(module, name, args, shape):
        out = host.Outputs(like=x).empty(shape, np.float64)
        getattr(module, name)(*map(host.device_view, args), zero, out, tile=4)
        return out.copy_to_host()

    want = {name: run(matmul_naive, name, args, shape) for name, args, shape in cases}
    monkeypatch.setattr(np, "empty", empty_then_switch)
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for _ in range(3):
            for name, args, shape in cases:
                np.testing.assert_array_equal(run(matmul_tiled, name, args, shape), want[name],
                                              err_msg=name)
            out = host.Outputs(like=values).empty(values.size + 1, np.int64)
            K_plan.exclusive_scan(host.device_view(values), out, max_block=8)   # 2 pieces of 8
            np.testing.assert_array_equal(out.copy_to_host(),
                                          np.concatenate([[0], np.cumsum(values)]))
    finally:
        sys.setswitchinterval(before)


def test_a_grid_over_cudas_limits_is_refused_with_the_way_out():
    with pytest.raises(ValueError, match=r"65535.*split the batch"):
        host.launch_2d(16 * 65535 + 1, 4)                     # 65536 row blocks along y
    assert host.launch_2d(16 * 65535, 4)[0] == (1, 65535)     # the last one that fits
    with pytest.raises(ValueError, match="tiled grouped_mm_dx"):
        host.check_grid((1, 70000), "tiled grouped_mm_dx")


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="matmul='fast'"):
        CudaDispatch(matmul="fast")
    with pytest.raises(ValueError, match="tile=0"):
        CudaDispatch(tile=0)
    with pytest.raises(ValueError, match="at most 1024 threads"):
        CudaDispatch(tile=64)


def test_a_numba_cuda_that_cannot_compile_is_named_in_one_line(monkeypatch):
    """On a GPU, a broken numba-cuda (0.30.4 with NumPy 2.5, seen on a lent H200) is found by
    compiling one trivial kernel: one line with the fix, from CudaDispatch and from get_backend,
    instead of a traceback from inside the first launch. The simulator is never probed."""
    from cuda_kernels import host
    from tinysparse.moe import cuda_dispatch, dispatch

    host.compile_problem.cache_clear()
    assert host.compile_problem() is None                    # the simulator compiles nothing

    def numpy_2_5():
        raise AttributeError("module 'numpy' has no attribute 'row_stack'")

    def no_nvvm():
        raise RuntimeError("libNVVM cannot be found\nsecond line")

    monkeypatch.setattr(host, "SIMULATED", False)
    try:
        monkeypatch.setattr(host, "_compile_probe", numpy_2_5)
        host.compile_problem.cache_clear()
        why = host.compile_problem()
        assert why == (f"numba-cuda cannot compile kernels with NumPy {np.__version__} "
                       "(AttributeError: module 'numpy' has no attribute 'row_stack'); install "
                       "NumPy below 2.5: pip install 'numpy<2.5'")
        with pytest.raises(ImportError, match=r"pip install 'numpy<2\.5'"):
            cuda_dispatch.CudaDispatch()
        monkeypatch.delitem(dispatch.DISPATCH_BACKENDS, "cuda", raising=False)
        with pytest.raises(ValueError, match=r"dispatch_backend 'cuda' is not available here "
                                             r"\(numba-cuda cannot compile .*use dispatch_backend='numpy'"):
            dispatch.get_backend("cuda")
        monkeypatch.setattr(host, "_compile_probe", no_nvvm)
        host.compile_problem.cache_clear()
        assert host.compile_problem() == ("Numba cannot compile a CUDA kernel here (RuntimeError: "
                                          "libNVVM cannot be found); see `make cuda-install`")
    finally:
        host.compile_problem.cache_clear()
