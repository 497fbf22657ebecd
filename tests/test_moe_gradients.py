"""The MoE layer's gradients (tinysparse/moe/layer.py): gradchecked in float64 on every element for
every combination of router, score, balancing and capacity (with a shared expert, the aux and
z-losses on), and without the aux loss or the bias parameters; forward and backward are
deterministic; output, aux loss and every gradient match a loop-over-experts MoE written in
PyTorch.
"""
import numpy as np
import pytest

import tinysparse as ts
from moe_helpers import float64_moe as _layer


SETTINGS = [(router, score, balance, cf)
            for router in ("topk", "expert_choice") for score in ("softmax", "sigmoid")
            for balance in ("aux", "bias", "none") for cf in (None, 0.5)
            if not (router == "expert_choice" and balance == "bias")]


@pytest.mark.parametrize("router,score,balance,cf", SETTINGS)
def test_moe_gradcheck(router, score, balance, cf):
    layer = _layer(router=router, score=score, balance=balance, capacity_factor=cf, n_shared=1,
                   aux_coef=0.5, z_coef=0.1)
    if balance == "bias":  # a bias that changes the selection, so the check covers it
        layer.router.bias.data = np.array([0.3, -0.2, 0.0], dtype=np.float32)
    x = ts.Tensor(np.random.default_rng(1).standard_normal((1, 5, 4)), requires_grad=True)
    w = np.random.default_rng(2).standard_normal((1, 5, 4))

    def loss(*_):
        out = (layer(x) * w).sum()
        return out if layer.aux_loss is None else out + layer.aux_loss

    loss()
    if cf is not None and router == "topk":
        assert layer.stats["dropped_fraction"] > 0          # the capacity really drops slots
    assert layer.aux_loss is not None                        # z_coef > 0: the z-loss is always on here
    assert ts.gradcheck(loss, x, *layer.parameters())


def test_moe_gradcheck_without_aux_or_bias_params():
    layer = _layer(balance="none", z_coef=0.0, bias=False, top_k=1)
    x = ts.Tensor(np.random.default_rng(3).standard_normal((2, 3, 4)), requires_grad=True)
    assert layer(x).shape == (2, 3, 4) and layer.aux_loss is None
    assert layer.router.normalize_gates is False     # top-1: the raw probability is the gate
    assert ts.gradcheck(lambda *_: layer(x), x, *layer.parameters())


def test_moe_is_deterministic():
    layer = _layer(n_shared=1, capacity_factor=1.0, n_expert=3, top_k=2)
    x = ts.Tensor(np.random.default_rng(8).standard_normal((2, 7, 4)), requires_grad=True)
    runs = []
    for _ in range(2):
        layer.zero_grad()
        x.grad = None
        out = layer(x)
        ((out * out).sum() + layer.aux_loss).backward()
        runs.append([out.data.copy(), x.grad] + [p.grad for p in layer.parameters()])
    for a, b in zip(*runs):
        assert np.array_equal(a, b)


# ---- PyTorch parity -----------------------------------------------------------------------------

@pytest.mark.parametrize("score", ["softmax", "sigmoid"])
def test_moe_matches_pytorch(score):
    torch = pytest.importorskip("torch")
    B, T, C, E, k, d = 2, 5, 6, 4, 2, 5
    layer = _layer(n_embd=C, n_expert=E, top_k=k, d_expert=d, n_shared=1, score=score,
                   aux_coef=0.1, z_coef=0.01)
    x_np = np.random.default_rng(10).standard_normal((B, T, C))
    w_np = np.random.default_rng(11).standard_normal((B, T, C))
    x = ts.Tensor(x_np, requires_grad=True)
    out = layer(x)
    ((out * w_np).sum() + layer.aux_loss).backward()

    names = [n for n, _ in layer.named_parameters()]
    tp = {n: torch.tensor(p.data, requires_grad=True) for n, p in layer.named_parameters()}
    tx = torch.tensor(x_np, requires_grad=True)
    x2 = tx.reshape(-1, C)
    logits = x2 @ tp["router.weight"]
    if score == "softmax":
        scores = probs = torch.softmax(logits, dim=-1)
    else:
        scores = torch.sigmoid(logits)
        probs = scores / scores.sum(-1, keepdim=True)
    top, ids = torch.topk(scores, k, dim=-1)
    gates = top / top.sum(-1, keepdim=True)
    y = torch.zeros_like(x2)
    for e in range(E):   # the loop-over-experts MoE
        t, j = torch.nonzero(ids == e, as_tuple=True)
        h = torch.nn.functional.gelu(x2[t] @ tp["experts.w1"][e] + tp["experts.b1"][e], approximate="tanh")
        y = y.index_add(0, t, (h @ tp["experts.w2"][e] + tp["experts.b2"][e]) * gates[t, j, None])
    hs = torch.nn.functional.gelu(x2 @ tp["shared.c_fc.weight"] + tp["shared.c_fc.bias"], approximate="tanh")
    y = y + hs @ tp["shared.c_proj.weight"] + tp["shared.c_proj.bias"]
    f = torch.bincount(ids.reshape(-1), minlength=E).double() / ids.numel()
    aux = 0.1 * E * (f * probs.mean(0)).sum() + 0.01 * (torch.logsumexp(logits, -1) ** 2).mean()
    ((y.reshape(B, T, C) * torch.tensor(w_np)).sum() + aux).backward()

    np.testing.assert_array_equal(layer.router(x.reshape(-1, C)).expert_ids, ids.numpy())
    np.testing.assert_allclose(out.data, y.detach().numpy().reshape(B, T, C), rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(layer.aux_loss.item(), aux.item(), rtol=1e-6)
    np.testing.assert_allclose(x.grad, tx.grad.numpy(), rtol=1e-6, atol=1e-10)
    for n, p in zip(names, layer.parameters()):
        np.testing.assert_allclose(p.grad, tp[n].grad.numpy(), rtol=1e-6, atol=1e-10, err_msg=n)
