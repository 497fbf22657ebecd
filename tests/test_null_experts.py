"""Null experts (adaptive/null_experts.py): gradients, no expert rows for null slots, MoE++'s tau,
the compute-budget controller, causality, refusals."""
import numpy as np
import pytest

import tinysparse as ts
from tinysparse import optim
from tinysparse.adaptive.null_experts import NullExpertRouter
from tinysparse.gpt import GPT, GPTConfig
from tinysparse.moe import MoE
from tinysparse.moe import dispatch
from sampling_helpers import sample_both_ways


def _layer(null_kind="zero", seed=0, n_embd=5, n_expert=3, top_k=2, n_null=2, tau=0.75,
           target=None, score="softmax", balance="aux"):
    """A float64 MoE with a null-expert router whose logits are spread out (eps never flips a pick)."""
    ts.manual_seed(seed)
    router = NullExpertRouter(n_embd, n_expert, top_k, n_null, null_kind, tau, target, score=score,
                              balance_bias=balance == "bias", dtype=np.float64)
    layer = MoE(n_embd, n_expert, top_k, 3, router=router, balance=balance, aux_coef=0.5,
                z_coef=0.1, n_shared=1, dispatch_backend="numpy")
    layer.astype(np.float64)
    router.weight.data = np.random.default_rng(seed).standard_normal(router.weight.shape) * 2.0
    return layer


@pytest.mark.parametrize("null_kind", ["zero", "identity"])
@pytest.mark.parametrize("score,balance", [("softmax", "aux"), ("sigmoid", "bias")])
def test_null_expert_layer_gradchecks(null_kind, score, balance):
    layer = _layer(null_kind, score=score, balance=balance)
    layer.router.null_bias.data = np.array([0.05, -0.02], dtype=np.float32)   # a controller at work
    x = ts.Tensor(np.random.default_rng(1).standard_normal((1, 7, 5)), requires_grad=True)
    w = np.random.default_rng(2).standard_normal((1, 7, 5))

    def loss(*_):
        return (layer(x) * w).sum() + layer.aux_loss

    loss()
    nulls = (layer._last_routing[1].slot_position < 0).sum()
    assert 0 < nulls < 14                                  # some slots null, some real: both paths run
    assert ts.gradcheck(loss, x, *layer.parameters())


@pytest.mark.parametrize("null_kind", ["zero", "identity"])
def test_null_slots_execute_no_expert_rows(null_kind, monkeypatch):
    layer = _layer(null_kind)
    rows = []
    real_mm = dispatch.NumpyDispatch.grouped_mm
    monkeypatch.setattr(dispatch.NumpyDispatch, "grouped_mm",
                        lambda self, x, *a: rows.append(x.shape[0]) or real_mm(self, x, *a))
    x = ts.Tensor(np.random.default_rng(4).standard_normal((2, 9, 5)))
    with ts.no_grad():
        out = layer(x).data.reshape(18, 5)
        r = layer.router(x.reshape(-1, 5))
    real = int((r.selected < 3).sum())
    assert 0 < real < 36 and rows == [real, real]           # w1 and w2 saw only the real slots' rows
    assert layer.stats["experts_per_token"] == real / 18
    # a token whose k slots are all null: zero -> only the shared expert; identity -> + gates * x
    all_null = np.flatnonzero((r.selected >= 3).all(axis=1))
    assert all_null.size, "choose a seed with a token routed to null experts only"
    t = all_null[0]
    shared = layer.shared(x.reshape(-1, 5)).data[t]
    expected = shared if null_kind == "zero" else shared + x.data.reshape(18, 5)[t] * r.gates.data[t].sum()
    np.testing.assert_allclose(out[t], expected, rtol=1e-12)


def test_balance_loss_weights_the_null_experts_by_tau():
    for tau in (1.0, 0.75, 0.0):
        layer = _layer(tau=tau)
        x = ts.Tensor(np.random.default_rng(5).standard_normal((11, 5)))
        r = layer.router(x)
        f = np.bincount(r.selected.reshape(-1), minlength=5) / r.selected.size
        P = r.probs.data.mean(axis=0)
        eta = np.array([1, 1, 1, tau, tau])
        assert np.isclose(layer.router.load_balance_loss(r).item(), 5 * (eta * f * P).sum())
    assert (f[3:] > 0).any()                               # the null experts carry load: tau matters


