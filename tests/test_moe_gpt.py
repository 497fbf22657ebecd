"""The MoE layer inside a GPT (tinysparse/gpt.py, gpt_config.py): a MoE GPT trains with the aux
losses added to its training loss (its eval loss is cross-entropy alone), the config reaches every
router, the router bias is updated and kept in the state dict, and the active parameters and FLOPs
per token are counted against the dense model's.
"""
import numpy as np
import pytest

import tinysparse as ts
from tinysparse import functional as F
from tinysparse import optim
from tinysparse.gpt import GPT, GPTConfig


def _tiny_gpt(**kw):
    ts.manual_seed(0)
    return GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=8, n_expert=4, top_k=2, **kw))


def test_gpt_with_moe_trains_and_adds_aux_loss():
    model = _tiny_gpt(balance="aux")
    assert len(model.moe_layers()) == 2
    data = np.random.default_rng(0).integers(0, 256, (4, 9))
    idx, targets = data[:, :-1], data[:, 1:]
    opt = optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(8):
        logits, loss = model(idx, targets)
        ce = F.cross_entropy(logits, targets).item()
        aux = sum(m.aux_loss.item() for m in model.moe_layers())
        assert loss.item() == pytest.approx(ce + aux, rel=1e-5) and aux > 0
        assert model.last_aux_loss == pytest.approx(aux, rel=1e-5)
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.update_router_bias()            # a no-op with balance='aux'
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5
    assert model.h[0].mlp.router.weight.grad is not None


def test_gpt_eval_loss_is_cross_entropy_alone():
    # the aux losses are training regularisers: a MoE's val loss must compare with a dense one's
    model = _tiny_gpt(balance="aux").eval()
    data = np.random.default_rng(2).integers(0, 256, (3, 9))
    logits, loss = model(data[:, :-1], data[:, 1:])
    assert sum(m.aux_loss.item() for m in model.moe_layers()) > 0
    assert loss.item() == F.cross_entropy(logits, data[:, 1:]).item()


def test_gpt_config_reaches_every_router():
    model = _tiny_gpt(balance="bias", bias_update_rate=0.05, jitter=0.1)
    for layer in model.moe_layers():
        assert layer.router.bias_update_rate == 0.05 and layer.router.jitter == 0.1
    data = np.random.default_rng(1).integers(0, 256, (2, 9))
    model(data[:, :-1], data[:, 1:])[1].backward()
    model.update_router_bias()
    step = np.abs(model.h[0].mlp.router.bias.data)           # one step: 0 or gamma = 0.05
    assert step.max() == np.float32(0.05) and set(step.tolist()) <= {0.0, float(np.float32(0.05))}


def test_gpt_router_bias_in_state_dict_and_updated():
    model = _tiny_gpt(balance="bias")
    data = np.random.default_rng(1).integers(0, 256, (2, 9))
    _, loss = model(data[:, :-1], data[:, 1:])
    loss.backward()
    model.update_router_bias()
    bias = model.h[1].mlp.router.bias.data.copy()
    assert np.any(bias != 0)
    state = model.state_dict()
    assert "h.0.mlp.router.bias" in state and "h.1.mlp.router.bias" in state
    other = _tiny_gpt(balance="bias")
    other.load_state_dict(state)
    np.testing.assert_array_equal(other.h[1].mlp.router.bias.data, bias)
    logits_a, _ = model(data[:, :-1])
    logits_b, _ = other(data[:, :-1])
    np.testing.assert_array_equal(logits_a.data, logits_b.data)


def test_gpt_counts_active_parameters():
    dense = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=8))
    assert dense.num_active_parameters() == dense.num_parameters()
    moe = _tiny_gpt()                          # d_expert = 4 * 16 // 2 = 32: compute-matched
    C, E, k, d = 16, 4, 2, 32
    expert = C * d + d + d * C + C
    mlp = C * 4 * C + 4 * C + 4 * C * C + C
    assert moe.num_active_parameters() == dense.num_parameters() + 2 * (C * E + k * expert - mlp)
    assert moe.num_parameters() - moe.num_active_parameters() == 2 * (E - k) * expert
    assert moe.flops_per_token() - dense.flops_per_token() == 6 * 2 * (C * E + k * expert - mlp)
    # the stacked experts follow GPT-2's init: biases zero, the residual projection scaled down
    mlp0 = moe.h[0].mlp.experts
    assert np.all(mlp0.b1.data == 0) and np.all(mlp0.b2.data == 0)
    assert mlp0.w2.data.std() < mlp0.w1.data.std()
