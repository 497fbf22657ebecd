"""The CUDA kernels on a real GPU, on CuPy arrays (zero-copy), at sizes the simulator cannot reach.

Skipped, with the reason, unless the CUDA simulator is off and CuPy finds a GPU. tests/conftest.py
turns the simulator on by default, so these run only as

    NUMBA_ENABLE_CUDASIM=0 python -m pytest -m gpu       (make gpu-check does this)

Under the simulator numba.cuda.is_available() is True, so it cannot tell a real GPU: the test asks
the environment variable and CuPy (through tinysparse.backend) instead.
"""
import os

import numpy as np
import pytest

import tinysparse as ts
from tinysparse.engine import backend
from tinysparse.moe import MoE
from tinysparse.moe.dispatch import DISPATCH_BACKENDS, NumpyDispatch, capacity


def _why_no_gpu():
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
        return ("the CUDA simulator is on (NUMBA_ENABLE_CUDASIM=1, the default of tests/conftest.py); "
                "run `make gpu-check` or `NUMBA_ENABLE_CUDASIM=0 pytest -m gpu` on a GPU machine")
    if not backend.cuda_available():
        return "no real GPU: CuPy is not installed or finds no CUDA device (make cuda-install)"
    return None


NO_GPU = _why_no_gpu()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(NO_GPU is not None, reason=NO_GPU or "")]

REF = NumpyDispatch()            # on CuPy arrays: CuPy's fancy indexing and cuBLAS matmuls


@pytest.fixture(scope="module")
def cp():
    return backend.get_xp("cuda")


def _backends():
    from tinysparse.moe.cuda_dispatch import CudaDispatch
    return {"naive": CudaDispatch(matmul="naive"), "tiled": CudaDispatch(matmul="tiled"),
            "tiled8": CudaDispatch(matmul="tiled", tile=8),
            "tiled32": CudaDispatch(matmul="tiled", tile=32),
            "small-blocks": CudaDispatch(col_threads=8, rows_per_block=2, plan_chunk=7)}


