"""Shapes at the edges of the fused functions: attention refuses mismatched q, k, v and head
counts that do not divide C, with one line naming the fix; empty inputs (no tokens, no rows) give
empty outputs and gradients of the right shape through softmax, log_softmax, gelu, layer_norm and
causal_self_attention.
"""
import numpy as np
import pytest

from tinysparse import Tensor
from tinysparse import functional as F

from functional_helpers import leaf


def test_attention_refuses_mismatched_shapes_and_bad_head_counts(rng):
    q, k = leaf(rng, (1, 3, 4)), leaf(rng, (1, 2, 4))
    with pytest.raises(ValueError, match="causal attention needs as many queries as keys.*causal=False"):
        F.attention(q, k, k)
    assert F.attention(q, k, k, causal=False).shape == (1, 3, 4)
    with pytest.raises(ValueError, match="attention needs q"):
        F.attention(q, leaf(rng, (1, 3, 5)), q)
    with pytest.raises(ValueError, match="n_head must be a positive integer dividing C=4, got 3"):
        F.causal_self_attention(leaf(rng, (1, 2, 12)), 3)
    with pytest.raises(ValueError, match=r"\(B, T, 3C\)"):
        F.causal_self_attention(leaf(rng, (1, 2, 10)), 1)


def test_empty_inputs_give_empty_outputs():
    """No tokens (T = 0) or no rows: the functions return empty arrays of the right shape."""
    for fn in (lambda x: F.softmax(x, dim=-1), lambda x: F.log_softmax(x, axis=0),
               F.gelu, F.layer_norm):
        x = Tensor(np.zeros((0, 3)), requires_grad=True)
        out = fn(x)
        assert out.shape == (0, 3)
        out.sum().backward()
        assert x.grad.shape == (0, 3)
    assert F.softmax(Tensor(np.zeros((2, 0))), dim=-1).shape == (2, 0)
    qkv = Tensor(np.zeros((2, 0, 12)), requires_grad=True)
    y = F.causal_self_attention(qkv, 2)
    assert y.shape == (2, 0, 4)
    y.sum().backward()
    assert qkv.grad.shape == (2, 0, 12)
