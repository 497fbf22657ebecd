"""Mixture-of-Depths (adaptive/mod.py): gradients, the residual added once, the router scaling
only the processed path, training's top-k is not causal (documented) while sampling's rule is,
skipped tokens write no K/V, the random control, refusals, the command line."""
import numpy as np
import pytest

import tinysparse as ts
from tinysparse import optim
from tinysparse.adaptive import KVCache
from tinysparse.adaptive.mod import MoDBlock, mod_stats, set_rule
from tinysparse.gpt import GPT, Block, GPTConfig
from sampling_helpers import sample_both_ways



def _block(capacity=0.43, aux_coef=0.5, seed=0, C=6, **extra):
    ts.manual_seed(seed)
    cfg = GPTConfig(vocab_size=11, n_layer=2, n_head=2, n_embd=C, block_size=8, **extra)
    mod = MoDBlock(Block(cfg), C, capacity, aux_coef).astype(np.float64)
    mod.router.weight.data = np.random.default_rng(seed).standard_normal((C, 1))   # spread scores
    return mod


def _model(seed=0, dtype=np.float32, **extra):
    ts.manual_seed(seed)
    cfg = GPTConfig(vocab_size=31, n_layer=2, n_head=2, n_embd=12, block_size=12,
                    **{"mod_capacity": 0.25, **extra})
    model = GPT(cfg)
    for p in model.parameters():
        p.data = (p.data * 6).astype(dtype)   # peaked distributions and well spread router scores
    return model


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("inner", [{}, dict(n_expert=3, top_k=2, d_expert=4, n_null=1)])
def test_mod_block_gradchecks(training, inner):
    mod = _block(**inner).train(training)
    x = ts.Tensor(np.random.default_rng(1).standard_normal((2, 7, 6)), requires_grad=True)
    w = np.random.default_rng(2).standard_normal((2, 7, 6))

    def loss(*_):
        out = (mod(x) * w).sum()
        aux = [a for a in (mod.aux_loss, getattr(mod.block.mlp, "aux_loss", None)) if a is not None]
        return out + sum(aux[1:], aux[0]) if aux else out

    loss()
    chosen = mod.last["chosen"]
    assert 0 < chosen.sum() < chosen.size
    if training:
        assert (chosen.sum(axis=1) == 4).all() and mod.aux_loss is not None   # ceil(0.43 * 7)
    else:
        assert (~mod.last["keep"]).any()        # the causal rule made a ragged batch: pads run too
    assert ts.gradcheck(loss, x, *mod.parameters())


def test_skipped_tokens_pass_untouched_and_the_residual_is_added_once():
    mod = _block(capacity=0.5).train()
    x = ts.Tensor(np.random.default_rng(3).standard_normal((2, 7, 6)))
    out = mod(x).data
    skipped = ~mod.last["chosen"]
    np.testing.assert_array_equal(out[skipped], x.data[skipped])         # bit for bit: no gate on them
    full = _block(capacity=1.0).train()
    full.router.weight.data[:] = 0.0                                     # sigmoid(0) = 1/2 everywhere
    y = full(x).data
    branch = full.block(x).data - x.data                                 # attention + FFN, no residual
    np.testing.assert_allclose(y, x.data + 0.5 * branch, rtol=1e-12, atol=1e-12)


def test_the_bce_teaches_the_causal_rule_the_top_k_decision():
    mod = _block(capacity=0.3, aux_coef=1.0).train()
    x = ts.Tensor(np.random.default_rng(4).standard_normal((3, 7, 6)))
    mod(x)
    r, t = mod.last["logits"], mod.last["chosen"].astype(float)
    bce = np.mean(np.logaddexp(0, r) - t * r)                            # -t log s(r) - (1-t) log s(-r)
    assert np.isclose(mod.aux_loss.item(), bce)
    model = _model(mod_aux_coef=1.0)
    opt = optim.AdamW(model.parameters(), lr=1e-2)
    rng = np.random.default_rng(0)
    accuracy = []
    for _ in range(40):
        idx = rng.integers(0, 31, size=(4, 12))
        _, loss = model(idx, np.roll(idx, -1, axis=1))
        accuracy.append(mod_stats(model)["predictor_accuracy"])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert np.mean(accuracy[-10:]) > np.mean(accuracy[:5]) and np.mean(accuracy[-10:]) > 0.85