def _case(cp, T=1000, k=2, E=16, d_in=96, d_out=200, cf=1.0, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    p = np.exp(-0.3 * np.arange(E))                         # uneven: the last experts get few
    ids = np.stack([rng.choice(E, size=k, replace=False, p=p / p.sum()) for _ in range(T)])
    ids[rng.random((T, k)) < 0.05] = -1                     # and a few empty slots
    w = rng.standard_normal((E, d_in, d_out)) / np.sqrt(d_in)    # outputs of order 1
    arrays = dict(ids=ids, x=rng.standard_normal((T, d_in)), w=w,
                  b=rng.standard_normal((E, d_out)), gates=rng.uniform(0.1, 1, (T, k)))
    arrays = {n: cp.asarray(a if n == "ids" else a.astype(dtype)) for n, a in arrays.items()}
    return arrays, E, capacity(cf, T * k, E)


def _close(a, r, dtype):
    """Equal up to rounding: the kernels and cuBLAS add their products in different orders.
    An element near 0 that is a sum of large terms keeps an error of the terms' size, so atol
    scales with the largest element."""
    a, r = backend.to_numpy(a), backend.to_numpy(r)
    scale = max(1.0, float(np.abs(r).max(initial=0.0)))
    rtol = 1e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(a, r, rtol=rtol, atol=rtol * 0.1 * scale)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", ["naive", "tiled", "tiled8", "tiled32", "small-blocks"])
def test_every_primitive_on_cupy_arrays(cp, name, dtype):
    be = _backends()[name]
    a, E, C = _case(cp, dtype=dtype)
    plan, ref = be.plan(a["ids"], E, C), REF.plan(a["ids"], E, C)
    for field in ("token_index", "slot_position", "offsets", "counts", "rank"):
        got = getattr(plan, field)
        assert isinstance(got, cp.ndarray), field                       # CuPy in, CuPy out
        cp.testing.assert_array_equal(got, getattr(ref, field))
    buf = be.gather(a["x"], plan.token_index)
    assert isinstance(buf, cp.ndarray) and buf.dtype == dtype
    cp.testing.assert_array_equal(buf, REF.gather(a["x"], ref.token_index))
    y = be.grouped_mm(buf, a["w"], a["b"], plan.offsets)
    _close(y, REF.grouped_mm(buf, a["w"], a["b"], plan.offsets), dtype)
    _close(be.grouped_mm_dx(y, a["w"], plan.offsets), REF.grouped_mm_dx(y, a["w"], plan.offsets), dtype)
    for got, want in zip(be.grouped_mm_dw(buf, y, plan.offsets),
                         REF.grouped_mm_dw(buf, y, plan.offsets)):
        _close(got, want, dtype)
    out = be.combine(y, a["gates"], plan.slot_position)
    _close(out, REF.combine(y, a["gates"], plan.slot_position), dtype)
    for got, want in zip(be.combine_backward(out, y, a["gates"], plan.slot_position),
                         REF.combine_backward(out, y, a["gates"], plan.slot_position)):
        _close(got, want, dtype)
    _close(be.scatter(y, plan.slot_position), REF.scatter(y, plan.slot_position), dtype)


def test_numba_compiles_kernels_here():
    """The probe of cuda_kernels.host.compile_problem finds no problem on a working GPU."""
    from cuda_kernels import host
    assert host.compile_problem() is None


def test_cupy_arrays_are_used_in_place(cp):
    from cuda_kernels.host import device_view
    x = cp.arange(12, dtype=cp.float32).reshape(3, 4)
    assert device_view(x).device_ctypes_pointer.value == x.data.ptr      # zero-copy


def test_bitwise_repeatable_on_the_device(cp):
    be = _backends()["tiled"]
    a, E, C = _case(cp, seed=1)
    runs = []
    for _ in range(2):
        plan = be.plan(a["ids"], E, C)
        y = be.grouped_mm(be.gather(a["x"], plan.token_index), a["w"], a["b"], plan.offsets)
        runs.append([y, *be.grouped_mm_dw(be.gather(a["x"], plan.token_index), y, plan.offsets),
                     *be.combine_backward(be.combine(y, a["gates"], plan.slot_position), y,
                                          a["gates"], plan.slot_position)])
    for r0, r1 in zip(*runs):
        assert bool(cp.array_equal(r0, r1))


def test_numpy_arrays_on_a_real_gpu_come_back_as_numpy():
    from tinysparse.moe.cuda_dispatch import CudaDispatch
    x = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    buf = CudaDispatch().gather(x, np.array([4, 0, 0, 2]))
    assert isinstance(buf, np.ndarray)
    np.testing.assert_array_equal(buf, x[[4, 0, 0, 2]])


@pytest.mark.parametrize("router", ["topk", "expert_choice"])
def test_moe_layer_on_the_device_matches_the_numpy_backend(cp, router, monkeypatch):
    from tinysparse.moe.cuda_dispatch import CudaDispatch
    monkeypatch.setitem(DISPATCH_BACKENDS, "cuda naive", CudaDispatch(matmul="naive"))
    rng = np.random.default_rng(0)
    x_np, w_np = rng.standard_normal((4, 64, 128)), rng.standard_normal((4, 64, 128))
    results = {}
    for name in ("numpy", "cuda", "cuda naive"):
        ts.manual_seed(0)
        layer = MoE(128, 16, top_k=2, d_expert=256, router=router, capacity_factor=1.25,
                    dispatch_backend=name).to("cuda")
        x = ts.Tensor(cp.asarray(x_np, dtype=cp.float32), requires_grad=True)
        out = layer(x)
        ((out * cp.asarray(w_np, dtype=cp.float32)).sum() + layer.aux_loss).backward()
        results[name] = [out.data, x.grad, *(p.grad for p in layer.parameters())]
    for name in ("cuda", "cuda naive"):
        for got, want in zip(results[name], results["numpy"]):
            assert isinstance(got, cp.ndarray)
            _close(got, want, np.float32)


@pytest.mark.parametrize("dtype, rtol", [(np.float32, 2e-6), (np.float64, 1e-14)])
def test_gelu_runs_its_kernels_on_the_device_and_matches_the_array_code(cp, dtype, rtol):
    """functional.GELU on CuPy arrays takes cuda_kernels/gelu.py (one kernel each way) and gives
    the array code's values and gradients to rounding, at a size the simulator cannot reach."""
    from tinysparse.engine import compiled
    from tinysparse.engine import functional as F
    rng = np.random.default_rng(3)
    x = cp.asarray((rng.standard_normal((257, 1031)) * 4).astype(dtype))
    x[0, :4] = cp.asarray([np.inf, -40.0, 1e20, 0.0], dtype)
    g = cp.asarray(rng.standard_normal(x.shape).astype(dtype))
    assert compiled.gpu("cuda_kernels.gelu", x) is not None

    def run():
        t = ts.Tensor(x, requires_grad=True)
        y = F.gelu(t)
        (y * ts.Tensor(g)).sum().backward()
        return cp.asnumpy(y.data), cp.asnumpy(t.grad)
    y, dx = run()
    saved = F.GELU.compiled
    F.GELU.compiled = False
    try:
        ref_y, ref_dx = run()
    finally:
        F.GELU.compiled = saved
    # the device's exp and its fused multiply-adds round 2u differently, and exp(-|2u|) turns an
    # ulp of 2u into |2u| ulps of the result: seen on an H200, up to 1.5e-5 relative (6.9e-11
    # absolute) in float32 on outputs of order 1e-7 and below, where gelu is all but 0
    atol = 1e-9 if dtype == np.float32 else 1e-30
    np.testing.assert_allclose(y, ref_y, rtol=rtol, atol=atol, equal_nan=True)
    # gelu'(x) = s + x s (1 - s) (2u)' is a sum of two terms of order 1 that cancel near its zero
    # (x = -0.75): there the difference is a few ulps of the terms, not of the result
    eps = np.finfo(dtype).eps
    np.testing.assert_allclose(dx, ref_dx, rtol=rtol, atol=8 * eps * float(abs(g).max()),
                               equal_nan=True)


@pytest.mark.parametrize("dtype, rtol", [(np.float32, 1e-5), (np.float64, 1e-12)])
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_runs_its_kernels_on_the_device_and_matches_the_array_code(cp, dtype, rtol, affine):
    """functional.LayerNorm on CuPy arrays takes cuda_kernels/layer_norm.py and gives the array
    code's output and all three gradients to rounding, on rows that fill no block evenly."""
    from tinysparse.engine import compiled
    from tinysparse.engine import normalization as N
    rng = np.random.default_rng(5)
    B, T, C = 3, 341, 385
    x = cp.asarray((rng.standard_normal((B, T, C)) * 3 + 1).astype(dtype))
    x[0, 1] *= 1e18 if dtype == np.float32 else 1e30
    x[0, 2] = 7.25
    w = cp.asarray(rng.standard_normal(C).astype(dtype)) if affine else None
    b = cp.asarray(rng.standard_normal(C).astype(dtype)) if affine else None
    g = cp.asarray(rng.standard_normal(x.shape).astype(dtype))
    assert compiled.gpu("cuda_kernels.layer_norm", x, w, b) is not None

    def run():
        tx = ts.Tensor(x, requires_grad=True)
        tw = ts.Tensor(w, requires_grad=True) if affine else None
        tb = ts.Tensor(b, requires_grad=True) if affine else None
        y = ts.functional.layer_norm(tx, tw, tb)
        (y * ts.Tensor(g)).sum().backward()
        grads = [tx.grad] + ([tw.grad, tb.grad] if affine else [])
        return [cp.asnumpy(a) for a in [y.data, *grads]]
    got = run()
    saved = N.LayerNorm.compiled
    N.LayerNorm.compiled = False
    try:
        want = run()
    finally:
        N.LayerNorm.compiled = saved
    y, dx = (got[0], want[0]), (got[1], want[1])
    for a, ref in (y, dx):                       # per row: the huge row's scale hides no other's
        scale = np.abs(ref).max(axis=-1, keepdims=True)
        assert (np.abs(a - ref) <= rtol * 10 * scale).all()
    for a, ref in zip(got[2:], want[2:]):        # dweight, dbias: sums over every row
        np.testing.assert_allclose(a, ref, rtol=rtol, atol=rtol * 10 * np.abs(ref).max())
