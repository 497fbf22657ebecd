"""The KV cache (adaptive/kv_cache.py, adaptive/decode.py): cached sampling returns the tokens of
uncached sampling, seed for seed, for every model kind that can be cached; past block_size each
window runs without one (a cache rebuilt there would be full and never read); models that
cannot be cached are refused (kv_cache=True) or fall back (None)."""
import numpy as np
import pytest

import tinysparse as ts
from tinysparse.adaptive import KVCache, cached_attention, decode
from tinysparse.engine import random as ts_random
from tinysparse.gpt import GPT, GPTConfig

KINDS = {
    "dense": dict(),
    "moe-softmax": dict(n_expert=5, top_k=2, d_expert=12),
    "moe-sigmoid-shared-bias": dict(n_expert=4, top_k=1, d_expert=8, n_shared=1, score="sigmoid",
                                    balance="bias"),
    "moe-null-identity": dict(n_expert=4, top_k=2, d_expert=8, n_null=2, null_kind="identity",
                              target_experts=1.0),
    "moe-top-p": dict(n_expert=5, top_k=2, d_expert=8, top_p=0.5, max_k=3),
    "mod": dict(mod_capacity=0.25),
}


def _model(kind, dtype=np.float32, sharpen=8.0, seed=11, **extra):
    """A random model whose weights are scaled up so its next-token distributions are peaked:
    the drawn tokens then depend on the logits, not only on the generator (a near-uniform
    distribution would let a wrong cache pass)."""
    ts_random.manual_seed(seed)
    cfg = GPTConfig(vocab_size=37, n_layer=2, n_head=2, n_embd=16, block_size=9,
                    **{**KINDS.get(kind, {}), **extra})
    model = GPT(cfg)
    for p in model.parameters():
        p.data = (p.data * sharpen).astype(dtype)
    return model.eval()


def _generate(model, prompt, n, seed, kv_cache, **kw):
    ts_random.manual_seed(seed)
    return model.generate(prompt, n, kv_cache=kv_cache, **kw)


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("prompt_len", [1, 4, 9])  # 9 = block_size: the window slides at once
def test_cached_sampling_returns_the_uncached_tokens(kind, prompt_len):
    model = _model(kind)
    rng = np.random.default_rng(prompt_len)
    prompt = rng.integers(0, 37, size=(2, prompt_len))
    for seed, kw in ((0, {}), (1, {"temperature": 0.7, "top_k": 5})):
        plain = _generate(model, prompt, 17, seed, False, **kw)     # 17 > block_size: the window slides
        cached = _generate(model, prompt, 17, seed, True, **kw)
        assert np.array_equal(plain, cached), (kind, prompt_len, seed)
        assert np.array_equal(_generate(model, prompt, 17, seed, None, **kw), cached)  # the default
    # the tokens are the model's, not the generator's alone: other weights, same seed, other tokens
    other = _generate(_model(kind, seed=12), prompt, 17, 0, True)
    assert not np.array_equal(other, _generate(model, prompt, 17, 0, True))


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_cached_logits_equal_the_full_forward_at_every_step(kind):
    """Token by token in float64: the cached step's logits are the full forward's last row."""
    model = _model(kind, dtype=np.float64, sharpen=3.0)
    idx = np.random.default_rng(5).integers(0, 37, size=(3, 9))
    cache = KVCache(model.config.n_layer, model.config.block_size)
    with ts.no_grad():
        first, _ = model(idx[:, :3], cache=cache)
        full, _ = model(idx[:, :3])
        assert np.array_equal(first.data, full.data)        # the prefill is the uncached forward itself
        for t in range(3, 9):
            step, _ = model(idx[:, t:t + 1], cache=cache)
            full, _ = model(idx[:, :t + 1])
            np.testing.assert_allclose(step.data[:, 0], full.data[:, -1], rtol=1e-10, atol=1e-10)
    assert cache.length == 9 and cache.room() == 0


@pytest.mark.parametrize("prompt_len, caches, windows", [(3, 1, 13), (9, 0, 20), (12, 0, 20)])
def test_past_block_size_each_window_runs_without_a_cache(monkeypatch, prompt_len, caches, windows):
    made, steps = [], []

    class CountingCache(KVCache):
        def __init__(self, *a):
            super().__init__(*a)
            made.append(self)

    monkeypatch.setattr(decode, "KVCache", CountingCache)
    model = _model("dense")
    forward = type(model).forward

    def spy(self, idx, *args, cache=None, **kwargs):
        steps.append((idx.shape[1], cache is None))
        return forward(self, idx, *args, cache=cache, **kwargs)
    monkeypatch.setattr(type(model), "forward", spy)
    prompt = np.arange(prompt_len)[None, :] % 37
    _generate(model, prompt, 20, 0, True)
    # a prompt of 3: step 0 fills 3 positions, steps 1-6 add one each (9 = block_size), steps
    # 7-19 slide: each runs the 9-token window without a cache; a prompt of 9 or more slides at once
    assert len(made) == caches and all(c.length <= model.config.block_size for c in made)
    assert steps.count((9, True)) == windows and len(steps) == 20
    cached = [T for T, uncached in steps if not uncached]              # the prefill, then one token each
    assert cached == ([prompt_len] + [1] * (9 - prompt_len) if caches else [])


