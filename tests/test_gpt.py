"""The GPT: fused attention gradients, a whole 1-layer model gradchecked, shapes, causality, generate."""
import math
import re

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import tinysparse as ts
from tinysparse import functional as F
from tinysparse.gpt import GPT, GPTConfig



def _attention_from_primitives(q, k, v):
    """softmax(q k^T / sqrt(d) + mask) v with unfused ops: the reference for the fused Function."""
    T, hd = q.shape[-2], q.shape[-1]
    scores = (q @ k.transpose(-1, -2)) * (1.0 / np.sqrt(hd))
    future = np.triu(np.ones((T, T), dtype=bool), k=1)
    return F.softmax(scores.masked_fill(future, -np.inf), axis=-1) @ v


@settings(max_examples=12, deadline=None)
@given(B=st.integers(1, 2), nh=st.integers(1, 3), T=st.integers(1, 5), hd=st.integers(1, 4),
       causal=st.booleans())
def test_attention_gradcheck(B, nh, T, hd, causal):
    rng = np.random.default_rng(B * 100 + nh * 10 + T)
    q, k, v = (ts.Tensor(rng.standard_normal((B, nh, T, hd)), requires_grad=True) for _ in range(3))
    assert ts.gradcheck(lambda q, k, v: F.attention(q, k, v, causal=causal), q, k, v)


def test_attention_matches_primitives(rng):
    q, k, v = (ts.Tensor(rng.standard_normal((2, 3, 7, 5)), requires_grad=True) for _ in range(3))
    fused = F.attention(q, k, v)
    fused.backward(np.cos(np.arange(fused.size)).reshape(fused.shape))
    grads = [t.grad.copy() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    ref = _attention_from_primitives(q, k, v)
    ref.backward(np.cos(np.arange(ref.size)).reshape(ref.shape))
    np.testing.assert_allclose(fused.data, ref.data, rtol=1e-12, atol=1e-12)
    for g, t in zip(grads, (q, k, v)):
        np.testing.assert_allclose(g, t.grad, rtol=1e-10, atol=1e-12)


@settings(max_examples=10, deadline=None)
@given(B=st.integers(1, 2), T=st.integers(1, 5), nh=st.sampled_from([1, 2, 3]), hd=st.integers(1, 3))
def test_packed_attention_gradcheck(B, T, nh, hd):
    rng = np.random.default_rng(B + 7 * T + 31 * nh + hd)
    qkv = ts.Tensor(rng.standard_normal((B, T, 3 * nh * hd)), requires_grad=True)
    assert ts.gradcheck(lambda t: F.causal_self_attention(t, nh), qkv)


def test_packed_attention_equals_split_heads(rng):
    B, T, nh, hd = 2, 6, 3, 4
    qkv = ts.Tensor(rng.standard_normal((B, T, 3 * nh * hd)))
    q, k, v = qkv.data.reshape(B, T, 3, nh, hd).transpose(2, 0, 3, 1, 4)
    y = F.attention(ts.Tensor(q), ts.Tensor(k), ts.Tensor(v)).data.transpose(0, 2, 1, 3).reshape(B, T, -1)
    np.testing.assert_allclose(F.causal_self_attention(qkv, nh).data, y, rtol=1e-12)


def test_one_layer_gpt_gradcheck():
    ts.manual_seed(3)
    config = GPTConfig(vocab_size=7, n_layer=1, n_head=2, n_embd=4, block_size=4)
    model = GPT(config).astype(np.float64)
    idx = np.array([[1, 2, 3, 4], [6, 0, 0, 5]])
    targets = np.array([[2, 3, 4, 5], [0, 0, 5, 1]])
    params = dict(model.named_parameters())
    checked = ["wte.weight", "wpe.weight", "h.0.attn.c_attn.weight", "h.0.attn.c_proj.bias",
               "h.0.ln_1.weight", "h.0.mlp.c_fc.weight", "h.0.mlp.c_proj.weight", "ln_f.bias"]
    for name in checked:
        p = params[name]

        def loss_of(param, p=p):
            return model(idx, targets)[1]
        assert ts.gradcheck(loss_of, p), name


def test_gpt_shapes_and_causality(rng):
    ts.manual_seed(0)
    config = GPTConfig(vocab_size=11, n_layer=2, n_head=2, n_embd=8, block_size=6)
    model = GPT(config)
    idx = rng.integers(0, 11, (3, 6))
    logits, loss = model(idx)
    assert logits.shape == (3, 6, 11) and loss is None
    changed = idx.copy()
    changed[:, 4] = (changed[:, 4] + 1) % 11
    logits2, _ = model(changed)
    np.testing.assert_array_equal(logits.data[:, :4], logits2.data[:, :4])  # the past cannot see the future
    assert not np.allclose(logits.data[:, 4:], logits2.data[:, 4:])


def test_gpt_loss_starts_near_uniform_and_rejects_long_input(rng):
    ts.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, n_layer=1, n_head=2, n_embd=16, block_size=8))
    _, loss = model(rng.integers(0, 50, (4, 8)), rng.integers(0, 50, (4, 8)))
    assert abs(loss.item() - np.log(50)) < 0.1
    with pytest.raises(ValueError, match="block_size"):
        model(rng.integers(0, 50, (1, 9)))


