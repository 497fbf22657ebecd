"""Sampling: GPT.generate (tinysparse/gpt.py) and tinysparse/training/sampling.py.

The model here is a 1-layer GPT whose embeddings are scaled up, so its next token depends
strongly on the context: keeping the wrong tokens of a long prompt, or multiplying the logits by
the temperature instead of dividing, gives another answer (each test checks that its input tells
the right rule from the wrong one). The sampling distributions are read where generate draws
from them, and compared with softmax(logits / temperature) computed here.
"""
import numpy as np
import pytest
from scipy.special import softmax

import tinysparse as ts
from tinysparse.adaptive import decode
from tinysparse.gpt import GPT, GPTConfig
from tinysparse.training import sample
from tinysparse.training.data import ByteTokenizer
from tinysparse.training.sampling import causality_warning, load_run, sample_text

V, BLOCK = 13, 4
REAL_DRAW = decode.draw


def sharp_gpt(dropout=0.0, vocab_size=V, seed=0):
    """A GPT of block_size 4 with logits spread over about +-10 (N(0, 0.02) init gives +-0.1)."""
    ts.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=vocab_size, n_layer=1, n_head=1, n_embd=8, block_size=BLOCK,
                          dropout=dropout))
    model.wte.weight.data = model.wte.weight.data * 100
    model.wpe.weight.data = model.wpe.weight.data * 100
    return model


def last_logits(model, context):
    """(B, V) float64 logits of the next token after `context`, in eval mode: the head on the last
    position alone, as generate runs it (test_logits_to_keep.py ties it to the full forward's row)."""
    was = model.training
    model.eval()
    logits = model(context, logits_to_keep=1)[0].data[:, -1, :].astype(np.float64)
    model.train(was)
    return logits


class Recorder:
    """Stands in for decode.draw: records each distribution generate draws from (one per row),
    then draws from it as draw does."""

    def __init__(self):
        self.probs = []

    def draw(self, rng, probs):
        self.probs.extend(np.array(p) for p in probs)
        return REAL_DRAW(rng, probs)


@pytest.fixture
def record_draws(monkeypatch):
    """record_draws() -> a Recorder that sees every draw of generate from then on."""
    def install():
        rec = Recorder()
        monkeypatch.setattr(decode, "draw", rec.draw)
        return rec
    return install


# ----------------------------------------------------------------------------- the context

def test_a_long_prompt_is_cropped_to_its_last_block_size_tokens():
    model = sharp_gpt()
    prompt = np.array([[7, 9, 11, 0, 2, 4, 6], [5, 1, 8, 3, 12, 6, 10]])  # T = 7 > block_size 4
    out = model.generate(prompt, 3, top_k=1)                               # greedy
    ctx = prompt
    for _ in range(3):
        nxt = last_logits(model, ctx[:, -BLOCK:]).argmax(-1)
        ctx = np.concatenate([ctx, nxt[:, None]], axis=1)
    np.testing.assert_array_equal(out, ctx)
    # keeping the FIRST block_size tokens would have given other tokens: the input tells them apart
    first = last_logits(model, prompt[:, :BLOCK]).argmax(-1)
    assert np.all(first != ctx[:, 7])


def test_generate_returns_int64_ids_and_keeps_the_prompt_and_the_mode():
    model = sharp_gpt(dropout=0.5)
    prompt = np.array([[3, 1]], dtype=np.int32)
    model.train()
    out = model.generate(prompt, 5)
    assert out.dtype == np.int64 and out.shape == (1, 7) and out[0, :2].tolist() == [3, 1]
    assert model.generate(prompt, 0).dtype == np.int64          # also with nothing to add
    assert model.training                          # back in training mode
    model.eval()
    model.generate(prompt, 2)
    assert not model.training                      # and an eval model stays in eval mode


# ----------------------------------------------------------------------------- the distribution

@pytest.mark.parametrize("temperature", [0.5, 2.0, 0.01])
def test_each_draw_is_from_the_softmax_of_the_logits_divided_by_the_temperature(
        record_draws, temperature):
    # dropout 0.5 and training mode: generate must sample from the eval-mode model; 0.01 puts
    # logits near +-1000, where exp overflows unless the largest is subtracted first
    model = sharp_gpt(dropout=0.5)
    prompt = np.array([[1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1]])
    model.train()
    recorder = record_draws()
    out = model.generate(prompt, 3, temperature=temperature)
    assert len(recorder.probs) == 3 * 2                                  # 3 steps x B = 2 rows
    for step in range(3):
        logits = last_logits(model, out[:, :6 + step][:, -BLOCK:])
        expected = softmax(logits / temperature, axis=-1)
        got = np.stack(recorder.probs[2 * step:2 * step + 2])
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-300)
        # multiplying by the temperature gives another distribution here
        assert not np.allclose(softmax(logits * temperature, axis=-1), expected, atol=1e-3)