def test_models_that_cannot_be_cached_are_refused_or_fall_back():
    prompt = np.array([[1, 2, 3]])
    for extra, name in ((dict(n_expert=4, top_k=2, router="expert_choice"), "expert_choice"),
                        (dict(n_expert=4, top_k=2, capacity_factor=1.0), "capacity_factor")):
        model = _model("dense", **extra)
        assert name in model.kv_cache_obstacle()
        with pytest.raises(ValueError, match=rf"kv_cache=True: .*{name}.*use kv_cache=False"):
            model.generate(prompt, 3, kv_cache=True)
        assert np.array_equal(_generate(model, prompt, 12, 4, None),   # auto: the uncached loop
                              _generate(model, prompt, 12, 4, False))
    assert _model("moe-softmax").kv_cache_obstacle() is None


def test_cache_misuse_is_refused_with_the_fix():
    model = _model("dense")
    cache = KVCache(model.config.n_layer, model.config.block_size)
    with ts.no_grad():
        model(np.zeros((1, 9), dtype=np.int64), cache=cache)
        with pytest.raises(ValueError, match="holds 9 of 9 positions: 1 more do not fit; start a new"):
            model(np.zeros((1, 1), dtype=np.int64), cache=cache)
        with pytest.raises(ValueError, match="KVCache has 3 layers, the model 2"):
            model(np.zeros((1, 1), dtype=np.int64), cache=KVCache(3, 9))
        # a cache longer than the model's block_size has room the position table has not
        longer = KVCache(model.config.n_layer, 12)
        model(np.zeros((1, 6), dtype=np.int64), cache=longer)
        model(np.zeros((1, 3), dtype=np.int64), cache=longer)           # positions 6..8: the last fit
        with pytest.raises(ValueError, match=r"^positions 9..9 are outside the model's block_size 9; "
                                             r"start a new cache from the last block_size tokens$"):
            model(np.zeros((1, 1), dtype=np.int64), cache=longer)
        assert longer.length == 9                                        # the refused token left no trace
    qkv = ts.Tensor(np.ones((1, 2, 6)), requires_grad=True)
    with pytest.raises(ValueError, match=r"for sampling: run the model under ts.no_grad\(\)"):
        cached_attention(qkv, 2, KVCache(1, 4).layers[0], 0)
    with pytest.raises(ValueError, match="kv_cache='yes' must be None"):
        model.generate(np.zeros((1, 1), dtype=np.int64), 2, kv_cache="yes")


def test_unwritten_cache_entries_are_not_attended_to():
    """A key marked not kept (keep=False: a token that skipped the layer) is invisible to later
    queries, and a query still sees its own key: compare with attention over the kept keys only."""
    rng = np.random.default_rng(2)
    B, nh, hd = 1, 2, 3
    qkv = rng.standard_normal((B, 4, 3 * nh * hd))
    layer = KVCache(1, 8).layers[0]
    keep = np.array([[True, False, True, False]])
    with ts.no_grad():
        cached_attention(ts.Tensor(qkv[:, :3]), nh, layer, 0, keep[:, :3])
        y = cached_attention(ts.Tensor(qkv[:, 3:]), nh, layer, 3, keep[:, 3:]).data   # own key not kept
        ref = ts.functional.causal_self_attention(ts.Tensor(qkv[:, [0, 2, 3]]), nh).data[:, -1]
    np.testing.assert_allclose(y[:, 0], ref, rtol=1e-12, atol=1e-12)


def test_one_token_behind_a_dense_cache_skips_the_mask_with_the_same_bits():
    """The fast path (one new token, every earlier position written and kept) leaves the mask
    out; forcing the masked path on a copy of the cache gives the very same bits."""
    rng = np.random.default_rng(4)
    B, nh, hd, T = 2, 2, 3, 6
    qkv = rng.standard_normal((B, T, 3 * nh * hd)).astype(np.float32)
    fast, masked = KVCache(1, 8).layers[0], KVCache(1, 8).layers[0]
    with ts.no_grad():
        for layer in (fast, masked):
            cached_attention(ts.Tensor(qkv[:, :4]), nh, layer, 0)            # a prefill
        assert fast.dense and masked.dense
        masked.dense = False                                                # take the masked path
        for t in (4, 5):
            a = cached_attention(ts.Tensor(qkv[:, t:t + 1]), nh, fast, t).data
            b = cached_attention(ts.Tensor(qkv[:, t:t + 1]), nh, masked, t).data
            assert a.tobytes() == b.tobytes()
        full = ts.functional.causal_self_attention(ts.Tensor(qkv), nh).data[:, 5]
    np.testing.assert_allclose(a[:, 0], full, rtol=1e-6, atol=1e-6)
    assert fast.dense and fast.filled == 6


@pytest.mark.parametrize("second", ["gap", "keep", "positions"])
def test_a_cache_stops_being_dense_at_a_gap_a_dropped_entry_or_scattered_positions(second):
    """dense (the fast path's licence) is lost for good by a write that skips a position, comes
    with a keep mask (even an all-True one: not checked, to spare a pass), or comes as a
    positions array (a Mixture-of-Depths block)."""
    rng = np.random.default_rng(5)
    layer = KVCache(1, 8).layers[0]
    k = rng.standard_normal((1, 2, 2, 3))
    layer.write(k, k, 0)
    assert layer.dense
    if second == "gap":
        layer.write(k, k, 3)
    elif second == "keep":
        layer.write(k, k, 2, keep=np.array([[True, True]]))
    else:
        layer.write(k, k, np.array([[2, 3]]))
    assert not layer.dense
    layer.write(k[:, :, :1], k[:, :, :1], 5)
    assert not layer.dense
