"""gelu (tinysparse/engine/functional.py, the tanh approximation of Hendrycks & Gimpel 2016):
against the formula written out in NumPy, backward by ts.gradcheck (float64, every element), and
known values.
"""
import math

import numpy as np
from hypothesis import given

import tinysparse as ts
from tinysparse import Tensor
from tinysparse import functional as F

from functional_helpers import leaf, shapes
from ops_helpers import FEW, seeds


@FEW
@given(shape=shapes(min_dims=0), seed=seeds)
def test_gelu(shape, seed):
    rng = np.random.default_rng(seed)
    x = leaf(rng, shape, scale=4.0)
    u = math.sqrt(2 / math.pi) * (x.data + 0.044715 * x.data ** 3)
    np.testing.assert_allclose(F.gelu(x).numpy(), 0.5 * x.data * (1 + np.tanh(u)), rtol=1e-12, atol=1e-15)
    assert ts.gradcheck(F.gelu, x)


def test_gelu_known_values():
    y = F.gelu(Tensor(np.array([0.0, 1.0, -1.0, 10.0, -10.0]))).numpy()
    np.testing.assert_allclose(y, [0.0, 0.8411919906, -0.1588080094, 10.0, 0.0], atol=1e-9)
