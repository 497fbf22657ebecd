"""Shared by the tests of the differentiable primitives (tests/test_ops_*.py): hypothesis
strategies for small shapes and broadcasting shapes, and makers of float64 leaves.

Every primitive is checked twice: its forward against NumPy, and its backward against central
differences (ts.gradcheck, float64, every element) on inputs whose shapes hypothesis draws: odd
sizes, size-1 axes, 0-d tensors and broadcasting. Inputs stay small (at most 60 elements), because
gradcheck costs two forward passes per element.

Values are drawn away from the points where an op is not differentiable (relu at 0, ties in max,
division by ~0, log of ~0), so that a failure always means a wrong gradient, never a kink.
"""
import math

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tinysparse import Tensor

MAX_ELEMENTS = 60
FEW = settings(max_examples=20, deadline=None)


def _small(shape):
    return math.prod(shape) <= MAX_ELEMENTS


def shapes(min_dims=0, max_dims=4, max_side=5):
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=1,
                            max_side=max_side).filter(_small)


def broadcast_shapes(num_shapes=2, min_dims=0, max_dims=4, max_side=4):
    """`num_shapes` shapes that broadcast together (size-1 axes, missing leading axes)."""
    return hnp.mutually_broadcastable_shapes(
        num_shapes=num_shapes, min_dims=min_dims, max_dims=max_dims, max_side=max_side,
    ).filter(lambda b: _small(b.result_shape))


seeds = st.integers(0, 2**32 - 1)


def leaf(rng, shape, low=-2.0, high=2.0):
    """A float64 leaf that requires grad, uniform in [low, high)."""
    return Tensor(rng.uniform(low, high, size=shape), requires_grad=True)


def away_from_zero(rng, shape, low=0.3, high=2.0):
    """Values with |x| in [low, high) and a random sign: no kink or pole near them."""
    magnitude = rng.uniform(low, high, size=shape)
    return Tensor(np.where(rng.random(shape) < 0.5, -magnitude, magnitude), requires_grad=True)


def close(tensor, expected):
    """The forward check: within 1e-12 of NumPy's values, and the same shape."""
    np.testing.assert_allclose(tensor.numpy(), expected, rtol=1e-12, atol=1e-12)
    assert tensor.shape == np.shape(expected)
