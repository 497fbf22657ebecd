"""The CUDA kernels of cuda_kernels/ against the NumPy reference (tinysparse/moe/dispatch.py).

Under pytest the kernels run in Numba's CUDA simulator (tests/conftest.py sets
NUMBA_ENABLE_CUDASIM=1), one Python thread per GPU thread, about 150 us each: the shapes are
small, but chosen to hit every edge: empty experts, all slots on one expert, capacity drops,
empty slots (-1) from expert choice, nothing to do at all, and sizes that are not multiples of the
tile or block. With NUMBA_ENABLE_CUDASIM=0 on a machine with a GPU (make gpu-check) the same tests
run on the real device, NumPy arrays copied in and out.
"""
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import tinysparse as ts
from cuda_kernels import host, matmul_naive, matmul_tiled
from cuda_kernels import plan as K_plan
from tinysparse.moe.cuda_dispatch import CudaDispatch
from tinysparse.moe import MoE
from tinysparse.moe.dispatch import DISPATCH_BACKENDS, NumpyDispatch, capacity, get_backend

# With the simulator off (NUMBA_ENABLE_CUDASIM=0) these tests need a real device.
if not host.SIMULATED:
    from numba import cuda
    if not cuda.is_available():
        pytest.skip("NUMBA_ENABLE_CUDASIM=0 and no CUDA device: the kernels have nowhere to run",
                    allow_module_level=True)

REF = NumpyDispatch()
TIGHT = dict(rtol=1e-12, atol=1e-12)          # float64: only the order of the sums differs


# ---- inputs --------------------------------------------------------------------------------------

def routing(pattern, T, k, E, rng):
    """(T, k) expert ids. Top-k routing gives k distinct experts per token; expert choice leaves -1."""
    if pattern == "uniform":
        return np.stack([rng.choice(E, size=k, replace=False) for _ in range(T)])
    if pattern == "skewed":                    # low ids favoured: high experts stay empty
        p = np.exp(-2.0 * np.arange(E))
        return np.stack([rng.choice(E, size=k, replace=False, p=p / p.sum()) for _ in range(T)])
    if pattern == "one_expert":                # every token's first slot on expert E-1
        ids = np.stack([rng.choice(E - 1, size=k, replace=False) for _ in range(T)])
        ids[:, 0] = E - 1
        return ids
    if pattern in ("holes", "skewed_holes"):   # expert choice: some slots empty
        ids = routing(pattern[:-6] or "uniform", T, k, E, rng)
        ids[rng.random((T, k)) < 0.35] = -1
        return ids
    if pattern == "all_empty":
        return np.full((T, k), -1)
    raise ValueError(pattern)


def assert_plans_equal(got, ref):
    for name in ("token_index", "slot_position", "offsets", "counts", "rank"):
        a, r = getattr(got, name), getattr(ref, name)
        assert isinstance(a, np.ndarray) and a.dtype == np.int64, name
        np.testing.assert_array_equal(a, r, err_msg=name)
    assert got.capacity == ref.capacity and got.n_dropped == ref.n_dropped


def segments(counts):
    off = np.zeros(len(counts) + 1, dtype=np.int64)
    off[1:] = np.cumsum(counts)
    return off


# ---- the plan: histogram, scans, stable rank -----------------------------------------------------

@pytest.mark.parametrize("pattern,T,k,E", [("uniform", 11, 2, 4), ("skewed", 13, 2, 6),
                                           ("one_expert", 9, 3, 4), ("holes", 12, 2, 5),
                                           ("all_empty", 3, 2, 3), ("uniform", 1, 1, 1)])
@pytest.mark.parametrize("cf", [None, 0.5, 1.0])
@pytest.mark.parametrize("chunk", [1, 5, 64])
def test_plan_matches_numpy(pattern, T, k, E, cf, chunk):
    ids = routing(pattern, T, k, E, np.random.default_rng(T * 31 + E))
    C = capacity(cf, T * k, E)
    assert_plans_equal(CudaDispatch(plan_chunk=chunk).plan(ids, E, C), REF.plan(ids, E, C))