def test_training_top_k_is_not_causal_and_sampling_rule_is():
    model = _model().astype(np.float64)
    idx = np.random.default_rng(5).integers(0, 31, size=(1, 12))
    leaked = False
    model.train()
    for t, tok in [(t, tok) for t in range(6, 12) for tok in range(31)]:
        changed = idx.copy()
        changed[0, t] = tok
        a, b = model(idx)[0].data, model(changed)[0].data
        if not np.allclose(a[:, :6], b[:, :6], rtol=1e-12, atol=1e-12):
            leaked = True                      # a later token took an earlier token's place in top-k
            break
    assert leaked
    model.eval()                               # the causal rule: sigmoid(r) > 0.5
    changed = idx.copy()
    changed[:, 6:] = (changed[:, 6:] + 5) % 31
    with ts.no_grad():
        a, b = model(idx)[0].data, model(changed)[0].data
    np.testing.assert_allclose(a[:, :6], b[:, :6], rtol=1e-12, atol=1e-12)
    assert not np.allclose(a[:, 6:], b[:, 6:])


@pytest.mark.parametrize("extra", [{}, dict(mod_router="random"),
                                   dict(n_expert=4, top_k=2, d_expert=8, n_null=2)])
def test_skipped_tokens_write_no_keys_and_cached_sampling_is_exact(extra):
    model = _model(**extra).eval()
    idx = np.random.default_rng(6).integers(0, 31, size=(2, 9))
    cache = KVCache(2, 12)
    with ts.no_grad():
        model(idx, cache=cache)
    chosen = model.h[1].last["chosen"]
    assert 0 < chosen.sum() < chosen.size
    np.testing.assert_array_equal(cache.layers[1].valid[:, :9], chosen)   # routed block: chosen only
    assert cache.layers[0].valid[:, :9].all()                             # the first block: everyone
    np.testing.assert_array_equal(*sample_both_ways(model, idx[:, :2], 20, seed=2))


def test_the_random_control_routes_the_same_capacity_without_a_router_loss():
    model = _model(mod_router="random").train()
    idx = np.random.default_rng(7).integers(0, 31, size=(3, 12))
    model(idx, idx)
    assert model.h[1].aux_loss is None and (model.h[1].last["chosen"].sum(axis=1) == 3).all()
    assert mod_stats(model)["predictor_accuracy"] is None


def test_eval_rule_topk_against_causal_and_refusals():
    model = _model().eval()
    idx = np.random.default_rng(8).integers(0, 31, size=(2, 12))
    with ts.no_grad():
        causal = model(idx, idx)[1].item()
        set_rule(model, "topk")
        topk = model(idx, idx)[1].item()
    assert causal != topk and (model.h[1].last["chosen"].sum(axis=1) == 3).all()
    with pytest.raises(ValueError, match="use 'causal' or 'topk'"):
        set_rule(model, "random")


@pytest.mark.parametrize("kw, words", [
    (dict(mod_capacity=0.0), "mod_capacity must be None or a finite number in (0, 1]"),
    (dict(mod_capacity=1.5), "try --mod-capacity 0.125"),
    (dict(mod_capacity=0.5, mod_every=5), "mod_every must be at most n_layer=4"),
    (dict(mod_every=0), "fix --mod-every"),
    (dict(mod_router="hash"), "mod_router must be 'learned' or 'random'"),
    (dict(mod_aux_coef=-1.0), "fix --mod-aux-coef"),
])
def test_bad_mod_settings_are_refused_naming_them(kw, words):
    with pytest.raises(ValueError) as e:
        GPTConfig(**kw)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_mod_trains_from_the_command_line(tmp_path):
    from test_cli import TINY, run
    proc = run("train", *TINY, "--max-iters", 3, "--out-dir", tmp_path / "run", "--n-layer", 2,
               "--mod-capacity", 0.25)
    assert proc.returncode == 0 and "done: step 3" in proc.stdout, proc.stderr
    s = run("sample", "--out-dir", tmp_path / "run", "--max-new-tokens", 12)
    assert s.returncode == 0 and s.stderr == ""
