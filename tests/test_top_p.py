"""Dynamic top-p routing (adaptive/top_p.py): the smallest set of experts reaching p, capped at
max_k; gradients; the entropy loss; causality; refusals; the command line."""
import numpy as np
import pytest

import tinysparse as ts
from tinysparse.adaptive.top_p import TopPRouter
from tinysparse.gpt import GPT, GPTConfig
from tinysparse.moe import MoE
from sampling_helpers import sample_both_ways


def _router(top_p=0.5, max_k=4, score="softmax", coef=0.3, seed=0, n_embd=5, n_expert=6, scale=1.5):
    ts.manual_seed(seed)
    router = TopPRouter(n_embd, n_expert, top_p, max_k, coef, nominal_k=2, score=score,
                        dtype=np.float64)
    router.weight.data = np.random.default_rng(seed).standard_normal(router.weight.shape) * scale
    return router


def _brute_force(probs, p, max_k):
    """Per token: experts in decreasing probability until the sum reaches p, at most max_k."""
    out = []
    for row in probs:
        order = np.argsort(-row, kind="stable")
        chosen, mass = [], 0.0
        for e in order:
            if mass >= p or len(chosen) == max_k:
                break
            chosen.append(int(e))
            mass += row[e]
        out.append(chosen)
    return out


@pytest.mark.parametrize("top_p,max_k", [(0.3, 6), (0.5, 3), (0.9, 2), (1.0, 6)])
def test_each_token_takes_the_smallest_set_reaching_p(top_p, max_k):
    router = _router(top_p, max_k)
    x = ts.Tensor(np.random.default_rng(7).standard_normal((40, 5)))
    r = router(x)
    expected = _brute_force(r.probs.data, top_p, max_k)
    for t, chosen in enumerate(expected):
        ids = r.expert_ids[t]
        assert ids[:len(chosen)].tolist() == chosen and (ids[len(chosen):] == -1).all()
        np.testing.assert_array_equal(r.gates.data[t, :len(chosen)], r.probs.data[t, chosen])
        assert (r.gates.data[t, len(chosen):] == 0).all()
    counts = {len(c) for c in expected}
    if top_p == 0.5:
        assert len(counts) >= 2                               # some tokens take more than others


@pytest.mark.parametrize("score", ["softmax", "sigmoid"])
def test_top_p_layer_gradchecks_with_its_entropy_loss(score):
    ts.manual_seed(0)
    router = _router(0.5, 4, score)
    layer = MoE(5, 6, 2, 3, router=router, aux_coef=0.5, z_coef=0.1, dispatch_backend="numpy")
    layer.astype(np.float64)
    x = ts.Tensor(np.random.default_rng(1).standard_normal((1, 7, 5)), requires_grad=True)
    w = np.random.default_rng(2).standard_normal((1, 7, 5))

    def loss(*_):
        return (layer(x) * w).sum() + layer.aux_loss

    loss()
    per_token = (layer.router(x.reshape(-1, 5)).expert_ids >= 0).sum(axis=1)
    assert len(set(per_token.tolist())) >= 2                  # tokens with different expert counts
    assert ts.gradcheck(loss, x, *layer.parameters())


def test_the_entropy_loss_is_the_routers_mean_entropy_and_punishes_flat_routers():
    x = ts.Tensor(np.random.default_rng(3).standard_normal((9, 5)))
    losses = []
    for scale in (0.0, 3.0):                                  # a flat router, then a peaked one
        router = _router(coef=0.3, scale=scale)
        r = router(x)
        p = r.probs.data
        expected = 0.3 * -(p * np.log(p)).sum(axis=1).mean()
        assert np.isclose(router.extra_loss(r).item(), expected)
        losses.append(router.extra_loss(r).item())
    assert np.isclose(losses[0], 0.3 * np.log(6)) and losses[1] < losses[0]
    assert _router(coef=0.0).extra_loss(r) is None


def test_top_p_model_is_causal_and_samples_the_same_with_the_cache():
    ts.manual_seed(4)
    model = GPT(GPTConfig(vocab_size=40, n_layer=2, n_head=2, n_embd=16, block_size=10,
                          n_expert=5, top_k=2, d_expert=8, top_p=0.5, max_k=3)).eval()
    for m in model.moe_layers():
        m.router.weight.data = m.router.weight.data * 60      # spread: tokens take 1..3 experts
    idx = np.random.default_rng(0).integers(0, 40, size=(2, 10))
    changed = idx.copy()
    changed[:, 5:] = (changed[:, 5:] + 3) % 40
    with ts.no_grad():
        model64 = model.astype(np.float64)
        a, b = model64(idx)[0].data, model64(changed)[0].data
    counts = (model.moe_layers()[0]._last_routing[1].slot_position >= 0).sum(axis=1)  # per token
    assert len(set(counts.tolist())) >= 2
    # float64; not bitwise: the experts' row groups change with later tokens, and BLAS sums a
    # row differently in a group of another size
    np.testing.assert_allclose(a[:, :5], b[:, :5], rtol=1e-12, atol=1e-12)
    assert not np.allclose(a[:, 5:], b[:, 5:])
    model.astype(np.float32)
    np.testing.assert_array_equal(*sample_both_ways(model, idx[:, :3], 15, seed=9))


@pytest.mark.parametrize("kw, words", [
    (dict(top_p=0.5), "GPTConfig.top_p=0.5 is invalid: top_p must be None in a dense model"),
    (dict(n_expert=4, top_p=0.0), "top_p must be None or a finite number in (0, 1]"),
    (dict(n_expert=4, top_p=1.5), "try --top-p 0.4"),
    (dict(n_expert=4, top_p=0.5, router="expert_choice"), "use --router topk"),
    (dict(n_expert=4, top_p=0.5, n_null=2), "drop --n-null or --top-p"),
    (dict(n_expert=4, max_k=2), "set --top-p, or leave --max-k unset"),
    (dict(n_expert=4, max_k=-1), "max_k must be None or an integer in [1, n_expert=4]"),
    (dict(n_expert=4, top_p=0.5, max_k=5), "max_k must be None or an integer in [1, n_expert=4]"),
    (dict(n_expert=4, top_p=0.5, entropy_coef=-1.0), "fix --entropy-coef"),
])
def test_bad_top_p_settings_are_refused_naming_them(kw, words):
    with pytest.raises(ValueError) as e:
        GPTConfig(**kw)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_top_p_trains_from_the_command_line(tmp_path):
    from test_cli import TINY, run
    proc = run("train", *TINY, "--max-iters", 3, "--out-dir", tmp_path / "run", "--n-expert", 4,
               "--top-p", 0.5, "--max-k", 3, "--entropy-coef", 0.001)
    assert proc.returncode == 0 and "done: step 3" in proc.stdout, proc.stderr
    s = run("sample", "--out-dir", tmp_path / "run", "--max-new-tokens", 12)
    assert s.returncode == 0 and s.stderr == ""


