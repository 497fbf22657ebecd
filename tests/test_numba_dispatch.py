"""The Numba kernels (tinysparse/moe/numba_*.py) against the NumPy reference, in both flavours.

test_moe_dispatch.py already runs its whole suite (plans by hand, a naive loop, gradchecks)
through dispatch_backend='numba' in whatever flavour this process picks. Here each kernel is
forced into the parallel and the serial flavour and compared with NumpyDispatch on larger random
shapes: row counts that are not multiples of any chunk, empty experts, all tokens on one expert,
capacity drops, -1 holes, T = 0 and 1, float32 and float64. A third backend cuts the grouped
matmuls into tasks of about 5 rows, so that every test also exercises the cutting. Then the
properties the reference cannot show: bitwise repeatability, independence of Numba's thread count,
and the BLAS thread limit inside parallel kernels.
"""
import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tinysparse as ts
from tinysparse.moe import capacity, dispatch
from tinysparse.moe.dispatch import NumpyDispatch, register_backend
from tinysparse.moe import numba_kernels as K
from tinysparse.moe.numba_dispatch import NumbaDispatch, _blas_libs, _OneBlasThread, parallel_pays

REF = NumpyDispatch()
FLAVOURS = {"parallel": NumbaDispatch(parallel=True), "serial": NumbaDispatch(parallel=False),
            "small chunks": NumbaDispatch(parallel=True, chunk_rows=5)}
for _name, _backend in FLAVOURS.items():
    register_backend(f"numba {_name}", _backend)
PRIMITIVES = ["gather", "scatter", "grouped_mm (bias)", "grouped_mm (no bias)", "grouped_mm_dx",
              "combine", "dw", "db", "combine_backward dy", "combine_backward dgates"]


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


def make_case(T, E, k, cf, pattern, dtype, seed, d_in=13, d_out=70):
    """Routing ids, capacity and random operands for every primitive (shapes from NumPy's plan)."""
    rng = np.random.default_rng(seed)
    ids = routing(rng, T, E, k, pattern)
    C = capacity(cf, T * k, E)
    S = REF.plan(ids, E, C).n_kept
    arrays = dict(x=(T, d_in), buf=(S, d_in), g_out=(S, d_out), w=(E, d_in, d_out), b=(E, d_out),
                  y=(S, d_in), g_tok=(T, d_in))
    case = {name: rng.standard_normal(shape).astype(dtype) for name, shape in arrays.items()}
    case["gates"] = rng.random((T, k)).astype(dtype)
    return ids, E, C, case


def run_all(backend, ids, E, C, c):
    """The plan, then every other primitive's output in PRIMITIVES order, all on the reference plan
    (so that a plan bug cannot hide behind a consistent kernel bug)."""
    plan = REF.plan(ids, E, C)
    off, sp = plan.offsets, plan.slot_position
    dw, db = backend.grouped_mm_dw(c["buf"], c["g_out"], off, True)
    dy, dgates = backend.combine_backward(c["g_tok"], c["y"], c["gates"], sp)
    return backend.plan(ids, E, C), [
        backend.gather(c["x"], plan.token_index), backend.scatter(c["buf"], sp),
        backend.grouped_mm(c["buf"], c["w"], c["b"], off),
        backend.grouped_mm(c["buf"], c["w"], None, off),
        backend.grouped_mm_dx(c["g_out"], c["w"], off), backend.combine(c["y"], c["gates"], sp),
        dw, db, dy, dgates]


def tol(dtype):
    return dict(rtol=2e-5, atol=2e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)


# Bit for bit wherever a kernel makes the reference's roundings in the reference's order: a copy
# (gather), a token's k rows added j = 0..k-1 (scatter, combine: the reference adds the same
# whole rows in the same order; a dropped slot adds an exact 0 there and nothing here), a product
# (combine_backward's dy), and, in the serial flavour, the grouped matmuls, which are the
# reference's own NumPy BLAS calls, one per segment. Up to rounding only where the order
# legitimately differs (numba_dispatch.py; chapter 06, part 5): dgates' dot products, summed in
# SIMD lanes (fastmath 'reassoc'); the parallel flavours' GEMMs, cut into row tasks on scipy's
# BLAS; and db, whose kernel sums a segment's rows first to last while the reference's
# g.sum(axis=0) is NumPy's choice of order: row by row for wide rows, but pairwise when the rows
# are one column wide (hypothesis found a 1-ulp difference at d_out = 1).
BITWISE = {"gather", "scatter", "combine", "combine_backward dy"}
BITWISE_SERIAL = BITWISE | {"grouped_mm (bias)", "grouped_mm (no bias)", "grouped_mm_dx", "dw"}


