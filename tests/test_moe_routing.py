"""Which experts the MoE layer's routers pick and with what gates (tinysparse/moe/router.py, inside
the layer): top-k ties go to the lowest expert id, expert choice takes each expert's best tokens,
the jitter is seeded and only in training; sigmoid scores where sigmoid underflows or saturates
(issue 11, kind 1, the router's part): the gates are the ratio of the sigmoids, the selection
follows the logits where float32 sigmoids tie, and log_sigmoid is finite and gradchecks over the
whole float64 range. test_router.py checks the routers built directly.
"""
import numpy as np
import pytest

import tinysparse as ts
from moe_helpers import float64_moe as _layer
from tinysparse.moe import MoE, TopKRouter


def test_topk_ties_go_to_the_lowest_expert_id():
    router = TopKRouter(4, 5, 2)
    router.weight.data = np.zeros((4, 5), dtype=np.float32)   # every score equal
    r = router(ts.Tensor(np.ones((3, 4), dtype=np.float32)))
    np.testing.assert_array_equal(r.expert_ids, [[0, 1]] * 3)
    np.testing.assert_allclose(r.gates.data, 0.5)


def test_expert_choice_takes_each_experts_best_tokens():
    layer = _layer(router="expert_choice", score="sigmoid", capacity_factor=1.0)  # cap = ceil(6 / 3) = 2
    layer.router.weight.data = np.abs(layer.router.weight.data)  # a large positive x: every expert likes it
    x_np = np.random.default_rng(0).standard_normal((6, 4))
    x_np[2], x_np[4] = 3.0, -3.0                 # token 2: every expert's favourite; token 4: nobody's
    x = ts.Tensor(x_np)
    r = layer.router(x)
    assert np.all(r.expert_ids[2] >= 0) and np.all(r.expert_ids[4] == -1)
    scores = r.scores.data
    for e in range(3):
        chosen = sorted(np.argsort(-scores[:, e], kind="stable")[:2])
        assert sorted(np.flatnonzero((r.expert_ids == e).any(axis=1))) == chosen
    present = r.expert_ids >= 0
    assert (~present).any() and present.sum(axis=1).max() > 1   # tokens with fewer and more experts
    rows = np.nonzero(present)[0]
    np.testing.assert_allclose(r.gates.data[present], scores[rows, r.expert_ids[present]])
    assert np.all(r.gates.data[~present] == 0)
    layer(x.reshape(1, 6, 4))
    np.testing.assert_array_equal(layer.stats["tokens_per_expert"], [2, 2, 2])


def test_jitter_only_in_training_and_seeded():
    layer = _layer(jitter=0.5)
    x = ts.Tensor(np.random.default_rng(6).standard_normal((1, 5, 4)))
    ts.manual_seed(7)
    a = layer(x).data
    ts.manual_seed(7)
    b = layer(x).data
    layer.eval()
    c, d = layer(x).data, layer(x).data
    assert np.array_equal(a, b) and np.array_equal(c, d) and not np.array_equal(a, c)


# ---- sigmoid scores where sigmoid underflows or saturates (issue 11, kind 1, the router's part) ---

def _sigmoid_router(logits, top_k, dtype):
    """A TopKRouter whose logits for the one token are exactly `logits` (identity weights)."""
    E = len(logits)
    router = TopKRouter(E, E, top_k, score="sigmoid")
    router.weight.data = np.eye(E, dtype=dtype)
    return router(ts.Tensor(np.array([logits], dtype=dtype), requires_grad=True))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("base", [-20.0, -200.0, -2000.0])
def test_sigmoid_gates_of_very_negative_logits_are_their_ratio_not_nan(base, dtype):
    # s_i / (s_1 + s_2) with s = sigmoid(logit): the issue's -20, -20.5 -> [0.6225, 0.3775]; the
    # same far below, where sigmoid underflows to 0 (0/0 gave [nan, nan])
    r = _sigmoid_router([base, base - 0.5], 2, dtype)
    np.testing.assert_allclose(r.gates.data, [[0.6224593, 0.3775407]], rtol=1e-6)
    np.testing.assert_allclose(r.probs.data, [[0.6224593, 0.3775407]], rtol=1e-6)


@pytest.mark.parametrize("logits, chosen, gates", [
    ([-300.0, -200.0, -250.0, -201.0], [1, 3], [0.7310586, 0.2689414]),   # sigmoid is 0 for all
    ([20.0, 25.0, 18.0, 30.0], [3, 1], [0.5, 0.5]),                        # sigmoid is 1.0 for all
])
def test_sigmoid_selection_follows_the_logits_where_float32_sigmoid_ties(logits, chosen, gates):
    r = _sigmoid_router(logits, 2, np.float32)
    assert r.expert_ids.tolist() == [chosen]                 # was [0, 1]: ties went to the lowest id
    np.testing.assert_allclose(r.gates.data, [gates], rtol=1e-6)


def test_a_sigmoid_moe_far_below_zero_has_finite_output_loss_and_gradients():
    ts.manual_seed(0)
    layer = MoE(4, 4, 2, d_expert=3, score="sigmoid")
    layer.router.weight.data = np.eye(4, dtype=np.float32) * 100.0
    x = ts.Tensor(-3.0 - np.random.default_rng(0).random((1, 5, 4)).astype(np.float32),
                  requires_grad=True)                        # logits between -400 and -300
    out = layer(x)
    (out.sum() + layer.aux_loss).backward()
    assert np.isfinite(out.data).all() and np.isfinite(layer.aux_loss.item())
    assert np.isfinite(x.grad).all() and all(np.isfinite(p.grad).all() for p in layer.parameters())


def test_log_sigmoid_is_finite_and_gradchecks_over_the_whole_float64_range():
    from tinysparse.moe.router import log_sigmoid
    x = ts.Tensor(np.array([-1e300, -700.0, -50.0, -1.5, 0.25, 40.0, 700.0, 1e300]), requires_grad=True)
    y = log_sigmoid(x).data
    with np.errstate(over="ignore"):
        expected = -np.logaddexp(0.0, -x.data)               # log sigmoid, by NumPy
    # (above ~37, log(1 + e^-x) rounds to 0 where the true value is ~ -e^-x: absolute error < 1e-16)
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-16)
    assert ts.gradcheck(log_sigmoid, ts.Tensor(x.data[1:-1], requires_grad=True))
    log_sigmoid(x).sum().backward()                          # d/dx log sigmoid = 1 - sigmoid(x)
    np.testing.assert_allclose(x.grad, [1.0, 1.0, 1.0, 0.8175745, 0.4378235, 0.0, 0.0, 0.0],
                               rtol=1e-6, atol=1e-17)