def test_plan_capacity_overflow_by_hand():
    # the by-hand case of test_moe_dispatch.py: C = 2, expert 0 gets 4 slots and keeps the first 2
    ids = np.array([[0, 1], [0, 2], [0, 1], [1, 0]])
    plan = CudaDispatch(plan_chunk=3).plan(ids, 3, 2)
    np.testing.assert_array_equal(plan.counts, [4, 3, 1])
    np.testing.assert_array_equal(plan.offsets, [0, 2, 4, 5])
    np.testing.assert_array_equal(plan.rank, [[0, 0], [1, 0], [2, 1], [2, 3]])
    np.testing.assert_array_equal(plan.slot_position, [[0, 2], [1, 4], [-1, 3], [-1, -1]])
    np.testing.assert_array_equal(plan.token_index, [0, 1, 0, 2, 1])


def test_plan_accepts_int32_ids():
    ids = routing("holes", 7, 2, 4, np.random.default_rng(5))
    assert_plans_equal(CudaDispatch(plan_chunk=4).plan(ids.astype(np.int32), 4, None),
                       REF.plan(ids, 4, None))


@host.simulator_paced                            # tests that launch kernels themselves: see host.py
def test_chunk_histogram_counts_every_chunk():
    ids = routing("holes", 10, 2, 4, np.random.default_rng(0)).reshape(-1)
    chunk, E = 3, 4
    P = -(-ids.size // chunk)
    hist = host.Outputs(like=ids).empty((E, P), np.int64)
    K_plan.chunk_histogram[host.launch_1d(P)](host.device_view(ids), chunk, hist)
    pieces = np.array_split(ids, range(chunk, ids.size, chunk))
    want = np.stack([np.bincount(c[c >= 0], minlength=E) for c in pieces], axis=1)
    np.testing.assert_array_equal(hist.copy_to_host(), want)


@pytest.mark.parametrize("n", [1, 7, 8, 9, 30])
@host.simulator_paced
def test_exclusive_scan_in_pieces(n):
    values = np.random.default_rng(n).integers(0, 50, size=n)
    out = host.Outputs(like=values).empty(n + 1, np.int64)
    K_plan.exclusive_scan(host.device_view(values), out, max_block=8)   # pieces of 8: carries
    np.testing.assert_array_equal(out.copy_to_host(), np.concatenate([[0], np.cumsum(values)]))


# ---- gather / scatter / combine ------------------------------------------------------------------

def routed_case(seed=0, T=9, k=2, E=4, C_dim=13, cf=0.5, dtype=np.float64,
                pattern="skewed_holes"):
    rng = np.random.default_rng(seed)
    ids = routing(pattern, T, k, E, rng)
    plan = REF.plan(ids, E, capacity(cf, T * k, E))
    assert (plan.n_dropped > 0 or cf is None) and (ids < 0).any() == (pattern != "skewed")
    x = rng.standard_normal((T, C_dim)).astype(dtype)
    y = rng.standard_normal((plan.n_kept, C_dim)).astype(dtype)
    gates = rng.uniform(0.1, 1.0, (T, k)).astype(dtype)
    g_out = rng.standard_normal((T, C_dim)).astype(dtype)
    return plan, x, y, gates, g_out


@pytest.mark.parametrize("col_threads,rows_per_block", [(1, 16), (4, 3)])
def test_gather_scatter_combine_match_numpy(col_threads, rows_per_block):
    plan, x, y, gates, g = routed_case()
    be = CudaDispatch(col_threads=col_threads, rows_per_block=rows_per_block)
    np.testing.assert_array_equal(be.gather(x, plan.token_index), REF.gather(x, plan.token_index))
    np.testing.assert_allclose(be.scatter(y, plan.slot_position),
                               REF.scatter(y, plan.slot_position), **TIGHT)
    np.testing.assert_allclose(be.combine(y, gates, plan.slot_position),
                               REF.combine(y, gates, plan.slot_position), **TIGHT)
    for a, r in zip(be.combine_backward(g, y, gates, plan.slot_position),
                    REF.combine_backward(g, y, gates, plan.slot_position)):
        np.testing.assert_allclose(a, r, **TIGHT)


def test_float32_in_float32_out():
    plan, x, y, gates, g = routed_case(dtype=np.float32, seed=1)
    be = CudaDispatch()
    for a, r in [(be.gather(x, plan.token_index), REF.gather(x, plan.token_index)),
                 (be.combine(y, gates, plan.slot_position), REF.combine(y, gates, plan.slot_position)),
                 *zip(be.combine_backward(g, y, gates, plan.slot_position),
                      REF.combine_backward(g, y, gates, plan.slot_position))]:
        assert isinstance(a, np.ndarray) and a.dtype == r.dtype == np.float32
        np.testing.assert_allclose(a, r, rtol=1e-5, atol=1e-5)


def test_nothing_routed():
    plan, x, y, gates, g = routed_case(pattern="all_empty", cf=None)
    be = CudaDispatch()
    assert be.gather(x, plan.token_index).shape == (0, x.shape[1])
    np.testing.assert_array_equal(be.scatter(y, plan.slot_position), np.zeros_like(x))
    np.testing.assert_array_equal(be.combine(y, gates, plan.slot_position), np.zeros_like(x))
    dy, dgates = be.combine_backward(g, y, gates, plan.slot_position)
    assert dy.shape == (0, x.shape[1])
    np.testing.assert_array_equal(dgates, np.zeros_like(gates))


# ---- grouped matmul: naive and tiled, forward, dX, dW, db ----------------------------------------

COUNTS = {"uneven": [5, 0, 9, 3],             # an empty expert; S = 17, not a multiple of the tile
          "one_expert": [0, 0, 11, 0],
          "nothing": [0, 0, 0],
          "one_row": [1]}
# every case with tile 4; bigger tiles (64 and 256 simulated threads a block) on one case
MATMUL_CASES = [(m, 4, case) for m in ("naive", "tiled") for case in COUNTS] + \
               [("tiled", 8, "uneven"), ("naive", 16, "uneven")]


@pytest.mark.parametrize("matmul,tile,case", MATMUL_CASES)
def test_grouped_matmul_matches_numpy(matmul, tile, case):
    rng = np.random.default_rng(7)
    offsets = segments(COUNTS[case])
    E, S, d_in, d_out = len(COUNTS[case]), int(offsets[-1]), 13, 6    # 13: not a tile multiple
    x, g = rng.standard_normal((S, d_in)), rng.standard_normal((S, d_out))
    w, b = rng.standard_normal((E, d_in, d_out)), rng.standard_normal((E, d_out))
    be = CudaDispatch(matmul=matmul, tile=tile)
    for bias in (b, None):
        np.testing.assert_allclose(be.grouped_mm(x, w, bias, offsets),
                                   REF.grouped_mm(x, w, bias, offsets), **TIGHT)
    np.testing.assert_allclose(be.grouped_mm_dx(g, w, offsets), REF.grouped_mm_dx(g, w, offsets),
                               **TIGHT)
    for a, r in zip(be.grouped_mm_dw(x, g, offsets), REF.grouped_mm_dw(x, g, offsets)):
        np.testing.assert_allclose(a, r, **TIGHT)           # empty experts: zeros
    dw, db = be.grouped_mm_dw(x, g, offsets, with_bias=False)
    assert db is None and dw.shape == (E, d_in, d_out)


@pytest.mark.skipif(not host.SIMULATED, reason="bitwise equality of two kernels is a simulator "
                    "property: on a GPU the compiler may fuse multiply-adds differently")
@host.simulator_paced
def test_tiled_sums_in_the_naive_order_bitwise():
    rng = np.random.default_rng(3)
    offsets = segments([6, 0, 3])
    shapes = [(9, 5), (9, 7), (3, 5, 7), (3, 7)]
    x, g, w, b = (rng.standard_normal(s).astype(np.float32) for s in shapes)
    zero = host.zero_of(np.float32)
    for name, args, shape in [("grouped_mm", (x, w, b, offsets), (9, 7)),
                              ("grouped_mm_dx", (g, w, offsets), (9, 5)),
                              ("grouped_mm_dw", (x, g, offsets), (3, 5, 7))]:
        outs = []
        for module in (matmul_naive, matmul_tiled):
            out = host.Outputs(like=x).empty(shape, np.float32)
            getattr(module, name)(*map(host.device_view, args), zero, out, tile=4)
            outs.append(out.copy_to_host())
        np.testing.assert_array_equal(outs[0], outs[1], err_msg=name)


def test_bitwise_repeatable():
    plan, x, y, gates, g = routed_case(dtype=np.float32, seed=2)
    be = CudaDispatch()
    runs = [[be.scatter(y, plan.slot_position), be.combine(y, gates, plan.slot_position),
             *be.combine_backward(g, y, gates, plan.slot_position)] for _ in range(2)]
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


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


# ---- the whole MoE layer through dispatch_backend='cuda' -----------------------------------------

@pytest.fixture
def cuda_naive(monkeypatch):
    """'cuda naive' as a dispatch_backend name for one test (the registry is restored after)."""
    monkeypatch.setitem(DISPATCH_BACKENDS, "cuda naive", CudaDispatch(matmul="naive"))
    return "cuda naive"


@pytest.mark.parametrize("router,cf", [("topk", 1.0), ("topk", None), ("expert_choice", 1.0)])
def test_moe_layer_same_outputs_and_gradients_as_numpy(router, cf, cuda_naive, moe_layer_run):
    rng = np.random.default_rng(0)
    x_np, w_np = rng.standard_normal((2, 7, 6)), rng.standard_normal((2, 7, 6))
    ref, _, _ = moe_layer_run("numpy", router, x_np, w_np, cf)
    for backend in ("cuda", cuda_naive):
        got, layer, _ = moe_layer_run(backend, router, x_np, w_np, cf)
        assert isinstance(get_backend(layer.backend_name), CudaDispatch)
        if router == "topk" and cf is not None:
            assert layer.stats["dropped_fraction"] > 0        # capacity really drops slots here
        for a, r in zip(got, ref):
            np.testing.assert_allclose(a, r, rtol=1e-10, atol=1e-12)


def test_moe_gradcheck_through_cuda():
    ts.manual_seed(1)
    layer = MoE(3, 3, top_k=2, d_expert=2, capacity_factor=1.0, dispatch_backend="cuda",
                aux_coef=0.5, z_coef=0.1)
    layer.astype(np.float64)
    layer.router.weight.data = np.random.default_rng(1).standard_normal(layer.router.weight.shape)
    x = ts.Tensor(np.random.default_rng(2).standard_normal((1, 4, 3)), requires_grad=True)

    def loss(*_):
        return (layer(x) * np.cos(np.arange(12.0)).reshape(1, 4, 3)).sum() + layer.aux_loss

    loss()
    assert layer.stats["dropped_fraction"] > 0
    assert ts.gradcheck(loss, x, *layer.parameters())


# ---- make gpu-check where there is no GPU ------------------------------------------------------------

NO_CUPY_GPU = pytest.mark.skipif(ts.backend.cuda_available(),
                                 reason="a GPU is here: the script would run its full check")


@NO_CUPY_GPU
def test_gpu_check_says_there_is_no_gpu_and_exits_2():
    r = subprocess.run([sys.executable, "-m", "tinysparse.bench.gpu_check"], capture_output=True,
                       text=True, timeout=120, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu-check: no CUDA GPU here")


def test_gpu_check_training_command_runs(tmp_path):
    """The flags gpu_check passes to `tinysparse train` still exist: two steps on the CPU."""
    from tinysparse.bench import gpu_check
    ok, detail = gpu_check.stage_train("numpy", 2, timeout=120, device="cpu")
    assert ok, detail



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
