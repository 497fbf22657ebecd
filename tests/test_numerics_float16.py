"""float16 inputs are computed in float32 inside (tinysparse/engine/function.py, issue 11, kind
1): the answer is float32's, rounded once, even where a float16 intermediate would overflow; a
Function sees float32 in its forward and its backward, the tensors between Functions (and a
leaf's .grad) are float16.
"""
import numpy as np
import pytest

import tinysparse as ts
from numerics_helpers import grad_of
from tinysparse import Tensor
from tinysparse import functional as F

HALF_CASES = {
    "layer_norm": (F.layer_norm, [[300.0, -300.0, 100.0, 0.0]]),   # 300^2 overflows float16
    "gelu": (F.gelu, [100.0, -3.0, 0.5]),                          # 100^3 overflows float16
    "sum": (lambda x: x.sum(), [60000.0, 60000.0, -60000.0]),      # the partial sum overflows
    "softmax": (lambda x: F.softmax(x, dim=-1), [[-60000.0, 60000.0, 1.0]]),
    "sigmoid": (ts.sigmoid, [-12.0, 0.0, 12.0]),
    "div": (lambda x: 1.0 / x, [300.0, -0.5, 1000.0]),
    "matmul": (lambda x: x[0] @ x[1], [[200.0, 200.0, -200.0], [200.0, 200.0, 200.0]]),
}


@pytest.mark.parametrize("name", list(HALF_CASES))
def test_float16_is_computed_in_float32_and_rounded_once(name):
    fn, values = HALF_CASES[name]
    x16 = np.asarray(values, dtype=np.float16)
    out16, (g16,) = grad_of(fn, x16, dtype=np.float16, seed=3)
    out32, (g32,) = grad_of(fn, x16.astype(np.float32), dtype=np.float32, seed=3)
    assert out16.dtype == np.float16 and g16.dtype == np.float16
    assert np.isfinite(out16).all() and np.isfinite(g16).all()
    np.testing.assert_array_equal(out16, out32.astype(np.float16))
    np.testing.assert_array_equal(g16, g32.astype(np.float16))


def test_a_function_on_float16_sees_float32_in_forward_and_backward():
    """Inside, forward and backward both work in float32; the tensors between the Functions (and
    the leaf's .grad) are float16."""
    seen = []

    class Spy(ts.Function):
        @staticmethod
        def forward(ctx, a):
            seen.append(a.dtype)
            return a * 1.0

        @staticmethod
        def backward(ctx, grad):
            seen.append(grad.dtype)
            return grad

    x = Tensor(np.ones(3, np.float16), requires_grad=True)
    y = Spy.apply(F.gelu(x))
    assert y.dtype == np.float16
    y.sum().backward()
    assert seen == [np.float32, np.float32] and x.grad.dtype == np.float16
