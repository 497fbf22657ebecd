"""The MoE layer: gradients for every setting, routers, balancing, PyTorch parity, GPT integration."""
import math

import numpy as np
import pytest

import tinysparse as ts
from tinysparse import functional as F
from tinysparse import optim
from tinysparse.gpt import GPT, GPTConfig
from tinysparse.moe import (ExpertChoiceRouter, Experts, MoE, RoutingResult, TopKRouter,
                            capacity)



def _layer(seed=0, n_embd=4, n_expert=3, top_k=2, d_expert=3, router_scale=1.0, **kw):
    """A tiny float64 MoE whose router logits are spread out: eps-nudges never flip a selection."""
    ts.manual_seed(seed)
    layer = MoE(n_embd, n_expert, top_k, d_expert, **kw).astype(np.float64)
    rng = np.random.default_rng(seed)
    layer.router.weight.data = rng.standard_normal(layer.router.weight.shape) * router_scale
    return layer


# ---- gradients ----------------------------------------------------------------------------------

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


# ---- the routers --------------------------------------------------------------------------------

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


# ---- determinism and statistics -----------------------------------------------------------------

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


def test_stats():
    layer = _layer(n_expert=3, top_k=2, capacity_factor=0.5)
    layer(ts.Tensor(np.random.default_rng(9).standard_normal((1, 6, 4))))
    s = layer.stats
    assert s["tokens_per_expert"].sum() == 12 and s["mean_load"] == 4.0
    assert s["max_load"] == s["tokens_per_expert"].max()
    C = math.ceil(0.5 * 12 / 3)
    kept = np.minimum(s["tokens_per_expert"], C).sum()
    assert s["dropped_fraction"] == pytest.approx((12 - kept) / 12)
    assert 0 < s["router_entropy"] <= math.log(3) + 1e-12


def test_active_parameters():
    layer = MoE(8, 6, 2, 5, n_shared=1)
    expert = 8 * 5 + 5 + 5 * 8 + 8
    assert layer.experts.params_per_expert() == expert
    assert layer.active_parameters() == 8 * 6 + 2 * expert + expert   # router + top-2 + shared
    assert layer.num_parameters() == 8 * 6 + 6 * expert + expert


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


# ---- settings that are refused ------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,setting", [
    (dict(top_k=5), "top_k"), (dict(top_k=0), "top_k"), (dict(n_expert=0, top_k=1), "n_expert"),
    (dict(capacity_factor=0.0), "capacity_factor"), (dict(capacity_factor=-1.0), "capacity_factor"),
    (dict(d_expert=0), "d_expert"), (dict(n_shared=-1), "n_shared"), (dict(router="hash"), "router"),
    (dict(score="relu"), "score"), (dict(balance="loss"), "balance"),
    (dict(dispatch_backend="triton"), "dispatch_backend"), (dict(aux_coef=-0.1), "aux_coef"),
    (dict(z_coef=-1.0), "z_coef"), (dict(jitter=1.0), "jitter"),
    (dict(router="expert_choice", balance="bias"), "balance"),
])
def test_invalid_settings_are_refused(kwargs, setting):
    args = dict(n_embd=8, n_expert=4, top_k=2, d_expert=4)
    args.update(kwargs)
    with pytest.raises(ValueError, match=setting) as info:
        MoE(**args)
    if setting in ("router", "score", "balance"):
        assert "one of" in str(info.value) or "'aux'" in str(info.value)  # the allowed values are named


# ---- inside a GPT -------------------------------------------------------------------------------

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


# ---- a batch without tokens (issue 11, kind 3) --------------------------------------------------

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


# ---- inputs and settings outside their domain (issue 11, kind 2) --------------------------------

def test_an_input_of_the_wrong_width_is_refused():
    # (2, 3, 8) reshaped to (-1, 4) would silently be 12 tokens of width 4
    layer = MoE(4, 3, 2)
    with pytest.raises(ValueError, match=r"MoE\(n_embd=4\) got an input of shape \(2, 3, 8\)"):
        layer(ts.Tensor(np.zeros((2, 3, 8), dtype=np.float32)))


@pytest.mark.parametrize("setting,value", [
    ("capacity_factor", math.inf), ("capacity_factor", math.nan), ("capacity_factor", True),
    ("jitter", math.nan), ("jitter", -0.1), ("aux_coef", math.nan), ("aux_coef", math.inf),
    ("z_coef", math.nan), ("bias_update_rate", math.nan), ("bias_update_rate", -1e-3),
    ("top_k", 2.0), ("n_shared", 0.5), ("d_expert", 4.0),
])
def test_non_finite_and_meaningless_settings_are_refused(setting, value):
    with pytest.raises(ValueError, match=rf"MoE {setting}=.* is invalid: {setting} must be"):
        MoE(8, 4, **{"top_k": 2, setting: value})


