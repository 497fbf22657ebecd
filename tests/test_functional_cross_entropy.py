"""cross_entropy (tinysparse/engine/functional.py): against -mean log_softmax[target] written out
by hand, on (N, V) and (B, T, V) logits hypothesis draws, backward by ts.gradcheck (float64,
every element); ignore_index (any integer; ignored rows get no gradient), no overflow on huge
logits, and the one-line refusals of float, out-of-range or misshapen targets.
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tinysparse as ts
from tinysparse import Tensor
from tinysparse import functional as F

from functional_helpers import leaf, np_log_softmax
from ops_helpers import FEW, seeds


def np_cross_entropy(logits, targets, ignore_index=None):
    """-mean over counted positions of log_softmax(logits)[target], written out by hand."""
    logp = np_log_softmax(logits, -1).reshape(-1, logits.shape[-1])
    t = targets.reshape(-1)
    total, count = 0.0, 0
    for row, target in enumerate(t):
        if ignore_index is not None and target == ignore_index:
            continue
        total -= logp[row, target]
        count += 1
    return total / max(count, 1)


@pytest.mark.parametrize("ignore", [False, True])
@FEW
@given(lead=hnp.array_shapes(min_dims=1, max_dims=2, min_side=1, max_side=4),
       V=st.integers(1, 6), seed=seeds)
def test_cross_entropy(ignore, lead, V, seed):
    """2-D (N, V) and 3-D (B, T, V) logits; with ignore_index, at least one row is ignored."""
    rng = np.random.default_rng(seed)
    logits = leaf(rng, lead + (V,), scale=3.0)
    targets = rng.integers(0, V, size=lead)
    ignore_index = None
    if ignore:
        ignore_index = -100
        flat = targets.reshape(-1)
        flat[rng.random(flat.size) < 0.4] = ignore_index
        flat[rng.integers(flat.size)] = ignore_index  # at least one row ignored
    loss = F.cross_entropy(logits, targets, ignore_index=ignore_index)
    assert loss.shape == () and loss.dtype == np.float64
    np.testing.assert_allclose(loss.item(), np_cross_entropy(logits.data, targets, ignore_index),
                               rtol=1e-12, atol=1e-14)
    assert ts.gradcheck(lambda z: F.cross_entropy(z, targets, ignore_index=ignore_index), logits)


def test_cross_entropy_ignored_rows_get_no_gradient(rng):
    logits = leaf(rng, (2, 3, 5))
    targets = np.array([[1, -1, 4], [-1, 0, 2]])
    F.cross_entropy(logits, targets, ignore_index=-1).backward()
    assert (logits.grad[0, 1] == 0).all() and (logits.grad[1, 0] == 0).all()
    assert (logits.grad[0, 0] != 0).any()
    # each counted row's gradient is (softmax - onehot) / n_counted: it sums to zero
    np.testing.assert_allclose(logits.grad.sum(axis=-1), np.zeros((2, 3)), atol=1e-15)
    p = np.exp(np_log_softmax(logits.data[1, 2], -1))
    np.testing.assert_allclose(logits.grad[1, 2], (p - np.eye(5)[2]) / 4, rtol=1e-12)


def test_cross_entropy_with_every_row_ignored_is_zero(rng):
    logits = leaf(rng, (3, 4))
    loss = F.cross_entropy(logits, np.full(3, 7), ignore_index=7)
    assert loss.item() == 0.0
    loss.backward()
    assert (logits.grad == 0).all()


def test_cross_entropy_matches_minus_mean_log_softmax(rng):
    logits = leaf(rng, (6, 5))
    targets = np.array([0, 4, 4, 2, 1, 3])
    by_hand = -F.log_softmax(logits, axis=-1)[np.arange(6), targets].mean()
    np.testing.assert_allclose(F.cross_entropy(logits, targets).item(), by_hand.item(), rtol=1e-12)
    # also as a Tensor of targets, and in float32
    loss32 = F.cross_entropy(Tensor(logits.data.astype(np.float32)), Tensor(targets))
    assert loss32.dtype == np.float32
    np.testing.assert_allclose(loss32.item(), by_hand.item(), rtol=1e-5)


def test_cross_entropy_is_stable_for_huge_logits():
    logits = Tensor(np.array([[1e4, 0.0, -1e4]]), requires_grad=True)
    with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
        loss = F.cross_entropy(logits, np.array([1]))
        loss.backward()
    np.testing.assert_allclose(loss.item(), 1e4, rtol=1e-12)
    np.testing.assert_allclose(logits.grad, [[1.0, -1.0, 0.0]], atol=1e-12)


def test_cross_entropy_rejects_float_targets(rng):
    with pytest.raises(TypeError, match="integer class indices.*astype\\(np.int64\\)"):
        F.cross_entropy(leaf(rng, (2, 3)), np.array([0.0, 1.0]))


def test_cross_entropy_refuses_a_negative_target_without_ignore_index():
    """A -1 used to score class V-1 (NumPy's negative indexing): nanoGPT's padding trained silently."""
    logits = Tensor(np.zeros((3, 4), np.float32), requires_grad=True)
    with pytest.raises(ValueError, match=r"target -1 at position \(2,\) is outside the valid range "
                                         r"\[0, 4\) of the 4 classes: pass ignore_index=-1"):
        F.cross_entropy(logits, [1, 0, -1])
    with pytest.raises(ValueError, match=r"target 4 at position \(1, 0\) .*\[0, 4\)"):
        F.cross_entropy(Tensor(np.zeros((2, 2, 4))), np.array([[0, 1], [4, 2]]))
    with pytest.raises(ValueError, match=r"target -1 .*ignore_index is -100"):
        F.cross_entropy(logits, [1, -100, -1], ignore_index=-100)


@pytest.mark.parametrize("ignore_index", [-1, -100, 2, 10**6])
def test_cross_entropy_ignores_any_ignore_index_value(ignore_index):
    """PyTorch's default -100 was an IndexError; every integer is a valid ignore_index."""
    logits = Tensor(np.log(np.array([[1.0, 2.0, 1.0], [1.0, 1.0, 2.0], [3.0, 1.0, 1.0]])),
                    requires_grad=True)
    targets = np.array([1, ignore_index, 0])
    loss = F.cross_entropy(logits, targets, ignore_index=ignore_index)
    np.testing.assert_allclose(loss.item(), -(np.log(2 / 4) + np.log(3 / 5)) / 2, rtol=1e-12)
    loss.backward()
    assert (logits.grad[1] == 0).all()


def test_cross_entropy_refuses_bad_shapes_and_ignore_index_types(rng):
    logits = leaf(rng, (2, 3, 5))
    with pytest.raises(ValueError, match=r"5 targets for logits of shape \(2, 3, 5\).*\(2, 3\)"):
        F.cross_entropy(logits, np.zeros(5, dtype=int))
    assert F.cross_entropy(logits, np.zeros(6, dtype=int)).shape == ()  # flat targets are fine
    with pytest.raises(ValueError, match="V >= 1"):
        F.cross_entropy(Tensor(np.zeros((2, 0))), np.zeros(2, dtype=int))
    with pytest.raises(TypeError, match="ignore_index must be an integer, got -100.0"):
        F.cross_entropy(logits, np.zeros((2, 3), dtype=int), ignore_index=-100.0)


def test_cross_entropy_of_no_rows_is_zero(rng):
    logits = Tensor(np.zeros((0, 4)), requires_grad=True)
    loss = F.cross_entropy(logits, np.zeros(0, dtype=int))
    assert loss.item() == 0.0
    loss.backward()
    assert logits.grad.shape == (0, 4)