def test_parameter_count_formula():
    c = GPTConfig(vocab_size=96, n_layer=4, n_head=4, n_embd=128, block_size=64)
    model = GPT(c)
    L, C = c.n_layer, c.n_embd
    per_block = 12 * C * C + 13 * C  # attn 3C^2+3C + C^2+C, mlp 8C^2+5C, two layer norms 4C
    assert model.num_parameters() == L * per_block + c.vocab_size * C + 2 * C
    assert model.num_parameters(non_embedding=False) == model.num_parameters() + c.block_size * C


@pytest.mark.parametrize("field,value", [("n_embd", 10), ("n_head", 0), ("dropout", 1.0), ("block_size", 0)])
def test_bad_config_is_refused(field, value):
    kwargs = dict(n_embd=8, n_head=4)
    kwargs[field] = value
    with pytest.raises(ValueError, match=field):
        GPTConfig(**kwargs)


def test_generate_is_seeded_and_respects_top_k():
    config = GPTConfig(vocab_size=13, n_layer=1, n_head=1, n_embd=8, block_size=4)
    ts.manual_seed(1)
    model = GPT(config)
    ts.manual_seed(5)
    a = model.generate(np.zeros((2, 1), dtype=np.int64), 10)
    ts.manual_seed(5)
    b = model.generate(np.zeros((2, 1), dtype=np.int64), 10)
    assert a.shape == (2, 11) and np.array_equal(a, b)
    greedy = model.generate(np.zeros((1, 1), dtype=np.int64), 6, top_k=1)
    ctx = np.zeros((1, 1), dtype=np.int64)
    for _ in range(6):  # top_k=1 is greedy decoding: check it against argmax by hand
        logits, _ = model(ctx[:, -4:])
        ctx = np.concatenate([ctx, logits.data[:, -1].argmax(-1)[:, None]], axis=1)
    np.testing.assert_array_equal(greedy, ctx)


# ---- bad input is refused, naming it (issue 11, kind 2) ------------------------------------------

def _small_gpt(**kw):
    ts.manual_seed(0)
    return GPT(GPTConfig(vocab_size=11, n_layer=1, n_head=2, n_embd=8, block_size=6, **kw))


def test_a_padding_target_of_minus_one_is_refused_naming_it_and_the_range():
    # nanoGPT pads targets with -1; NumPy would read -1 as token 10 and train towards it
    model = _small_gpt()
    idx = np.array([[1, 2, 3, 4]])
    with pytest.raises(ValueError, match=re.escape(
            "GPT targets[0, 2] = -1 is outside the valid token ids [0, vocab_size=11); to leave "
            "padding out of the loss, pass ignore_index=-1")):
        model(idx, np.array([[2, 3, -1, 5]]))


