"""ts.gradcheck itself: it must be able to fail (a backward wrong on one element is caught and
named) and it refuses tolerances and inputs that would make its verdict meaningless.
"""
import numpy as np
import pytest

import tinysparse as ts
from tinysparse import Tensor

from ops_helpers import leaf


class _WrongMul(ts.Function):
    """x * y whose backward forgets one element: gradcheck must notice."""
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a * b

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved
        ga = grad * b
        ga.reshape(-1)[-1] = 0.0  # the bug: the last element gets no gradient
        return ga, grad * a


def test_gradcheck_catches_a_wrong_backward_on_a_single_element(rng):
    a, b = leaf(rng, (3, 4)), leaf(rng, (3, 4))
    with pytest.raises(ts.GradcheckError, match=r"input 0 .* element \(2, 3\)"):
        ts.gradcheck(lambda a, b: _WrongMul.apply(a, b), a, b)
    assert ts.gradcheck(lambda a, b: a * b, a, b)


@pytest.mark.parametrize("option", [dict(eps=0.0), dict(eps=float("nan")), dict(atol=-1.0),
                                    dict(rtol=float("inf"))])
def test_gradcheck_refuses_meaningless_tolerances(option):
    x = Tensor(np.ones(3), requires_grad=True)
    with pytest.raises(ValueError, match=f"gradcheck {next(iter(option))} must be a finite number"):
        ts.gradcheck(lambda x: x * 2, x, **option)


def test_gradcheck_refuses_float32_and_inputs_without_grad(rng):
    with pytest.raises(ValueError, match="float64"):
        ts.gradcheck(lambda a: a * 2, Tensor(np.ones(3, np.float32), requires_grad=True))
    with pytest.raises(ValueError, match="requires_grad"):
        ts.gradcheck(lambda a: a * 2, Tensor(np.ones(3)))
