"""The router's partial top-k selection picks exactly what a full stable sort of -score picks:
the same expert ids in the same order, ties (at the k-th boundary too) going to the lower id."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tinysparse.moe.router import top_k_ids


def _reference(scores, k):
    return np.argsort(-scores, axis=-1, kind="stable")[:, :k]


@st.composite
def _scores_and_k(draw):
    T = draw(st.integers(1, 9))
    E = draw(st.integers(1, 13))
    k = draw(st.integers(1, E))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    if draw(st.booleans()):   # few distinct integer values: ties everywhere, across the k-th place
        values = st.integers(-2, 2).map(float)
    else:
        values = st.floats(-3, 3, width=32)
    scores = draw(hnp.arrays(dtype, (T, E), elements=values))
    return scores, k


@settings(max_examples=300, deadline=None)
@given(_scores_and_k())
def test_top_k_ids_equals_the_stable_argsort(case):
    scores, k = case
    ids = top_k_ids(scores, k)
    np.testing.assert_array_equal(ids, _reference(scores, k))
    assert ids.dtype == _reference(scores, k).dtype


def test_top_k_ids_with_many_ties_at_router_sizes():
    rng = np.random.default_rng(0)
    for E, k in [(8, 2), (64, 8), (128, 2), (128, 127), (128, 128)]:
        for levels in (2, 5, 1000):
            scores = rng.integers(0, levels, (257, E)).astype(np.float32) / levels
            np.testing.assert_array_equal(top_k_ids(scores, k), _reference(scores, k))


def test_top_k_ids_signed_zeros_and_nans():
    scores = np.array([[0.0, -0.0, 0.0, -0.0, 1.0],
                       [np.nan, 1.0, np.nan, 0.5, np.nan],
                       [np.nan, np.nan, np.nan, np.nan, np.nan],
                       [-0.0, np.nan, 0.0, -1.0, 2.0]])
    for k in range(1, 6):
        np.testing.assert_array_equal(top_k_ids(scores, k), _reference(scores, k))
