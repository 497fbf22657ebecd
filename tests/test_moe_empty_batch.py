"""A batch without tokens (issue 11, kind 3) through the MoE layer (tinysparse/moe/layer.py): an
empty output, a zero aux loss and zero (never missing) gradients for every setting and every
dispatch backend, finite statistics, a balancing bias that does not move, and an empty batch
between real ones changes nothing.
"""
import numpy as np
import pytest

import tinysparse as ts
from moe_helpers import float64_moe as _layer
from tinysparse.moe import MoE


def test_the_issues_empty_batch_gives_an_empty_output_a_zero_aux_loss_and_zero_gradients():
    ts.manual_seed(0)
    layer = MoE(8, 4, 2)                              # n_embd 8, 4 experts, top-2, aux + z-loss
    x = ts.Tensor(np.zeros((1, 0, 8), dtype=np.float32), requires_grad=True)
    out = layer(x)
    assert out.shape == (1, 0, 8)
    assert layer.aux_loss.item() == 0.0               # was NaN: a mean over zero tokens
    (out.sum() + layer.aux_loss).backward()
    assert x.grad.shape == (1, 0, 8)
    for name, p in layer.named_parameters():          # every gradient an array of zeros, never None
        assert p.grad is not None and p.grad.shape == p.shape, name
        assert np.all(p.grad == 0), name
    s = layer.stats
    assert s["router_entropy"] == 0.0 and s["max_over_mean_load"] == 0.0
    assert s["dropped_fraction"] == 0.0 and s["tokens_per_expert"].tolist() == [0, 0, 0, 0]


EMPTY_SETTINGS = [dict(router=router, score=score, capacity_factor=cf, balance=balance,
                       n_shared=shared)
                  for router in ("topk", "expert_choice") for score in ("softmax", "sigmoid")
                  for cf in (None, 1.0) for balance in ("aux", "bias", "none") for shared in (0, 1)
                  if not (router == "expert_choice" and balance == "bias")]


def _empty_batch_run(backend, jitter=0.0, dropout=0.0, **settings):
    ts.manual_seed(0)
    layer = MoE(8, 4, 2, d_expert=5, dispatch_backend=backend, jitter=jitter, dropout=dropout,
                **settings)
    x = ts.Tensor(np.zeros((2, 0, 8), dtype=np.float32), requires_grad=True)
    out = layer(x)
    loss = out.sum() if layer.aux_loss is None else out.sum() + layer.aux_loss
    loss.backward()
    return layer, x, out, loss


@pytest.mark.parametrize("settings", EMPTY_SETTINGS,
                         ids=["-".join(str(v) for v in s.values()) for s in EMPTY_SETTINGS])
def test_every_moe_setting_handles_an_empty_batch(settings):
    layer, x, out, loss = _empty_batch_run("numpy", jitter=0.1, dropout=0.1, **settings)
    assert out.shape == (2, 0, 8) and x.grad.shape == (2, 0, 8)
    assert loss.item() == 0.0
    assert layer.aux_loss is not None and layer.aux_loss.item() == 0.0   # the z-loss is on
    for name, p in layer.named_parameters():
        assert p.grad is not None and np.all(p.grad == 0), name
    if settings["balance"] == "bias":                  # no load: the bias must not move (or NaN)
        layer.update_bias()
        assert layer.router.bias.data.tolist() == [0.0, 0.0, 0.0, 0.0]
    assert all(np.isfinite(v).all() for v in layer.stats.values())


@pytest.mark.parametrize("backend", ["numba", "cuda"])
@pytest.mark.parametrize("router,cf", [("topk", None), ("topk", 1.0), ("expert_choice", None)])
def test_every_dispatch_backend_handles_an_empty_batch(backend, router, cf):
    layer, x, out, loss = _empty_batch_run(backend, router=router, capacity_factor=cf, n_shared=1)
    assert out.shape == (2, 0, 8) and loss.item() == 0.0
    assert all(p.grad is not None and np.all(p.grad == 0) for p in layer.parameters())


def test_an_empty_batch_between_real_ones_changes_nothing():
    layer = _layer(balance="bias", n_expert=4, top_k=2)
    x = ts.Tensor(np.random.default_rng(11).standard_normal((1, 6, 4)))
    before = layer(x).data
    layer(ts.Tensor(np.zeros((1, 0, 4))))
    layer.update_bias()
    np.testing.assert_array_equal(layer(x).data, before)
