"""The dispatch plan on the GPU (cuda_kernels/plan.py through CudaDispatch.plan): histogram,
scans and stable rank against the NumPy reference, at every edge of tests/cuda_helpers.py's
routings and capacities, and the plan's kernels launched one by one."""
import numpy as np
import pytest

from cuda_helpers import REF, routing, skip_module_without_a_device
from cuda_kernels import host
from cuda_kernels import plan as K_plan
from tinysparse.moe.cuda_dispatch import CudaDispatch
from tinysparse.moe.dispatch import capacity

skip_module_without_a_device()


def assert_plans_equal(got, ref):
    for name in ("token_index", "slot_position", "offsets", "counts", "rank"):
        a, r = getattr(got, name), getattr(ref, name)
        assert isinstance(a, np.ndarray) and a.dtype == np.int64, name
        np.testing.assert_array_equal(a, r, err_msg=name)
    assert got.capacity == ref.capacity and got.n_dropped == ref.n_dropped


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
