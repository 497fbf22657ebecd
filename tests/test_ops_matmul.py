"""Matrix multiplication (@ and ts.matmul): every case of NumPy's matmul rule (1-D operands,
batched, batch broadcasting on either side, the (B, T, C) @ (C, D) fast path), forward against
NumPy and backward by ts.gradcheck (float64, every element), with each input alone requiring grad
too, and shapes hypothesis draws from matmul's signature.
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis.extra import numpy as hnp

import tinysparse as ts

from ops_helpers import FEW, close, leaf, seeds


MATMUL_SHAPES = [
    ((3, 4), (4, 5)),            # 2-D
    ((1, 1), (1, 1)),            # size-1 everything
    ((2, 3, 4), (2, 4, 5)),      # batched
    ((1, 3, 4), (2, 4, 5)),      # broadcast batch on the left
    ((2, 3, 4), (1, 4, 2)),      # broadcast batch on the right
    ((3, 4), (2, 4, 5)),         # 2-D @ 3-D: the 2-D one is broadcast over the batch
    ((2, 1, 3, 4), (5, 4, 2)),   # 4-D @ 3-D, broadcasting both ways
    ((4,), (4, 5)),              # 1-D @ 2-D
    ((4,), (2, 4, 3)),           # 1-D @ N-D
    ((3, 4), (4,)),              # 2-D @ 1-D
    ((2, 3, 4), (4,)),           # N-D @ 1-D
    ((4,), (4,)),                # dot product
    ((2, 3, 4), (4, 5)),         # the (B, T, C) @ (C, D) fast path
    ((2, 3, 2, 4), (4, 3)),      # the fast path with two batch axes
    ((1, 1, 4), (4, 1)),         # the fast path with size-1 axes
]


@pytest.mark.parametrize("sa, sb", MATMUL_SHAPES, ids=[f"{a}@{b}" for a, b in MATMUL_SHAPES])
def test_matmul(sa, sb, rng):
    a, b = leaf(rng, sa), leaf(rng, sb)
    close(a @ b, np.matmul(a.data, b.data))
    close(ts.matmul(a, b), np.matmul(a.data, b.data))
    assert ts.gradcheck(lambda a, b: a @ b, a, b)
    # each input alone, too (the other a constant), which takes different code paths
    b.requires_grad = False
    assert ts.gradcheck(lambda a, b: a @ b, a, b)
    a.requires_grad, b.requires_grad = False, True
    assert ts.gradcheck(lambda a, b: a @ b, a, b)


@FEW
@given(shapes=hnp.mutually_broadcastable_shapes(signature="(n?,k),(k,m?)->(n?,m?)", max_dims=4,
                                                max_side=3),
       seed=seeds)
def test_matmul_drawn_shapes(shapes, seed):
    rng = np.random.default_rng(seed)
    a, b = leaf(rng, shapes.input_shapes[0]), leaf(rng, shapes.input_shapes[1])
    close(a @ b, np.matmul(a.data, b.data))
    assert ts.gradcheck(lambda a, b: a @ b, a, b)