def test_top_k_keeps_the_k_likeliest_tokens_of_each_row(record_draws):
    model = sharp_gpt()
    prompt = np.array([[1, 2, 3], [9, 8, 7]])
    recorder = record_draws()
    model.generate(prompt, 1, temperature=0.7, top_k=3)
    logits = last_logits(model, prompt) / 0.7
    for row, p in zip(logits, recorder.probs):
        top = np.argsort(row)[-3:]
        expected = np.zeros(V)
        expected[top] = softmax(row[top])
        np.testing.assert_allclose(p, expected, rtol=1e-12, atol=0)


def test_generate_records_no_graph(monkeypatch):
    model, seen = sharp_gpt(), []
    real = GPT.forward

    def forward(self, idx, targets=None, ignore_index=None, **kwargs):    # kwargs: the KV cache
        logits, loss = real(self, idx, targets, ignore_index, **kwargs)
        seen.append(logits.requires_grad)
        return logits, loss

    monkeypatch.setattr(GPT, "forward", forward)
    model.generate(np.array([[1]]), 2)
    assert seen == [False, False]


# ----------------------------------------------------------------------------- sampling.py

@pytest.mark.parametrize("top_k", [None, 2])
def test_sample_text_is_the_seeded_generation_of_the_encoded_prompt(top_k):
    ts.manual_seed(0)                               # initial weights: a broad distribution
    model = GPT(GPTConfig(vocab_size=256, n_layer=1, n_head=1, n_embd=8, block_size=4))
    text = sample_text(model, "ab", 6, 1.5, top_k, seed=3)
    ts.manual_seed(3)
    ids = model.generate(ByteTokenizer().encode("ab")[None, :], 6, 1.5, top_k)
    assert text == ByteTokenizer().decode(ids[0]) and text.startswith("ab")
    assert sample_text(model, "ab", 6, 1.5, top_k, seed=3) == text
    assert sample_text(model, "ab", 6, 1.5, top_k, seed=4) != text      # the seed matters
    if top_k:                                                           # and so does top_k
        assert sample_text(model, "ab", 6, 1.5, None, seed=3) != text


def test_generate_samples_at_temperature_1_by_default(record_draws):
    model = sharp_gpt()
    recorder = record_draws()
    model.generate(np.array([[1, 2]]), 1)
    np.testing.assert_allclose(recorder.probs[0], softmax(last_logits(model, np.array([[1, 2]])),
                                                          axis=-1)[0], rtol=1e-12)


@pytest.mark.skipif(ts.engine.backend.cuda_available(), reason="needs a machine without a GPU")
def test_the_device_asked_for_is_the_device_used(ckpt_runs):
    from tinysparse.engine.backend import DeviceError
    run = str(ckpt_runs["dense"])
    with pytest.raises(DeviceError, match="device 'cuda' was requested"):
        load_run(run, device="cuda")
    with pytest.raises(DeviceError, match="device 'cuda' was requested"):
        sample(run, device="cuda")


def test_sample_reads_the_run_and_passes_every_setting_on(ckpt_runs):
    run = str(ckpt_runs["dense"])
    model, _, _ = load_run(run)
    assert sample(run) == sample_text(model, "\n", 500, 0.8, 50, 0)     # the documented defaults
    assert sample(run, "def ", 7, 1.3, 5, seed=2) == sample_text(model, "def ", 7, 1.3, 5, 2)
    assert sample(run, b"\xff", 3, seed=1) == sample_text(model, b"\xff", 3, 0.8, 50, 1)
    long = "a prompt longer than the block size of 16"               # the model sees its end
    assert sample(run, long, 4, seed=1) == sample_text(model, long, 4, 0.8, 50, 1)


def test_sample_refuses_bad_settings_before_reading_anything(tmp_path):
    nowhere = str(tmp_path / "no run here")
    with pytest.raises(ValueError, match="temperature"):
        sample(nowhere, temperature=0.0)
    with pytest.raises(ValueError, match="top_k"):
        sample(nowhere, top_k=0)
    with pytest.raises(ValueError, match=r"^prompt must not be empty; the model needs a first "
                                         r"byte, e.g. prompt='def '$"):
        sample(nowhere, prompt="")


