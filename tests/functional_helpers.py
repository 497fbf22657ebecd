"""Shared by the tests of the fused functions (tests/test_functional_*.py): input shapes at least
1-D by default (the functions work along an axis), float64 leaves symmetric about 0, and
log_softmax written out in NumPy (the reference of softmax, log_softmax and cross-entropy).

Each fused Function has a hand-derived backward: gradcheck (float64, every element) on shapes that
hypothesis draws, plus numeric checks of the forward against plain NumPy written out by hand.
"""
import numpy as np

from tinysparse import Tensor

import ops_helpers


def shapes(min_dims=1, max_dims=4, max_side=5):
    """ops_helpers.shapes (at most 60 elements, every side >= 1), at least 1-D by default."""
    return ops_helpers.shapes(min_dims=min_dims, max_dims=max_dims, max_side=max_side)


def leaf(rng, shape, scale=2.0):
    """A float64 leaf that requires grad, uniform in [-scale, scale)."""
    return Tensor(rng.uniform(-scale, scale, size=shape), requires_grad=True)


def np_log_softmax(x, axis):
    """log_softmax of a NumPy array along `axis`, the max subtracted first (no overflow)."""
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))