def test_a_numpy_array_input_works_as_a_tensor_does():
    layer = _layer()
    x = np.random.default_rng(13).standard_normal((1, 5, 4))
    np.testing.assert_array_equal(layer(x).data, layer(ts.Tensor(x)).data)   # was an AttributeError


def test_capacity_is_capped_at_the_number_of_slots():
    assert capacity(0.75, 8, 3) == 2
    assert capacity(1e300, 8, 4) == 8             # was an int too large for the plan's arrays
    assert capacity(1.0, 0, 4) == 1
    with pytest.raises(ValueError, match="capacity_factor"):
        capacity(math.inf, 8, 4)
    huge, dropless = _layer(capacity_factor=1e300), _layer()
    x = ts.Tensor(np.random.default_rng(12).standard_normal((1, 5, 4)))
    np.testing.assert_array_equal(huge(x).data, dropless(x).data)
    assert huge.stats["dropped_fraction"] == 0.0


def test_capacity_rounds_up_where_the_product_is_not_whole():
    # C = ceil(factor * T*k / E); each product here has a fraction, so floor gives one less
    assert capacity(1.25, 6, 4) == 2           # 1.875
    assert capacity(1.0, 10, 4) == 3           # 2.5
    assert capacity(2.0, 7, 3) == 5            # 4.67
    assert capacity(0.3, 10, 4) == 1           # 0.75: ceil, not the floor of 0 raised to 1


def test_the_layer_keeps_ceil_of_the_fractional_capacity():
    # 5 tokens x top-2 over 4 experts, factor 1: C = ceil(2.5) = 3. Every token prefers experts 0
    # and 1, so each gets 5 slots and keeps 3: 4 of 10 slots dropped (floor, C = 2, drops 6)
    layer = _layer(n_expert=4, capacity_factor=1.0)
    layer.router.weight.data = np.tile([10.0, 5.0, -10.0, -10.0], (4, 1))
    layer(ts.Tensor(np.random.default_rng(3).random((1, 5, 4)) + 1.0))     # x > 0: fixed choice
    assert layer.stats["tokens_per_expert"].tolist() == [5, 5, 0, 0]
    assert layer.stats["dropped_fraction"] == 0.4


def test_default_expert_width_counts_the_shared_experts():
    # d_expert = 4 * n_embd // (top_k + n_shared): a token's active FFN compute is the dense MLP's
    assert MoE(8, 4, top_k=2).d_expert == 16                   # 32 // 2
    assert MoE(8, 4, top_k=2, n_shared=1).d_expert == 10       # 32 // 3
    assert MoE(8, 4, top_k=1, n_shared=2).d_expert == 10       # 32 // 3
    layer = MoE(8, 4, top_k=2, n_shared=2)                     # 32 // 4 = 8, shared 2 x 8 wide
    assert layer.d_expert == 8 and layer.experts.w1.shape == (4, 8, 8)
    assert layer.shared.c_fc.weight.shape == (8, 16)           # Linear(n_embd, n_shared * d)
    assert MoE(1, 8, top_k=8, n_shared=1).d_expert == 1        # 4 // 9 = 0: at least one unit
    assert MoE(8, 4, top_k=2, d_expert=5, n_shared=1).d_expert == 5    # given: kept
    gpt = GPT(GPTConfig(n_embd=8, n_head=2, n_layer=1, n_expert=4, top_k=2, n_shared=1))
    assert gpt.moe_layers()[0].d_expert == 10


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


def test_routers_built_directly_check_their_settings():
    with pytest.raises(ValueError, match=r"TopKRouter top_k must be an integer in \[1, 4\], got 5"):
        TopKRouter(8, 4, 5)
    with pytest.raises(ValueError, match=r"ExpertChoiceRouter capacity_factor must be a positive "
                                         r"finite number, got inf"):
        ExpertChoiceRouter(8, 4, math.inf)
    with pytest.raises(ValueError, match=r"router jitter must be a finite number in \[0, 1\)"):
        TopKRouter(8, 4, 2, jitter=math.nan)
    with pytest.raises(ValueError, match=r"Experts d_expert must be an integer >= 1, got 0"):
        Experts(4, 8, 0)


def test_print_a_moe_model():
    ts.manual_seed(0)
    text = repr(MoE(8, 4, 2, d_expert=5, n_shared=1, capacity_factor=1.25))
    assert text.splitlines()[:4] == [
        "MoE(",
        "  n_embd=8, n_expert=4, top_k=2, d_expert=5, n_shared=1, router='topk', "
        "capacity_factor=1.25, balance='aux'",
        "  (router): TopKRouter(8 -> 4 experts, score='softmax')",
        "  (experts): Experts(n_expert=4, n_embd=8, d_expert=5, bias=True)"]


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
