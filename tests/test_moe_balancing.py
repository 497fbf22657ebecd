"""How the MoE layer balances its experts' load (tinysparse/moe/router.py, inside the layer): the
load-balancing loss is its coefficient under uniform routing and E times worse with everything on
one expert, the router z-loss matches its formula, and the balancing bias moves toward underloaded
experts (training forwards only), changing the selection but not the gates.
"""
import numpy as np

import tinysparse as ts
from moe_helpers import float64_moe as _layer
from tinysparse.moe import MoE, RoutingResult


def test_load_balance_loss_is_alpha_under_uniform_routing():
    E, alpha = 4, 0.01
    layer = MoE(8, E, 1, 4, aux_coef=alpha, z_coef=0.0)
    probs = ts.Tensor(np.full((8, E), 1.0 / E), requires_grad=True)   # P_e = 1/E
    ids = np.arange(8).reshape(8, 1) % E                               # f_e = 1/E
    r = RoutingResult(ids, None, probs, probs, None)
    loss = layer.router.load_balance_loss(r) * alpha
    assert abs(loss.item() - alpha) < 1e-12
    # everything on expert 0 with all the probability there: E times worse
    r = RoutingResult(np.zeros((8, 1), dtype=np.int64), None,
                      ts.Tensor(np.eye(E)[np.zeros(8, dtype=int)]), None, None)
    assert abs(layer.router.load_balance_loss(r).item() - E) < 1e-12


def test_z_loss_matches_its_formula():
    layer = _layer(z_coef=1.0, balance="none")
    x = np.random.default_rng(4).standard_normal((1, 5, 4))
    layer(ts.Tensor(x))
    logits = x.reshape(5, 4) @ layer.router.weight.data
    lse = np.log(np.exp(logits).sum(axis=1))
    assert abs(layer.aux_loss.item() - (lse ** 2).mean()) < 1e-12


def test_bias_moves_toward_underloaded_experts():
    layer = _layer(balance="bias", n_expert=4, top_k=1)
    layer.router.weight.data[:] = 0.0
    layer.router.weight.data[0, 1] = 1.0        # positive first feature -> expert 1
    x = np.zeros((1, 8, 4))
    x[0, :, 0] = 1.0                            # every token prefers expert 1
    layer(ts.Tensor(x))
    np.testing.assert_array_equal(layer.stats["tokens_per_expert"], [0, 8, 0, 0])
    layer.update_bias()
    np.testing.assert_allclose(layer.router.bias.data, [0.001, -0.001, 0.001, 0.001], rtol=1e-6)
    layer.update_bias()                         # no new load since: nothing to do
    np.testing.assert_allclose(layer.router.bias.data, [0.001, -0.001, 0.001, 0.001], rtol=1e-6)
    layer.eval()
    layer(ts.Tensor(x))
    layer.update_bias()                         # eval forwards do not count as load
    np.testing.assert_allclose(layer.router.bias.data, [0.001, -0.001, 0.001, 0.001], rtol=1e-6)


def test_bias_changes_selection_not_gates():
    layer = _layer(balance="bias", n_expert=4, top_k=2)
    x = ts.Tensor(np.random.default_rng(5).standard_normal((6, 4)))
    before = layer.router(x)
    layer.router.bias.data = np.array([0.0, 0.0, 0.0, 100.0], dtype=np.float32)  # force expert 3
    after = layer.router(x)
    assert np.all(after.expert_ids[:, 0] == 3)
    assert not np.array_equal(before.expert_ids, after.expert_ids)
    s = before.scores.data                       # the unbiased scores did not move
    np.testing.assert_array_equal(s, after.scores.data)
    picked = s[np.arange(6)[:, None], after.expert_ids]
    np.testing.assert_allclose(after.gates.data, picked / picked.sum(axis=1, keepdims=True), rtol=1e-12)
