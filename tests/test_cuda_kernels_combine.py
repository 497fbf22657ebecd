"""Gather, scatter, combine and combine's backward on the GPU (CudaDispatch) against the NumPy
reference: with capacity drops and empty slots, in float32 and float64, with nothing routed at
all, and bit for bit the same on a second run."""
import numpy as np
import pytest

from cuda_helpers import REF, TIGHT, routing, skip_module_without_a_device
from tinysparse.moe.cuda_dispatch import CudaDispatch
from tinysparse.moe.dispatch import capacity

skip_module_without_a_device()


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


def test_bitwise_repeatable():
    plan, x, y, gates, g = routed_case(dtype=np.float32, seed=2)
    be = CudaDispatch()
    runs = [[be.scatter(y, plan.slot_position), be.combine(y, gates, plan.slot_position),
             *be.combine_backward(g, y, gates, plan.slot_position)] for _ in range(2)]
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)
