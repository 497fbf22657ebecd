"""dtypes: the rules that give a Tensor its dtype (NumPy arrays keep theirs, Python numbers and
lists become float32, a Python scalar does not promote), casts (astype, float, double) and the
gradients across them, a gradient in its leaf's dtype, and the conversions out of a Tensor (repr,
len, tolist, item, numpy).
"""
import numpy as np
import pytest

import tinysparse as ts
from tinysparse import Tensor

from ops_helpers import leaf


# ---- dtype casts ---------------------------------------------------------------------------------

def test_cast_forward_and_backward_dtypes(rng):
    x = leaf(rng, (3, 4))
    y = x.astype(np.float32)
    assert y.dtype == np.float32 and y.requires_grad
    (y * 2).sum().backward()
    assert x.grad.dtype == np.float64
    np.testing.assert_array_equal(x.grad, np.full((3, 4), 2.0))
    assert x.float().dtype == np.float32 and x.float().double().dtype == np.float64


class _Spy(ts.Function):
    """The identity, remembering the dtype of the gradient its backward receives."""
    seen = []

    @staticmethod
    def forward(ctx, a):
        return a

    @staticmethod
    def backward(ctx, grad):
        _Spy.seen.append(grad.dtype)
        return grad


def test_cast_hands_back_gradients_in_the_input_dtype(rng):
    """Every backward receives a gradient of its output's dtype, also across a cast."""
    x = leaf(rng, (2, 3))
    _Spy.seen.clear()
    _Spy.apply(x).astype(np.float32).sum().backward()
    y = Tensor(np.ones(3, np.float32), requires_grad=True)
    _Spy.apply(y).double().sum().backward()
    assert _Spy.seen == [np.float64, np.float32]


def test_cast_gradcheck(rng):
    x = leaf(rng, (2, 3))
    assert ts.gradcheck(lambda x: x.astype(np.float64) * x, x)
    # through float32 the central differences need a coarser step (float32 resolves ~1e-7)
    assert ts.gradcheck(lambda x: (x.float() * 3).double(), x, eps=1e-2, atol=1e-4)


# ---- dtypes --------------------------------------------------------------------------------------

def test_dtype_rules():
    assert Tensor(np.ones(3)).dtype == np.float64            # NumPy arrays keep their dtype
    assert Tensor(np.ones(3, np.float32)).dtype == np.float32
    assert Tensor([1.0, 2.0]).dtype == np.float32            # Python lists become float32
    assert Tensor([1, 2]).dtype == np.float32
    assert Tensor(3.0).dtype == np.float32
    assert Tensor(np.ones(3), dtype=np.float32).dtype == np.float32
    assert Tensor(np.arange(3)).dtype.kind == "i"            # index arrays stay integer
    assert (Tensor(np.ones(3)) * 2).dtype == np.float64      # a Python scalar does not promote
    assert (Tensor(np.ones(3, np.float32)) * 2.5).dtype == np.float32
    x = Tensor(np.ones((2, 2)))
    for reduced in (x.sum(), x.mean(), x.max(), x[0, 0]):
        assert reduced.dtype == np.float64 and reduced.shape == ()
        assert isinstance(reduced.data, np.ndarray)         # 0-d arrays, not NumPy scalars
        assert Tensor(reduced).dtype == np.float64


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gradients_have_the_dtype_of_the_leaf(dtype):
    x = Tensor(np.ones((2, 3), dtype=dtype), requires_grad=True)
    other = np.full((2, 3), 0.5, dtype=dtype)
    for _ in range(2):             # the second backward accumulates into the first
        (x * other).sum().backward(np.float64(1.0))  # a float64 seed is cast to the root's dtype
        assert x.grad.dtype == dtype
    np.testing.assert_allclose(x.grad, np.full((2, 3), 1.0))


def test_repr_len_and_conversions():
    x = Tensor(np.arange(6.0).reshape(2, 3), requires_grad=True)
    assert "requires_grad=True" in repr(x) and len(x) == 2 and x.size == 6 and x.ndim == 2
    assert x.tolist() == [[0, 1, 2], [3, 4, 5]]
    assert x.sum().item() == 15.0
    assert isinstance(x.numpy(), np.ndarray)
