"""The Numba kernels (tinysparse/moe/numba_*.py) against the NumPy reference, in both flavours.

test_moe_dispatch.py already runs its whole suite (plans by hand, a naive loop, gradchecks)
through dispatch_backend='numba' in whatever flavour this process picks. Here each kernel is
forced into the parallel and the serial flavour and compared with NumpyDispatch on larger
random shapes: row counts that are not multiples of the 64-row chunk, empty experts, all tokens
on one expert, capacity drops, -1 holes, float32 and float64.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tinysparse as ts
from tinysparse.moe import MoE, capacity
from tinysparse.moe.dispatch import NumpyDispatch, register_backend
from tinysparse.moe.numba_dispatch import NumbaDispatch, parallel_pays

REF = NumpyDispatch()
FLAVOURS = {"parallel": NumbaDispatch(parallel=True), "serial": NumbaDispatch(parallel=False)}
register_backend("numba-parallel", FLAVOURS["parallel"])
register_backend("numba-serial", FLAVOURS["serial"])


def routing(rng, T, E, k, pattern):
    if pattern == "one_expert":
        return np.zeros((T, k), dtype=np.int64) if k == 1 else \
            np.tile(np.arange(k), (T, 1))            # every token on experts 0..k-1: the rest empty
    ids = np.array([rng.choice(E, size=k, replace=False) for _ in range(T)],
                   dtype=np.int64).reshape(T, k)
    if pattern == "holes":
        ids[rng.random((T, k)) < 0.3] = -1           # expert choice leaves empty slots
    if pattern == "skewed":
        ids = np.minimum(ids, E // 2)                # the upper half of the experts gets nothing
    return ids


def tol(dtype):
    return dict(rtol=2e-5, atol=2e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)


def check_all_primitives(backend, T, E, k, cf, pattern, dtype, seed, d_in=13, d_out=70):
    rng = np.random.default_rng(seed)
    ids = routing(rng, T, E, k, pattern)
    C = capacity(cf, T * k, E)
    ref, got = REF.plan(ids, E, C), backend.plan(ids, E, C)
    for field in ("token_index", "slot_position", "offsets", "counts", "rank"):
        np.testing.assert_array_equal(getattr(got, field), getattr(ref, field), err_msg=field)
    S = ref.n_kept
    x = rng.standard_normal((T, d_in)).astype(dtype)
    buf = rng.standard_normal((S, d_in)).astype(dtype)
    g_out = rng.standard_normal((S, d_out)).astype(dtype)
    w = rng.standard_normal((E, d_in, d_out)).astype(dtype)
    b = rng.standard_normal((E, d_out)).astype(dtype)
    gates = rng.random((T, k)).astype(dtype)
    y = rng.standard_normal((S, d_in)).astype(dtype)
    g_tok = rng.standard_normal((T, d_in)).astype(dtype)
    pairs = [
        (backend.gather(x, ref.token_index), REF.gather(x, ref.token_index)),
        (backend.scatter(buf, ref.slot_position), REF.scatter(buf, ref.slot_position)),
        (backend.grouped_mm(buf, w, b, ref.offsets), REF.grouped_mm(buf, w, b, ref.offsets)),
        (backend.grouped_mm(buf, w, None, ref.offsets), REF.grouped_mm(buf, w, None, ref.offsets)),
        (backend.grouped_mm_dx(g_out, w, ref.offsets), REF.grouped_mm_dx(g_out, w, ref.offsets)),
        (backend.combine(y, gates, ref.slot_position), REF.combine(y, gates, ref.slot_position)),
    ]
    pairs += list(zip(backend.grouped_mm_dw(buf, g_out, ref.offsets, True),
                      REF.grouped_mm_dw(buf, g_out, ref.offsets, True)))
    pairs += list(zip(backend.combine_backward(g_tok, y, gates, ref.slot_position),
                      REF.combine_backward(g_tok, y, gates, ref.slot_position)))
    assert backend.grouped_mm_dw(buf, g_out, ref.offsets, False)[1] is None
    for i, (a, r) in enumerate(pairs):
        assert a.shape == r.shape and a.dtype == r.dtype, i
        np.testing.assert_allclose(a, r, err_msg=f"primitive {i}", **tol(dtype))


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("pattern", ["uniform", "one_expert", "holes", "skewed"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_primitive_matches_numpy(flavour, pattern, dtype):
    # 301 tokens x 3 slots = 903 rows: segments of every length, none a multiple of 64
    check_all_primitives(FLAVOURS[flavour], 301, 8, 3, None, pattern, dtype, seed=1)
    check_all_primitives(FLAVOURS[flavour], 301, 8, 3, 0.7, pattern, dtype, seed=2)


@settings(max_examples=25, deadline=None)
@given(T=st.integers(0, 90), E=st.integers(1, 12), flavour=st.sampled_from(sorted(FLAVOURS)),
       cf=st.sampled_from([None, 0.3, 1.0, 2.0]), seed=st.integers(0, 2**31), data=st.data())
def test_random_shapes_match_numpy(T, E, flavour, cf, seed, data):
    k = data.draw(st.integers(1, E))
    pattern = data.draw(st.sampled_from(["uniform", "one_expert", "holes", "skewed"]))
    check_all_primitives(FLAVOURS[flavour], T, E, k, cf, pattern, np.float64, seed, d_in=5, d_out=3)


def layer_run(backend, router, x_np, w_np):
    ts.manual_seed(0)
    layer = MoE(6, 5, top_k=2, d_expert=7, n_shared=1, router=router, capacity_factor=1.0,
                dispatch_backend=backend)
    for p in layer.parameters():
        p.data = p.data.astype(np.float64)
    x = ts.Tensor(x_np, requires_grad=True)
    out = layer(x)
    ((out * w_np).sum() + layer.aux_loss).backward()
    return [out.data, x.grad, *(p.grad for p in layer.parameters())], layer, x


@pytest.mark.parametrize("router", ["topk", "expert_choice"])
def test_moe_layer_same_outputs_and_gradients_on_every_backend(router):
    rng = np.random.default_rng(0)
    x_np, w_np = rng.standard_normal((2, 9, 6)), rng.standard_normal((2, 9, 6))
    ref, _, _ = layer_run("numpy", router, x_np, w_np)
    for backend in ("numba", "numba-parallel", "numba-serial"):
        got, layer, x = layer_run(backend, router, x_np, w_np)
        for a, r in zip(got, ref):
            np.testing.assert_allclose(a, r, rtol=1e-10, atol=1e-12)
        assert ts.gradcheck(lambda t: layer(t), x)   # and the gradient itself, through numba


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_bitwise_repeatable(flavour):
    rng = np.random.default_rng(3)
    ids = routing(rng, 500, 16, 4, "uniform")
    backend = FLAVOURS[flavour]
    plan = backend.plan(ids, 16, None)
    buf = rng.standard_normal((plan.n_kept, 32)).astype(np.float32)
    w = rng.standard_normal((16, 32, 48)).astype(np.float32)
    runs = [(backend.grouped_mm(buf, w, None, plan.offsets),
             backend.grouped_mm_dw(buf, backend.grouped_mm(buf, w, None, plan.offsets),
                                   plan.offsets, False)[0]) for _ in range(3)]
    for a, b in runs[1:]:
        assert np.array_equal(a, runs[0][0]) and np.array_equal(b, runs[0][1])


def test_the_flavour_rule_follows_numpys_blas_threads():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    import numba
    if numba.get_num_threads() < 2:
        pytest.skip("Numba has one thread here: the parallel flavour never pays")
    with threadpoolctl.threadpool_limits(1, user_api="blas"):
        assert parallel_pays()
    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        assert not parallel_pays()
