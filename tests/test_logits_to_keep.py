"""GPT.forward(idx, logits_to_keep=n): the final layer norm and the head on the last n positions
only (what sampling reads), against the full forward; its refusals; and generate asking for it."""
import numpy as np
import pytest

import tinysparse as ts
from tinysparse.adaptive import KVCache
from tinysparse.gpt import GPT, GPTConfig

KINDS = {"dense": {}, "moe": dict(n_expert=4, top_k=2, d_expert=8), "mod": dict(mod_capacity=0.5)}


def _model(kind, dtype=np.float64):
    ts.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=31, n_layer=2, n_head=2, n_embd=12, block_size=10,
                          **KINDS[kind])).eval()
    for p in model.parameters():
        p.data = (p.data * 4).astype(dtype)      # larger weights: rows far apart, logits far from 0
    return model


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("n", [1, 4])
def test_kept_logits_are_the_last_rows_of_the_full_forward(kind, n):
    model = _model(kind)
    idx = np.random.default_rng(1).integers(0, 31, size=(3, 9))     # B = 3: the slice is strided
    with ts.no_grad():
        full, _ = model(idx)
        kept, _ = model(idx, logits_to_keep=n)
    assert kept.shape == (3, n, 31)
    # to rounding only: BLAS sums a product of fewer rows in another order
    np.testing.assert_allclose(kept.data, full.data[:, -n:], rtol=1e-12, atol=1e-12)
    assert not np.allclose(kept.data, full.data[:, :n])             # the LAST rows, not the first


@pytest.mark.parametrize("n", [9, 12])
def test_keeping_every_position_is_the_default_forward_bit_for_bit(n):
    model = _model("dense", np.float32)
    idx = np.random.default_rng(2).integers(0, 31, size=(2, 9))
    with ts.no_grad():
        full, _ = model(idx)
        kept, _ = model(idx, logits_to_keep=n)
    assert np.array_equal(kept.data, full.data)


def test_a_prefill_keeping_one_row_still_fills_the_cache():
    model = _model("dense")
    idx = np.random.default_rng(3).integers(0, 31, size=(2, 7))
    cache = KVCache(2, 10)
    with ts.no_grad():
        first, _ = model(idx[:, :6], cache=cache, logits_to_keep=1)
        step, _ = model(idx[:, 6:], cache=cache)                    # reads all 6 cached positions
        full, _ = model(idx)
    assert first.shape == (2, 1, 31) and cache.length == 7
    np.testing.assert_allclose(first.data[:, 0], full.data[:, 5], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(step.data[:, 0], full.data[:, 6], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("bad, error, words", [
    (-1, ValueError, "GPT logits_to_keep must be an integer >= 0, got -1; 0 keeps every position"),
    (1.0, TypeError, "GPT logits_to_keep must be an integer >= 0, got 1.0"),
    (None, TypeError, "GPT logits_to_keep must be an integer >= 0, got None"),
])
def test_a_bad_logits_to_keep_is_refused_with_its_range(bad, error, words):
    with pytest.raises(error, match=words.replace("(", r"\(")):
        _model("dense")(np.zeros((1, 3), dtype=np.int64), logits_to_keep=bad)


def test_logits_to_keep_with_targets_is_refused():
    idx = np.zeros((1, 3), dtype=np.int64)
    with pytest.raises(ValueError, match="GPT logits_to_keep=1 with targets: the loss needs the "
                                         "logits at every position; pass logits_to_keep=0"):
        _model("dense")(idx, idx, logits_to_keep=1)


@pytest.mark.parametrize("kv_cache", [True, False])
def test_generate_runs_the_head_on_the_last_position_only(monkeypatch, kv_cache):
    model = _model("dense", np.float32)
    heads = []
    forward = GPT.forward

    def spy(self, idx, *args, **kwargs):
        logits, loss = forward(self, idx, *args, **kwargs)
        heads.append((np.shape(idx)[1], logits.shape[1]))           # (positions run, head rows)
        return logits, loss
    monkeypatch.setattr(GPT, "forward", spy)
    ts.manual_seed(4)
    model.generate(np.zeros((1, 3), dtype=np.int64), 12, kv_cache=kv_cache)   # slides past 10
    assert len(heads) == 12 and all(rows == 1 for _, rows in heads)
    assert max(T for T, _ in heads) == 10                           # windows of block_size ran