def test_ignore_index_leaves_the_padding_out_of_the_mean():
    model = _small_gpt()
    idx, targets = np.array([[1, 2, 3, 4], [5, 6, 7, 8]]), np.array([[2, 3, -1, 5], [6, -1, 8, 9]])
    logits, loss = model(idx, targets, ignore_index=-1)
    z = logits.data.astype(np.float64)
    logp = z - z.max(-1, keepdims=True) - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True))
    kept = targets != -1
    expected = -logp[kept, targets[kept]].mean()            # 6 positions, not 8, and never token 10
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    _, as_last_token = model(idx, np.where(kept, targets, 10))   # what NumPy's -1 used to mean
    assert abs(as_last_token.item() - loss.item()) > 1e-3


@pytest.mark.parametrize("targets, ignore, match", [
    ([[2, 3, 11, 5]], -1, r"targets\[0, 2\] = 11 is outside the valid token ids \[0, vocab_size=11\)$"),
    ([[2, 3, -100, 5]], -1, r"targets\[0, 2\] = -100 .* pass ignore_index=-100"),
    ([[2, 3, 4, 5]], 3, r"ignore_index=3 is a real token id"),
    ([[2], [3], [4], [5]], None, r"targets have shape \(4, 1\) but idx has \(1, 4\)"),
    ([[2.0, 3.0, 4.0, 5.0]], None, r"targets must be integer token ids"),
])
def test_other_bad_targets_are_refused(targets, ignore, match):
    with pytest.raises((ValueError, TypeError), match=match):
        _small_gpt()(np.array([[1, 2, 3, 4]]), np.array(targets), ignore_index=ignore)


@pytest.mark.parametrize("idx, error, match", [
    ([[1, 11, 3]], ValueError, r"GPT idx\[0, 1\] = 11 is outside the valid token ids \[0, vocab_size=11\)"),
    ([[1, -1, 3]], ValueError, r"GPT idx\[0, 1\] = -1 is outside"),   # was read as token 10
    ([[1.0, 2.0]], TypeError, r"GPT idx must be integer token ids, got dtype float64"),
    ([1, 2, 3], ValueError, r"2-D array \(B, T\) .* got shape \(3,\); add a batch axis: idx\[None, :\]"),
    (np.zeros((2, 0), dtype=np.int64), ValueError, r"GPT idx has shape \(2, 0\): no tokens"),
    (np.zeros((1, 7), dtype=np.int64), ValueError, r"sequence length 7 exceeds block_size 6"),
])
def test_bad_token_ids_are_refused(idx, error, match):
    with pytest.raises(error, match=match):
        _small_gpt()(np.asarray(idx))


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(temperature=math.nan), ValueError, r"^temperature must be a positive finite number, got nan"),
    (dict(temperature=math.inf), ValueError, r"^temperature must be a positive finite number, got inf"),
    (dict(temperature=0.0), ValueError, r"^temperature must be a positive finite number, got 0.0; "
                                        r"try 0.8 \(1: the model's own distribution\)$"),
    (dict(temperature=-1.0), ValueError, r"^temperature must be"),
    (dict(top_k=0), ValueError, r"^top_k must be an integer >= 1, got 0; None keeps every token; "
                                r"1 is greedy decoding$"),
    (dict(top_k=-3), ValueError, r"^top_k must be an integer >= 1, got -3"),
    (dict(top_k=2.5), TypeError, r"^top_k must be an integer >= 1, got 2.5 \(float\)"),
    (dict(top_k=True), TypeError, r"^top_k must be an integer"),
    (dict(max_new_tokens=-1), ValueError, r"^max_new_tokens must be an integer >= 0, got -1"),
    (dict(max_new_tokens=2.0), TypeError, r"^max_new_tokens must be an integer >= 0"),
])
def test_generate_refuses_meaningless_settings_naming_them(kwargs, error, match):
    args = dict(max_new_tokens=3, temperature=1.0, top_k=None)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        _small_gpt().generate(np.zeros((1, 1), dtype=np.int64), **args)


def test_generate_refuses_an_empty_prompt():
    with pytest.raises(ValueError, match=r"prompt has shape \(1, 0\): no tokens; generate needs "
                                         r"a prompt of at least one token"):
        _small_gpt().generate(np.zeros((1, 0), dtype=np.int64), 3)


