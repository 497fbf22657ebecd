"""compute_per_token (adaptive/compute.py): the matmul FLOPs each token executed, against the
analytic count, against an independent count of every product the forward ran, and (where the
ledger exists) against the ledger's flops_matmul."""
import numpy as np
import pytest

import tinysparse as ts
from tinysparse.adaptive import KVCache
from tinysparse.adaptive import kv_cache
from tinysparse.adaptive.compute import padding_flops
from tinysparse.adaptive.mod import mod_blocks
from tinysparse.engine import attention, ops
from tinysparse.gpt import GPT, GPTConfig
from tinysparse.moe import primitives

KINDS = {
    "dense": dict(),
    "moe-shared": dict(n_expert=5, top_k=2, d_expert=12, n_shared=1),
    "moe-capacity": dict(n_expert=4, top_k=2, d_expert=8, capacity_factor=0.5),
    "null-zero": dict(n_expert=4, top_k=2, d_expert=8, n_null=3),
    "null-identity": dict(n_expert=4, top_k=2, d_expert=8, n_null=2, null_kind="identity"),
    "top-p": dict(n_expert=6, top_k=2, d_expert=8, top_p=0.6, max_k=4),
    "mod": dict(mod_capacity=0.3),
    "mod-null": dict(mod_capacity=0.5, n_expert=4, top_k=2, d_expert=8, n_null=2),
}


def _model(kind, seed=0):
    ts.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=29, n_layer=2, n_head=2, n_embd=12, block_size=11,
                          **KINDS[kind])).eval()
    for m in model.moe_layers():       # spread router scores: tokens take different expert counts
        m.router.weight.data = m.router.weight.data * 80
    for m in mod_blocks(model):        # and the MoD routers', so the causal rule is ragged
        m.router.weight.data = m.router.weight.data * 80
    return model


