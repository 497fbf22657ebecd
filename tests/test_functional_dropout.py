"""dropout (tinysparse/engine/functional.py): gradcheck with a fixed mask (float64, every element),
the identity in eval mode, about p of the values dropped with the expectation kept, the same mask
for the same seed, float32 kept, and probabilities outside [0, 1) refused.
"""
import numpy as np
import pytest
from hypothesis import given

import tinysparse as ts
from tinysparse import Tensor
from tinysparse import functional as F

from functional_helpers import leaf, shapes
from ops_helpers import FEW, seeds


@pytest.mark.parametrize("p", [0.0, 0.2, 0.5, 0.9])
@FEW
@given(shape=shapes(min_dims=0), seed=seeds)
def test_dropout_gradcheck_with_a_fixed_mask(p, shape, seed):
    rng = np.random.default_rng(seed)
    x = leaf(rng, shape)

    def fn(x):
        ts.manual_seed(seed)  # the same mask on every evaluation
        return F.dropout(x, p=p, training=True)
    out = fn(x).numpy()
    kept = out != 0
    np.testing.assert_allclose(out[kept], x.data[kept] / (1 - p), rtol=1e-12)
    assert ts.gradcheck(fn, x)


def test_dropout_in_eval_mode_is_the_identity(rng):
    x = leaf(rng, (3, 4))
    assert F.dropout(x, p=0.5, training=False) is x
    assert F.dropout(x, p=0.0, training=True) is x


def test_dropout_in_train_mode_drops_about_p_and_keeps_the_expectation():
    ts.manual_seed(0)
    p = 0.3
    x = Tensor(np.ones(200_000), requires_grad=True)
    y = F.dropout(x, p=p)
    data = y.numpy()
    assert y.dtype == np.float64
    assert abs((data == 0).mean() - p) < 0.005                    # ~ 4.6 standard deviations
    assert set(np.unique(data)) == {0.0, 1 / (1 - p)}
    assert abs(data.mean() - 1.0) < 0.01                          # the expectation is kept
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, data)                   # the gradient is the scaled mask


def test_dropout_float32_stays_float32():
    ts.manual_seed(0)
    assert F.dropout(Tensor(np.ones(10, np.float32)), p=0.5).dtype == np.float32


def test_dropout_same_seed_same_mask_other_seed_other_mask():
    x = Tensor(np.ones((8, 16)))
    ts.manual_seed(123)
    a = F.dropout(x, p=0.5).numpy()
    ts.manual_seed(123)
    b = F.dropout(x, p=0.5).numpy()
    ts.manual_seed(124)
    c = F.dropout(x, p=0.5).numpy()
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()
    d = F.dropout(x, p=0.5).numpy()  # the generator moved on: a new mask
    assert (c != d).any()


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5])
def test_dropout_invalid_p_raises(p):
    with pytest.raises(ValueError, match="probability"):
        F.dropout(Tensor(np.ones(3)), p=p)
    with pytest.raises(ValueError):
        F.dropout(Tensor(np.ones(3)), p=p, training=False)  # checked in eval mode too


@pytest.mark.parametrize("p", [float("nan"), float("inf"), "0.1", True, None])
def test_dropout_refuses_a_probability_that_is_not_a_number_in_range(p):
    with pytest.raises(ValueError, match=r"dropout probability must be a number in \[0, 1\)"):
        F.dropout(Tensor(np.ones(3)), p=p)
