"""Sparse dispatch: the plan by hand, and gather -> grouped matmul -> combine against a naive loop."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import tinysparse as ts
from tinysparse import functional as F
from tinysparse.moe import Experts, capacity, combine, gather_rows, get_backend

# every CPU backend passes the same suite (cuda runs it under the simulator: test_cuda_kernels_*.py)
BACKENDS = ["numpy", "numba"]


# ---- the plan ------------------------------------------------------------------------------------

# T = 4 tokens, k = 2 slots each, E = 3 experts. Slot s = t*k + j:
#   s:      0  1  2  3  4  5  6  7
#   expert: 0  1  0  2  0  1  1  0
IDS = np.array([[0, 1], [0, 2], [0, 1], [1, 0]])


@pytest.mark.parametrize("backend", BACKENDS)
def test_plan_by_hand_dropless(backend):
    plan = get_backend(backend).plan(IDS, 3, None)
    np.testing.assert_array_equal(plan.counts, [4, 3, 1])
    np.testing.assert_array_equal(plan.offsets, [0, 4, 7, 8])
    # expert 0 queue: s0, s2, s4, s7; expert 1: s1, s5, s6; expert 2: s3 (earlier token first)
    np.testing.assert_array_equal(plan.rank, [[0, 0], [1, 0], [2, 1], [2, 3]])
    np.testing.assert_array_equal(plan.token_index, [0, 1, 2, 3, 0, 2, 3, 1])
    np.testing.assert_array_equal(plan.slot_position, [[0, 4], [1, 7], [2, 5], [6, 3]])
    assert plan.n_routed == 8 and plan.n_dropped == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_plan_by_hand_with_capacity(backend):
    C = capacity(0.75, n_slots=8, n_expert=3)          # ceil(0.75 * 8 / 3) = 2
    assert C == 2
    plan = get_backend(backend).plan(IDS, 3, C)
    np.testing.assert_array_equal(plan.counts, [4, 3, 1])          # routed, before drops
    np.testing.assert_array_equal(plan.offsets, [0, 2, 4, 5])      # kept: 2, 2, 1
    np.testing.assert_array_equal(plan.token_index, [0, 1, 0, 2, 1])
    # ranks >= 2 are dropped (-1): token 2's expert-0 slot, token 3's both slots
    np.testing.assert_array_equal(plan.slot_position, [[0, 2], [1, 4], [-1, 3], [-1, -1]])
    assert plan.n_dropped == 3


@pytest.mark.parametrize("backend", BACKENDS)
def test_plan_empty_slots_and_empty_experts(backend):
    ids = np.array([[2, -1], [-1, -1], [2, 0]])        # expert choice leaves holes; expert 1 gets nothing
    plan = get_backend(backend).plan(ids, 4, None)
    np.testing.assert_array_equal(plan.counts, [1, 0, 2, 0])
    np.testing.assert_array_equal(plan.offsets, [0, 1, 1, 3, 3])
    np.testing.assert_array_equal(plan.slot_position, [[1, -1], [-1, -1], [2, 0]])
    np.testing.assert_array_equal(plan.rank, [[0, -1], [-1, -1], [1, 0]])


@settings(max_examples=40, deadline=None)
@given(T=st.integers(1, 40), E=st.integers(1, 9), backend=st.sampled_from(BACKENDS), data=st.data())
def test_plan_ranks_are_stable_and_capacity_is_respected(T, E, backend, data):
    k = data.draw(st.integers(1, E))
    cf = data.draw(st.sampled_from([None, 0.5, 1.0, 1.5]))
    rng = np.random.default_rng(T * 100 + E * 10 + k)
    ids = rng.integers(0, E, size=(T, k))
    C = capacity(cf, T * k, E)
    plan = get_backend(backend).plan(ids, E, C)
    for e in range(E):
        slots = np.flatnonzero(ids.reshape(-1) == e)    # in token order
        np.testing.assert_array_equal(plan.rank.reshape(-1)[slots], np.arange(len(slots)))
        kept = len(slots) if C is None else min(len(slots), C)
        assert plan.offsets[e + 1] - plan.offsets[e] == kept
    assert sorted(plan.slot_position[plan.slot_position >= 0].tolist()) == list(range(plan.n_kept))


# ---- gather -> grouped matmul -> combine against a naive loop --------------------------------------

def _dispatched(x, ids, gates, experts, C, backend):
    plan = get_backend(backend).plan(ids, experts.n_expert, C)
    buffer = gather_rows(x, plan, backend)
    y = experts(buffer, plan.offsets, backend)
    return combine(y, gates, plan, backend)


def _naive(x, ids, gates, experts, C):
    """out[t] = sum_j gate[t, j] * FFN_e(x[t]), written as loops; capacity by a running counter."""
    T, k = ids.shape
    used = [0] * experts.n_expert
    kept = {e: [] for e in range(experts.n_expert)}
    for t in range(T):
        for j in range(k):
            e = int(ids[t, j])
            if e >= 0 and (C is None or used[e] < C):
                kept[e].append((t, j))
                used[e] += 1
    out = ts.Tensor(np.zeros(x.shape))
    for e, slots in kept.items():
        if not slots:
            continue
        t, j = (np.array(a) for a in zip(*slots))
        h = F.gelu(x[t] @ experts.w1[e] + experts.b1[e]) @ experts.w2[e] + experts.b2[e]
        onehot = np.zeros((T, len(t)))
        onehot[t, np.arange(len(t))] = 1.0             # scatter the rows back to their tokens
        out = out + ts.Tensor(onehot) @ (h * gates[t, j].reshape(-1, 1))
    return out


def _make(T, E, k, C_dim=3, d=2, seed=0):
    ts.manual_seed(seed)
    experts = Experts(E, C_dim, d)
    experts.astype(np.float64)
    rng = np.random.default_rng(seed)
    x = ts.Tensor(rng.standard_normal((T, C_dim)), requires_grad=True)
    gates = ts.Tensor(rng.uniform(0.1, 1.0, (T, k)), requires_grad=True)
    return experts, x, gates


def _check_against_naive(ids, E, C, backend="numpy", seed=0):
    T, k = ids.shape
    experts, x, gates = _make(T, E, k, seed=seed)
    leaves = [x, gates, *experts.parameters()]
    w = np.cos(np.arange(T * 3)).reshape(T, 3)
    results = []
    for fn in (lambda: _dispatched(x, ids, gates, experts, C, backend),
               lambda: _naive(x, ids, gates, experts, C)):
        for p in leaves:
            p.grad = None
        out = fn()
        (out * w).sum().backward()
        results.append((out.data, [np.zeros(p.shape) if p.grad is None else p.grad for p in leaves]))
    (out_d, grads_d), (out_n, grads_n) = results
    np.testing.assert_allclose(out_d, out_n, rtol=1e-10, atol=1e-12)
    for gd, gn in zip(grads_d, grads_n):
        np.testing.assert_allclose(gd, gn, rtol=1e-10, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(T=st.integers(1, 40), E=st.integers(1, 9), backend=st.sampled_from(BACKENDS), data=st.data())
def test_dispatch_equals_naive_loop(T, E, backend, data):
    k = data.draw(st.integers(1, E))
    cf = data.draw(st.sampled_from([None, 0.5, 1.0, 1.5]))
    skew = data.draw(st.booleans())
    rng = np.random.default_rng(T * 1000 + E * 10 + k)
    # k distinct experts per token, as top-k gives; `skew` favours low ids, leaving experts empty
    p = np.exp(-np.arange(E) * (1.5 if skew else 0.0))
    ids = np.stack([rng.choice(E, size=k, replace=False, p=p / p.sum()) for _ in range(T)])
    _check_against_naive(ids, E, capacity(cf, T * k, E), backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("C", [None, 1, 3])
def test_dispatch_all_tokens_on_one_expert(backend, C):
    ids = np.zeros((7, 1), dtype=np.int64)           # experts 1..3 get nothing; 0 overflows any C < 7
    _check_against_naive(ids, 4, C, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_dispatch_with_empty_slots(backend):
    ids = np.array([[1, -1, -1], [0, 2, -1], [-1, -1, -1], [2, 1, 0]])  # a token with no expert at all
    _check_against_naive(ids, 3, None, backend)
    _check_against_naive(ids, 3, 1, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_primitives_gradcheck(backend):
    ids = np.array([[0, 2], [2, 0], [2, 1], [0, 2], [2, 2]])
    experts, x, gates = _make(5, 3, 2)
    for C in (None, 2):
        assert ts.gradcheck(lambda *a: _dispatched(x, ids, gates, experts, C, backend),
                            x, gates, *experts.parameters())


@pytest.mark.parametrize("backend", BACKENDS)
def test_dispatch_is_deterministic(backend):
    rng = np.random.default_rng(5)
    ids = rng.integers(0, 4, size=(30, 3))
    experts, x, gates = _make(30, 4, 3)
    runs = []
    for _ in range(2):
        for p in (x, gates, *experts.parameters()):
            p.grad = None
        out = _dispatched(x, ids, gates, experts, capacity(1.0, 90, 4), backend)
        (out * out).sum().backward()
        runs.append([out.data.copy(), x.grad, gates.grad, *(p.grad for p in experts.parameters())])
    for a, b in zip(*runs):
        assert np.array_equal(a, b)                    # bitwise


# ---- the plan's types, capacity's refusals, the backend registry (issue 19) ----------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cap", [None, 2])
def test_plan_arrays_are_int64(backend, cap):
    plan = get_backend(backend).plan(IDS, 3, cap)
    for name in ("token_index", "slot_position", "offsets", "counts", "rank"):
        assert getattr(plan, name).dtype == np.int64, name
    assert plan.capacity == cap and plan.n_kept == (8 if cap is None else 5)


def test_expert_counts_are_int64_and_skip_empty_slots():
    """The router's load and the null experts' balance read these as counts: (E,) int64, empty
    slots (-1) not counted, an expert nobody chose at 0 (the GPU path: test_fake_gpu.py)."""
    from tinysparse.moe.dispatch import expert_counts
    counts = expert_counts(np.array([[0, 3], [3, -1], [4, 0], [-1, -1]]), 6)
    assert counts.dtype == np.int64 and counts.tolist() == [2, 0, 0, 2, 1, 0]
    none = expert_counts(np.full((2, 2), -1), 3)
    assert none.dtype == np.int64 and none.tolist() == [0, 0, 0]

@pytest.mark.parametrize("factor", [0.0, -1.0, float("nan"), float("inf"), "2"])
def test_capacity_refuses_a_factor_without_meaning(factor):
    with pytest.raises(ValueError, match=r"^capacity_factor must be None \(dropless\) or a "
                                         r"positive finite number, got "):
        capacity(factor, 8, 4)


def test_capacity_takes_numpy_numbers_and_is_at_least_one():
    assert capacity(np.float32(1.5), 8, 4) == 3 and capacity(np.int64(2), 8, 4) == 4
    assert capacity(2, 8, 4) == 4 and capacity(None, 8, 4) is None
    assert capacity(0.01, 10, 4) == 1                    # ceil(0.025) = 1


def test_expert_segments_leave_out_the_experts_without_rows():
    from tinysparse.moe.dispatch import expert_segments
    assert expert_segments(np.array([0, 2, 2, 5, 5])) == [(0, 0, 2), (2, 2, 5)]
    assert all(type(v) is int for seg in expert_segments(np.array([0, 3])) for v in seg)


def test_the_backend_registry(monkeypatch):
    from tinysparse.moe import dispatch
    names = dispatch.backend_names()
    assert names[0] == "auto" and len(names) == len(set(names))
    assert {"numpy", "numba", "cuda"} <= set(names)
    assert dispatch.resolve_backend_name("numpy") == "numpy"
    with pytest.raises(ValueError, match=r"^unknown dispatch_backend 'fast': use one of auto, "
                                         r"numpy, "):
        dispatch.resolve_backend_name("fast")
    monkeypatch.setitem(dispatch.LAZY_BACKENDS, "missing", "tinysparse.no_such_module:Nothing")
    with pytest.raises(ValueError, match=r"^dispatch_backend 'missing' is not available here "
                                         r"\(No module named 'tinysparse.no_such_module'\); use "
                                         r"dispatch_backend='numpy'$"):
        dispatch.get_backend("missing")
    assert "missing" not in dispatch.DISPATCH_BACKENDS
    mine = object()
    monkeypatch.setitem(dispatch.DISPATCH_BACKENDS, "mine", mine)
    assert dispatch.get_backend("mine") is mine
    # auto falls back to the reference where numba cannot load
    monkeypatch.delitem(dispatch.DISPATCH_BACKENDS, "numba", raising=False)
    monkeypatch.setitem(dispatch.LAZY_BACKENDS, "numba", "tinysparse.no_such_module:Nothing")
    assert dispatch.auto_backend_name(np.zeros((2, 2), np.float32)) == "numpy"
    assert dispatch.get_backend("auto", np.zeros((2, 2), np.float32)).name == "numpy"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("a, b", [(np.float32, np.float64), (np.float64, np.float32)])
def test_results_promote_both_operands_as_numpy_does(backend, a, b):
    be, rng = get_backend(backend), np.random.default_rng(0)
    plan = be.plan(IDS, 3, None)
    x, w = rng.random((8, 3)).astype(a), rng.random((3, 3, 2)).astype(b)
    g_out, g_tok = rng.random((8, 2)).astype(a), rng.random((4, 3)).astype(a)
    y, gates = rng.random((8, 3)).astype(b), rng.random((4, 2)).astype(b)
    assert be.grouped_mm(x, w, None, plan.offsets).dtype == np.float64
    assert be.grouped_mm_dx(g_out, w, plan.offsets).dtype == np.float64
    dw, db = be.grouped_mm_dw(x, g_out.astype(b), plan.offsets)   # with_bias by default
    assert dw.dtype == db.dtype == np.float64
    assert be.grouped_mm_dw(x, g_out, plan.offsets, with_bias=False)[1] is None
    dy, dgates = be.combine_backward(g_tok, y, gates, plan.slot_position)
    assert dy.dtype == dgates.dtype == np.float64


def test_backends_register_on_first_use(monkeypatch):
    from tinysparse.moe import dispatch
    from tinysparse.moe.numba_dispatch import NumbaDispatch
    monkeypatch.delitem(dispatch.DISPATCH_BACKENDS, "numba", raising=False)
    numba_backend = dispatch.get_backend("numba")
    assert isinstance(numba_backend, NumbaDispatch)
    assert dispatch.DISPATCH_BACKENDS["numba"] is numba_backend
    mine = object()
    monkeypatch.setattr(dispatch, "DISPATCH_BACKENDS", dict(dispatch.DISPATCH_BACKENDS))
    dispatch.register_backend("mine", mine)
    assert dispatch.get_backend("mine") is mine and "mine" in dispatch.backend_names()
    # auto is resolved for the array it is given: float16 has no kernels
    assert dispatch.get_backend("auto", np.zeros((2, 2), np.float16)).name == "numpy"
    assert dispatch.get_backend("auto", np.zeros((2, 2), np.float32)).name == "numba"