def bitwise_names(backend):
    return BITWISE_SERIAL if backend.parallel is False else BITWISE


def check_against_numpy(backend, T, E, k, cf, pattern, dtype, seed, **dims):
    ids, E, C, case = make_case(T, E, k, cf, pattern, dtype, seed, **dims)
    ref_plan, ref = run_all(REF, ids, E, C, case)
    got_plan, got = run_all(backend, ids, E, C, case)
    for field in ("token_index", "slot_position", "offsets", "counts", "rank"):
        np.testing.assert_array_equal(getattr(got_plan, field), getattr(ref_plan, field),
                                      err_msg=field)
    assert got_plan.capacity == ref_plan.capacity
    exact = bitwise_names(backend)
    for name, a, r in zip(PRIMITIVES, got, ref):
        assert a.shape == r.shape and a.dtype == r.dtype, name
        if name in exact:
            np.testing.assert_array_equal(a, r, err_msg=name)
        else:
            np.testing.assert_allclose(a, r, err_msg=name, **tol(dtype))
    assert backend.grouped_mm_dw(case["buf"], case["g_out"], ref_plan.offsets, False)[1] is None


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("pattern", ["uniform", "one_expert", "holes", "skewed"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_primitive_matches_numpy(flavour, pattern, dtype):
    # 301 tokens x 3 slots = 903 rows: segments of every length, none a multiple of a chunk;
    # capacity factor 0.7 drops slots; one_expert overflows a single expert's capacity
    check_against_numpy(FLAVOURS[flavour], 301, 8, 3, None, pattern, dtype, seed=1)
    check_against_numpy(FLAVOURS[flavour], 301, 8, 3, 0.7, pattern, dtype, seed=2)


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("T, E, k", [(0, 4, 2), (1, 4, 2), (1, 1, 1), (2, 300, 1)])
def test_edge_cases_match_numpy(flavour, T, E, k):
    # no tokens at all; one token; one expert; far more experts than tokens (almost all empty)
    for cf in (None, 0.5):
        check_against_numpy(FLAVOURS[flavour], T, E, k, cf, "uniform", np.float64, seed=T + E)


@settings(max_examples=25, deadline=None)
@given(T=st.integers(0, 90), E=st.integers(1, 12), flavour=st.sampled_from(sorted(FLAVOURS)),
       cf=st.sampled_from([None, 0.3, 1.0, 2.0]), seed=st.integers(0, 2**31), data=st.data())
def test_random_shapes_match_numpy(T, E, flavour, cf, seed, data):
    k = data.draw(st.integers(1, E))
    pattern = data.draw(st.sampled_from(["uniform", "one_expert", "holes", "skewed"]))
    d_in, d_out = data.draw(st.integers(1, 9)), data.draw(st.integers(1, 9))
    check_against_numpy(FLAVOURS[flavour], T, E, k, cf, pattern, np.float64, seed, d_in=d_in,
                        d_out=d_out)


@settings(max_examples=30, deadline=None)
@given(counts=st.lists(st.integers(0, 40), min_size=1, max_size=8), chunk_rows=st.integers(1, 12))
def test_chunks_cover_every_segment_in_pieces_of_about_chunk_rows(counts, chunk_rows):
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    tasks = K.chunks(offsets, chunk_rows)
    assert tasks[:, 1].tolist() == [0, *tasks[:-1, 2].tolist()][:len(tasks)]  # contiguous, in order
    for e, n in enumerate(counts):
        mine = tasks[tasks[:, 0] == e]
        assert (mine[:, 2] - mine[:, 1]).sum() == n and (n == 0) == (len(mine) == 0)
        if n >= chunk_rows:                    # pieces of chunk_rows .. 2*chunk_rows - 1 rows
            assert ((mine[:, 2] - mine[:, 1] >= chunk_rows)
                    & (mine[:, 2] - mine[:, 1] < 2 * chunk_rows)).all()


# ---- the MoE layer through the backend ---------------------------------------------------------

@pytest.mark.parametrize("router", ["topk", "expert_choice"])
def test_moe_layer_same_outputs_and_gradients_on_every_backend(router, moe_layer_run):
    rng = np.random.default_rng(0)
    x_np, w_np = rng.standard_normal((2, 9, 6)), rng.standard_normal((2, 9, 6))
    ref, _, _ = moe_layer_run("numpy", router, x_np, w_np)
    for backend in ("numba", *(f"numba {name}" for name in FLAVOURS), "auto"):
        got, layer, x = moe_layer_run(backend, router, x_np, w_np)
        for a, r in zip(got, ref):
            np.testing.assert_allclose(a, r, rtol=1e-10, atol=1e-12)
        assert ts.gradcheck(lambda t: layer(t), x)   # and the gradient itself, through numba


# ---- determinism ------------------------------------------------------------------------------

def big_case():
    return make_case(700, 16, 4, 1.25, "uniform", np.float32, seed=3, d_in=48, d_out=80)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_bitwise_repeatable(flavour):
    ids, E, C, case = big_case()
    runs = [run_all(FLAVOURS[flavour], ids, E, C, case)[1] for _ in range(2)]
    for name, a, b in zip(PRIMITIVES, *runs):
        assert np.array_equal(a, b), name


@pytest.mark.parametrize("flavour", ["parallel", "small chunks"])
def test_parallel_flavour_does_not_depend_on_the_thread_count(flavour):
    # tasks cut by the offsets alone, each one single-threaded GEMM, sums in a fixed order: any
    # thread count gives the same bits (the serial flavour's GEMMs follow NumPy's BLAS threads)
    ids, E, C, case = big_case()
    before = numba.get_num_threads()
    many = run_all(FLAVOURS[flavour], ids, E, C, case)[1]
    numba.set_num_threads(1)
    try:
        one = run_all(FLAVOURS[flavour], ids, E, C, case)[1]
    finally:
        numba.set_num_threads(before)
    for name, a, b in zip(PRIMITIVES, one, many):
        assert np.array_equal(a, b), name


def test_flavours_agree_bitwise_outside_the_gemms():
    # the loop kernels are the same code compiled twice: switching flavour moves no bit there
    ids, E, C, case = big_case()
    par, ser = (run_all(FLAVOURS[f], ids, E, C, case)[1] for f in ("small chunks", "serial"))
    for name, a, b in zip(PRIMITIVES, par, ser):
        if "grouped_mm" not in name and name != "dw":
            assert np.array_equal(a, b), name


# ---- threads: the BLAS limit and the flavour rule ----------------------------------------------

def blas_threads(threadpoolctl):
    return {i["filepath"]: i["num_threads"] for i in threadpoolctl.threadpool_info()
            if i["user_api"] == "blas"}


def test_parallel_kernels_hold_their_blas_to_one_thread():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    kernel_libs = {lib.filepath for lib in _blas_libs()[1]}
    numpy_libs = {lib.filepath for lib in _blas_libs()[0]}
    FLAVOURS["parallel"].grouped_mm(np.ones((3, 2)), np.ones((1, 2, 2)), None, np.array([0, 3]))
    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        with _OneBlasThread():
            inside = blas_threads(threadpoolctl)
        after = blas_threads(threadpoolctl)
    # np.dot in a kernel calls scipy's BLAS, not NumPy's: every BLAS loaded now (after a kernel
    # ran) that is not NumPy's must be among the limited ones (a shared BLAS is both)
    assert set(inside) - numpy_libs <= kernel_libs
    assert all(inside[path] == 1 for path in kernel_libs)
    assert all(n == 2 for n in after.values())        # and every limit is undone afterwards


def test_the_flavour_rule_follows_numpys_blas_threads():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    if numba.get_num_threads() < 2:
        pytest.skip("Numba has one thread here: the parallel flavour never pays")
    with threadpoolctl.threadpool_limits(1, user_api="blas"):
        assert parallel_pays()
    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        assert not parallel_pays()


def test_auto_is_numba_for_float_numpy_arrays_cuda_for_cupy_and_numpy_otherwise(monkeypatch):
    resolve = dispatch.resolve_backend_name
    assert resolve("auto", np.zeros((3, 4), np.float32)) == "numba"
    assert resolve("auto", np.zeros((3, 4), np.float64)) == "numba"
    assert resolve("auto", np.zeros((3, 4), np.float16)) == "numpy"   # no kernels compiled for it
    on_gpu = np.zeros((3, 4), np.float32)                              # these two stand for
    half_on_gpu = np.zeros((3, 4), np.float16)                         # CuPy arrays
    monkeypatch.setattr(dispatch, "array_module",
                        lambda a: "cupy" if a is on_gpu or a is half_on_gpu else np)
    assert resolve("auto", on_gpu) == "cuda"                           # the CUDA kernels
    assert resolve("auto", half_on_gpu) == "numpy"
    assert resolve("auto", np.zeros((3, 4), np.float32)) == "numba"    # auto asks of each array


def test_time_primitives_runs_every_primitive_on_every_backend():
    from tinysparse.moe.timing import ROWS, time_primitives
    result = time_primitives(["numpy", "numba"], T=20, n_embd=8, n_expert=4, top_k=2, d_expert=6,
                             iters=1, warmup=0)
    assert list(result) == list(ROWS)
    assert all(set(per) == {"numpy", "numba"} and min(per.values()) >= 0 for per in result.values())