def test_only_expert_choice_routing_is_warned_about():
    assert causality_warning(GPTConfig(n_expert=4, router="topk")) is None
    assert causality_warning(GPTConfig(n_expert=0, router="expert_choice")) is None  # dense
    assert causality_warning(GPTConfig(n_expert=4, router="expert_choice")).startswith(
        "router expert_choice is not causal")


def test_load_run_gives_the_model_in_eval_mode_with_both_configs(ckpt_runs):
    model, (mcfg, tcfg), ckpt = load_run(str(ckpt_runs["moe-bias"]))
    assert not model.training and mcfg.n_expert == 4 and tcfg.max_iters == 4
    for name, array in ckpt["model"].items():
        assert np.array_equal(dict(model.named_parameters(), **dict(model.named_buffers()))[name].data,
                              array), name


def test_draw_returns_what_numpys_choice_returns_from_the_same_generator():
    """decode.draw stands in for rng.choice(V, p=row): the same ids and the same generator state
    after, on spread-out, peaked, one-hot and top-k-truncated distributions, rows of a batch."""
    from tinysparse.adaptive.decode import draw, next_token_probs
    rng = np.random.default_rng(11)
    logits = rng.standard_normal((6, 97)) * np.array([[0.1], [1], [5], [40], [1e3], [3]])
    cases = [next_token_probs(logits, 1.0, None), next_token_probs(logits, 0.7, 5),
             next_token_probs(logits, 1.0, 1), rng.dirichlet(np.full(97, 0.05), size=4)]
    for probs in cases:
        a, b = np.random.default_rng(3), np.random.default_rng(3)
        for _ in range(50):
            expected = np.array([a.choice(len(p), p=p) for p in probs])
            np.testing.assert_array_equal(draw(b, probs), expected)
        assert a.random() == b.random()


def test_draw_refuses_a_distribution_that_is_not_finite():
    from tinysparse.adaptive.decode import draw, next_token_probs
    logits = np.zeros((2, 5))
    logits[1, 2] = np.nan
    with pytest.raises(ValueError, match=r"^the model's next-token probabilities are not finite "
                                         r"or all zero \(NaN or inf logits: did training "
                                         r"diverge\?\); sample from an earlier checkpoint$"):
        draw(np.random.default_rng(0), next_token_probs(logits, 1.0, None))
    for bad in (np.nan, np.inf):                                 # in the last entry only
        with pytest.raises(ValueError, match="not finite"):
            draw(np.random.default_rng(0), np.array([[0.2, 0.8, bad]]))


@pytest.mark.parametrize("args, flag", [((-1, 1.0, None), "--max-new-tokens"),
                                        ((1, 0.0, None), "--temperature"), ((1, 1.0, 0), "--top-k")])
def test_generate_args_are_named_as_the_caller_names_them(args, flag):
    from tinysparse.adaptive.decode import check_generate_args
    names = {"max_new_tokens": "--max-new-tokens", "temperature": "--temperature", "top_k": "--top-k"}
    with pytest.raises(ValueError, match=f"^{flag} must be"):
        check_generate_args(*args, names=names)


def test_draw_takes_the_whole_mass_of_the_last_token():
    from tinysparse.adaptive.decode import draw
    rng = np.random.default_rng(0)
    assert [int(draw(rng, np.array([[0.0, 0.0, 1.0]]))[0]) for _ in range(20)] == [2] * 20


def test_draw_normalises_each_row_by_its_sum():
    from tinysparse.adaptive.decode import draw
    rng = np.random.default_rng(5)
    ones = sum(int(draw(rng, np.array([[1.0, 3.0]]))[0]) for _ in range(4000))
    assert 0.72 < ones / 4000 < 0.78                     # weights 1:3, not probabilities


def test_draw_never_picks_a_token_of_probability_zero_even_at_u_0():
    from tinysparse.adaptive.decode import draw

    class Zero:                                          # the smallest uniform a generator gives
        def random(self):
            return 0.0

    np.testing.assert_array_equal(draw(Zero(), np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])), [1, 2])


def test_draw_refuses_a_row_of_zeros():
    from tinysparse.adaptive.decode import draw
    with pytest.raises(ValueError, match="all zero"):
        draw(np.random.default_rng(0), np.zeros((1, 5)))
