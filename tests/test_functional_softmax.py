"""softmax and log_softmax (tinysparse/engine/functional.py): against log_softmax written out in
NumPy on shapes and axes hypothesis draws, backward by ts.gradcheck (float64, every element),
the last axis by default, rows that sum to one, and no overflow on huge logits.
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tinysparse as ts
from tinysparse import Tensor
from tinysparse import functional as F

from functional_helpers import leaf, np_log_softmax, shapes
from ops_helpers import FEW, seeds


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
@FEW
@given(shape=shapes(), seed=seeds, data=st.data())
def test_softmax_and_log_softmax(name, shape, seed, data):
    rng = np.random.default_rng(seed)
    axis = data.draw(st.integers(-len(shape), len(shape) - 1), label="axis")
    x = leaf(rng, shape, scale=3.0)
    fn = lambda x: getattr(F, name)(x, axis=axis)  # noqa: E731
    expected = np_log_softmax(x.data, axis)
    expected = np.exp(expected) if name == "softmax" else expected
    np.testing.assert_allclose(fn(x).numpy(), expected, rtol=1e-12, atol=1e-14)
    assert ts.gradcheck(fn, x)


def test_softmax_default_axis_is_the_last(rng):
    x = Tensor(rng.standard_normal((2, 3, 4)))
    np.testing.assert_allclose(F.softmax(x).numpy().sum(axis=-1), np.ones((2, 3)), rtol=1e-12)
    np.testing.assert_allclose(F.log_softmax(x).numpy(), np_log_softmax(x.data, -1), rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_is_stable_for_huge_logits(dtype):
    x = Tensor(np.array([[1e4, 1e4 - 1.0, -1e4], [-1e4, -1e4, -1e4 + 2.0]], dtype=dtype),
               requires_grad=True)
    with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
        p = F.softmax(x, axis=-1)
        logp = F.log_softmax(x, axis=-1)
        (p * Tensor(np.arange(6.0, dtype=dtype).reshape(2, 3))).sum().backward()
    assert p.dtype == dtype and logp.dtype == dtype
    np.testing.assert_allclose(p.numpy().sum(axis=-1), [1.0, 1.0], rtol=1e-6)
    e = np.exp(-1.0)
    np.testing.assert_allclose(p.numpy()[0], [1 / (1 + e), e / (1 + e), 0.0], rtol=1e-6)
    np.testing.assert_allclose(logp.numpy()[0, :2], [-np.log1p(e), -1 - np.log1p(e)], rtol=1e-6)
    assert np.isfinite(logp.numpy()).all() and np.isfinite(x.grad).all()


@FEW
@given(shape=shapes(), seed=seeds)
def test_softmax_rows_sum_to_one(shape, seed):
    rng = np.random.default_rng(seed)
    p = F.softmax(Tensor(rng.standard_normal(shape) * 10), axis=-1).numpy()
    assert (p >= 0).all()
    np.testing.assert_allclose(p.sum(axis=-1), np.ones(shape[:-1]), rtol=1e-12)
