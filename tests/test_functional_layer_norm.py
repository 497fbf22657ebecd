"""layer_norm (tinysparse/engine/normalization.py): against the formula written out in NumPy,
with and without weight and bias, backward by ts.gradcheck (float64, every element) with any of
its inputs requiring grad; rows normalised, eps respected, bad eps and parameter shapes refused,
and its row mean bit for bit NumPy's.
"""
import numpy as np
import pytest
from hypothesis import given

import tinysparse as ts
from tinysparse import Tensor
from tinysparse import functional as F

from functional_helpers import leaf, shapes
from ops_helpers import FEW, seeds


def np_layer_norm(x, w, b, eps=1e-5):
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    y = (x - mu) / np.sqrt(var + eps)
    if w is not None:
        y = y * w
    if b is not None:
        y = y + b
    return y


@pytest.mark.parametrize("use_weight, use_bias", [(True, True), (True, False), (False, True),
                                                  (False, False)])
@FEW
@given(shape=shapes(min_dims=1, max_dims=4), seed=seeds)
def test_layer_norm(use_weight, use_bias, shape, seed):
    rng = np.random.default_rng(seed)
    C = shape[-1]
    x = leaf(rng, shape)
    w = Tensor(rng.uniform(0.5, 1.5, C), requires_grad=True) if use_weight else None
    b = Tensor(rng.standard_normal(C), requires_grad=True) if use_bias else None
    out = F.layer_norm(x, w, b)
    np.testing.assert_allclose(out.numpy(), np_layer_norm(x.data, None if w is None else w.data,
                                             None if b is None else b.data),
                               rtol=1e-10, atol=1e-12)
    inputs = [t for t in (x, w, b) if t is not None]

    def fn(*args):
        args = iter(args)
        x = next(args)
        return F.layer_norm(x, next(args) if use_weight else None, next(args) if use_bias else None)
    assert ts.gradcheck(fn, *inputs)


def test_layer_norm_weight_only_or_input_only_requiring_grad(rng):
    x, w, b = leaf(rng, (2, 3, 4)), leaf(rng, (4,)), leaf(rng, (4,))
    x.requires_grad = False
    assert ts.gradcheck(lambda x, w, b: F.layer_norm(x, w, b), x, w, b)
    x.requires_grad, w.requires_grad, b.requires_grad = True, False, False
    assert ts.gradcheck(lambda x, w, b: F.layer_norm(x, w, b), x, w, b)


def test_layer_norm_normalises_and_respects_eps(rng):
    x = Tensor(rng.standard_normal((4, 16)) * 5 + 3)
    y = F.layer_norm(x).numpy()
    np.testing.assert_allclose(y.mean(axis=-1), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=-1), 1, rtol=1e-5)
    x = Tensor(np.full((1, 4), 2.0) + np.array([0, 1e-3, 0, 0]))
    np.testing.assert_allclose(F.layer_norm(x, eps=1.0).numpy(), np_layer_norm(x.data, None, None, eps=1.0))


def test_layer_norm_refuses_bad_eps_and_parameter_shapes(rng):
    x = leaf(rng, (2, 4))
    for eps in (-1e-5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="eps must be a finite number >= 0"):
            F.layer_norm(x, eps=eps)
    with pytest.raises(ValueError, match=r"weight has shape \(3,\), expected \(4,\)"):
        F.layer_norm(x, Tensor(np.ones(3)))
    with pytest.raises(ValueError, match="at least one element"):
        F.layer_norm(Tensor(np.zeros((2, 0))))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(5, 1), (3, 7), (2, 4, 96), (1, 1, 128), (4, 333), (2, 4097)])
def test_layer_norm_row_mean_is_numpys_mean_bit_for_bit(dtype, shape):
    """normalization._row_mean (a sum and one division) stands in for x.mean(-1, keepdims=True):
    the same bits on rows of awkward lengths and magnitudes over 40 orders."""
    from tinysparse.engine.normalization import _row_mean
    rng = np.random.default_rng(shape[-1])
    x = (rng.standard_normal(shape) * 10.0 ** rng.integers(-20, 20, shape[:-1] + (1,))).astype(dtype)
    assert _row_mean(x, shape[-1]).tobytes() == x.mean(axis=-1, keepdims=True).tobytes()