def _budget_run(target, steps, rate=0.1, seed=0):
    """Train a tiny null-expert GPT on random bytes; the mean real experts per token, per step."""
    ts.manual_seed(seed)
    cfg = GPTConfig(vocab_size=32, n_layer=2, n_head=2, n_embd=16, block_size=16, n_expert=4,
                    top_k=2, d_expert=8, n_null=2, target_experts=target, budget_rate=rate)
    model = GPT(cfg)
    opt = optim.AdamW(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(seed)
    means = []
    for _ in range(steps):
        idx = rng.integers(0, 32, size=(4, 16))
        _, loss = model(idx, np.roll(idx, -1, axis=1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        means.append(np.mean([m.stats["experts_per_token"] for m in model.moe_layers()]))
        model.update_router_bias()
    return model, np.array(means)


def test_the_budget_controller_reaches_its_target_within_10_percent():
    target = 1.0
    model, means = _budget_run(target, steps=120)
    windows = means.reshape(6, 20).mean(axis=1)             # the mean over each 20 steps
    assert means[0] > 1.1 * target                          # it starts outside the band ...
    assert np.all(np.abs(windows[1:] - target) <= 0.1 * target), windows  # ... and stays inside
    assert all(abs(m.router.null_bias.data[0]) > 0 for m in model.moe_layers())
    assert not any(p is m.router.null_bias for m in model.moe_layers() for p in model.parameters())
    _, free = _budget_run(None, steps=120)                  # no controller: no budget held
    assert abs(free[-20:].mean() - target) > 0.1 * target


def test_null_expert_model_is_causal_and_samples_the_same_with_the_cache():
    ts.manual_seed(3)
    cfg = GPTConfig(vocab_size=40, n_layer=2, n_head=2, n_embd=16, block_size=10, n_expert=4,
                    top_k=2, d_expert=8, n_null=3, null_kind="identity", target_experts=1.0)
    model = GPT(cfg).eval()
    for m in model.moe_layers():
        m.router.null_bias.data = np.full(3, 0.1, dtype=np.float32)
    idx = np.random.default_rng(0).integers(0, 40, size=(2, 10))
    changed = idx.copy()
    changed[:, 6:] = (changed[:, 6:] + 7) % 40
    with ts.no_grad():
        model64 = model.astype(np.float64)
        a, b = model64(idx)[0].data, model64(changed)[0].data
    # float64; not bitwise: the experts' row groups change with later tokens, and BLAS sums a
    # row differently in a group of another size
    np.testing.assert_allclose(a[:, :6], b[:, :6], rtol=1e-12, atol=1e-12)        # earlier positions: unchanged
    assert not np.allclose(a[:, 6:], b[:, 6:])
    model.astype(np.float32)
    np.testing.assert_array_equal(*sample_both_ways(model, idx[:, :3], 15, seed=9))


@pytest.mark.parametrize("kw, words", [
    (dict(n_null=2), "GPTConfig.n_null=2 is invalid: n_null must be 0 in a dense model"),
    (dict(n_expert=4, n_null=2, router="expert_choice"), "use --router topk"),
    (dict(n_expert=4, n_null=-1), "GPTConfig.n_null=-1 is invalid: n_null must be an integer >= 0"),
    (dict(n_expert=4, n_null=2, null_kind="copy"), "null_kind must be one of zero, identity"),
    (dict(n_expert=4, n_null=2, null_tau=float("nan")), "GPTConfig.null_tau=nan"),
    (dict(n_expert=4, n_null=2, target_experts=3.0), "target_experts must be None or a finite number in [0, 2]"),
    (dict(n_expert=4, target_experts=1.0), "set --n-null"),
    (dict(n_expert=4, n_null=2, budget_rate=-1.0), "fix --budget-rate"),
])
def test_bad_null_expert_settings_are_refused_naming_them(kw, words):
    with pytest.raises(ValueError) as e:
        GPTConfig(**kw)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_null_experts_train_from_the_command_line(tmp_path):
    from test_cli import TINY, assert_one_line_error, run
    proc = run("train", *TINY, "--max-iters", 3, "--out-dir", tmp_path / "run", "--n-expert", 4,
               "--n-null", 2, "--null-kind", "identity", "--null-tau", 0.75, "--target-experts", 1)
    assert proc.returncode == 0 and "done: step 3" in proc.stdout, proc.stderr
    s = run("sample", "--out-dir", tmp_path / "run", "--max-new-tokens", 12)
    assert s.returncode == 0 and s.stderr == ""
    assert_one_line_error(run("train", *TINY, "--out-dir", tmp_path / "bad", "--n-null", 2),
                          "GPTConfig.n_null=2", "--n-expert")