@pytest.fixture
def executed(monkeypatch):
    """Every matmul FLOP the forward executes, summed at the Functions that run products."""
    total = [0]

    def wrap(cls, flops):
        forward = cls.forward

        def counted(ctx, *args, **kw):
            out = forward(ctx, *args, **kw)
            total[0] += flops(args, kw, out)
            return out
        monkeypatch.setattr(cls, "forward", staticmethod(counted))

    wrap(ops.MatMul, lambda a, kw, out: 2 * out.size * a[0].shape[-1])
    wrap(primitives.GroupedLinear, lambda a, kw, out: 2 * a[0].shape[0] * a[1].shape[1] * a[1].shape[2])
    wrap(attention.PackedCausalAttention,                 # Q K^T and P V over the full T x T
         lambda a, kw, out: 4 * a[0].shape[0] * a[0].shape[1] ** 2 * (a[0].shape[2] // 3))
    def keys(kw, T):                                      # the key slice: up to the last query's position
        start = kw["start"]
        return int(start.max()) + 1 if hasattr(start, "shape") else start + T

    wrap(kv_cache.CachedAttention,                        # T new queries x every key up to them
         lambda a, kw, out: 4 * a[0].shape[0] * a[0].shape[1] * keys(kw, a[0].shape[1])
         * (a[0].shape[2] // 3))
    return total


def test_a_dense_token_costs_the_textbook_count():
    model = _model("dense")
    idx = np.random.default_rng(0).integers(0, 29, size=(3, 7))
    with ts.no_grad():
        model(idx)
    C, L, T, V = 12, 2, 7, 29
    expected = L * (24 * C * C + 4 * T * C) + 2 * C * V        # 2N + 4 L T C, N = 12 L C^2 + V C
    np.testing.assert_array_equal(model.compute_per_token(), np.full((3, 7), expected))


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_the_sum_over_tokens_is_every_product_the_forward_ran(kind, executed):
    model = _model(kind)
    idx = np.random.default_rng(1).integers(0, 29, size=(2, 9))
    with ts.no_grad():
        model(idx)
    per_token = model.compute_per_token()
    assert per_token.shape == (2, 9) and per_token.sum() + padding_flops(model) == executed[0]
    if kind.startswith("mod"):
        assert padding_flops(model) > 0        # eval's causal rule: rows of a ragged batch padded
        model.train()
        executed[0] = 0
        with ts.no_grad():
            model(idx)                         # top-k: the same count per row, no padding
        assert padding_flops(model) == 0 and model.compute_per_token().sum() == executed[0]
        skipped = ~model.h[1].last["chosen"]
        assert skipped.any()
    if kind not in ("dense", "moe-shared"):                   # dropless top-k: k experts for all
        assert len(np.unique(per_token)) >= 2                  # tokens ran different expert counts


@pytest.mark.parametrize("kind", ["dense", "null-identity", "top-p", "mod-null"])
def test_a_cached_step_counts_its_keys(kind, executed):
    model = _model(kind)
    idx = np.random.default_rng(2).integers(0, 29, size=(2, 8))
    cache = KVCache(2, 11)
    with ts.no_grad():
        model(idx[:, :5], cache=cache)
        before = executed[0]
        model(idx[:, 5:6], cache=cache)                        # one new token against 6 keys
    assert model.compute_per_token().shape == (2, 1)
    assert model.compute_per_token().sum() + padding_flops(model) == executed[0] - before


@pytest.mark.parametrize("kind", ["dense", "mod-null"])
def test_the_head_is_counted_on_the_positions_it_ran_on(kind, executed):
    model = _model(kind)
    idx = np.random.default_rng(6).integers(0, 29, size=(2, 8))
    with ts.no_grad():
        model(idx)
        full = model.compute_per_token()
        executed[0] = 0
        model(idx, logits_to_keep=3)                          # the head on the last 3 positions
    kept = model.compute_per_token()
    head = 2 * 12 * 29
    np.testing.assert_array_equal(kept[:, :5], full[:, :5] - head)
    np.testing.assert_array_equal(kept[:, 5:], full[:, 5:])
    assert kept.sum() + padding_flops(model) == executed[0]


def test_a_moe_token_pays_for_the_experts_it_ran():
    model = _model("null-zero")
    idx = np.random.default_rng(3).integers(0, 29, size=(1, 10))
    with ts.no_grad():
        model(idx)
    C, d, T, V = 12, 8, 10, 29
    expected = np.full((1, 10), 2 * C * V, dtype=np.float64)
    for layer in model.moe_layers():
        ran = (layer._last_routing[1].slot_position >= 0).sum(axis=1)   # real experts per token
        expected += 8 * C * C + 4 * C * T + 2 * C * (4 + 3) + 4 * C * d * ran[None, :]
    np.testing.assert_array_equal(model.compute_per_token(), expected)


def test_compute_per_token_before_a_forward_is_refused():
    with pytest.raises(ValueError, match="reads the last forward: run the model first"):
        _model("dense").compute_per_token()


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("keep", [0, 3])                       # 3: the head on the last 3 only
def test_the_sum_equals_the_ledgers_count(kind, keep):
    ledger = pytest.importorskip("tinysparse.ledger")          # runs once the ledger has landed
    model = _model(kind)
    idx = np.random.default_rng(4).integers(0, 29, size=(2, 9))
    with ts.no_grad(), ledger.count(model) as led:
        model(idx, logits_to_keep=keep)
    assert model.compute_per_token().sum() + padding_flops(model) == led.totals.flops_matmul


@pytest.mark.parametrize("threshold", [1e-6, 0.3, 1.0])          # all exit at once, some, none
@pytest.mark.parametrize("extra", [{}, dict(mod_capacity=0.5, n_expert=4, top_k=2, d_expert=8)])
def test_early_exits_count_their_heads_and_propagation(threshold, extra, executed):
    from tinysparse.adaptive.early_exit import forward_with_exits
    ts.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=29, n_layer=3, n_head=2, n_embd=12, block_size=11,
                          exit_scale=1.0, **extra))
    for p in model.parameters():
        p.data = p.data * 6
    idx = np.random.default_rng(5).integers(0, 29, size=(2, 8))
    model.train()
    executed[0] = 0
    with ts.no_grad():
        model(idx, np.roll(idx, -1, axis=1))                    # LayerSkip's loss: layer 1's head too
    assert model.compute_per_token().sum() + padding_flops(model) == executed[0]
    model.eval()
    cache = KVCache(3, 11)
    with ts.no_grad():
        model(idx[:, :7], cache=cache)
        executed[0] = 0
        forward_with_exits(model, idx[:, 7:], cache, threshold)
    assert model.compute_per_token().sum() + padding_flops(model) == executed[0]