def test_generate_edge_values_that_keep_a_meaning():
    model, prompt = _small_gpt(), np.array([[3, 4]])
    assert np.array_equal(model.generate(prompt, 0), prompt)             # nothing to add
    ts.manual_seed(9)
    everything = model.generate(prompt, 8, top_k=None)
    ts.manual_seed(9)
    beyond = model.generate(prompt, 8, top_k=np.int64(500))             # k > vocab: every token
    assert np.array_equal(everything, beyond)


@pytest.mark.parametrize("field, value, error", [
    ("capacity_factor", math.inf, ValueError), ("capacity_factor", math.nan, ValueError),
    ("jitter", math.nan, ValueError), ("aux_coef", math.nan, ValueError),
    ("z_coef", -1.0, ValueError), ("bias_update_rate", math.inf, ValueError),
    ("router", "hash", ValueError), ("dropout", math.nan, ValueError),
    ("n_embd", 8.0, TypeError), ("top_k", 0, ValueError),
])
def test_config_refuses_bad_moe_fields_even_in_a_dense_model(field, value, error):
    kwargs = dict(n_embd=8, n_head=2, n_expert=0)
    kwargs[field] = value
    with pytest.raises(error, match=rf"GPTConfig\.{field}"):
        GPTConfig(**kwargs)


def test_flops_per_token_refuses_an_empty_context():
    model = _small_gpt()
    assert model.flops_per_token() == model.flops_per_token(6)       # None: block_size
    with pytest.raises(ValueError, match=r"flops_per_token T must be an integer >= 1, got 0"):
        model.flops_per_token(0)                                     # was block_size, silently


def test_config_refuses_top_k_above_n_expert():
    with pytest.raises(ValueError, match=r"GPTConfig.top_k=5 is invalid: top_k must be an "
                                         r"integer in \[1, n_expert=4\]"):
        GPTConfig(n_embd=8, n_head=2, n_expert=4, top_k=5)


@pytest.mark.parametrize("idx, match", [
    (np.zeros((1, 2, 3), dtype=np.int64),
     r"^GPT idx must be a 2-D array \(B, T\) of token ids, got shape \(1, 2, 3\)$"),  # no batch-axis hint
    (np.zeros((2, 0), dtype=np.int64), r"^GPT idx has shape \(2, 0\): no tokens; a sequence needs "
                                       r"at least one$"),
])
def test_bad_token_ids_get_the_whole_message_and_only_their_own_fix(idx, match):
    with pytest.raises(ValueError, match=match):
        _small_gpt()(idx)


def test_ids_and_targets_may_be_lists_or_tensors():
    model = _small_gpt()
    ids, targets = [[1, 2, 3], [4, 5, 6]], [[2, 3, 4], [5, 6, 7]]
    want_logits, want_loss = model(np.array(ids), np.array(targets))
    for i, t in ((ids, targets), (ts.Tensor(np.array(ids)), ts.Tensor(np.array(targets)))):
        logits, loss = model(i, t)
        np.testing.assert_array_equal(logits.data, want_logits.data)
        assert loss.item() == want_loss.item()


def test_ignore_index_must_be_an_integer_that_is_no_token():
    model = _small_gpt()
    idx, targets = np.array([[1, 2, 3, 4]]), np.array([[2, 3, 4, 5]])
    with pytest.raises(TypeError, match=r"^GPT ignore_index must be an integer, got 1.5 \(float\)"):
        model(idx, targets, ignore_index=1.5)
    with pytest.raises(ValueError, match=r"^GPT ignore_index=0 is a real token id \(vocab_size 11\)"):
        model(idx, targets, ignore_index=0)
    # vocab_size is the first id that is no token: accepted, and the targets equal to it left out
    _, loss = model(idx, np.array([[2, 3, 11, 5]]), ignore_index=11)
    _, want = model(idx, np.array([[2, 3, -1, 5]]), ignore_index=-1)
    assert loss.item() == want.item()
