"""Early exit (adaptive/early_exit.py): LayerSkip's weights and loss (gradchecked), CALM's exits
at sampling with the state propagated into the KV cache, causality, compute, refusals, the CLI."""
import numpy as np
import pytest

import tinysparse as ts
from tinysparse import functional as F
from tinysparse.adaptive import KVCache
from tinysparse.adaptive.early_exit import exit_weights, forward_with_exits, head, margin
from tinysparse.gpt import GPT, GPTConfig
from sampling_helpers import sample_both_ways


def _model(seed=0, dtype=np.float32, sharpen=6.0, **extra):
    ts.manual_seed(seed)
    cfg = GPTConfig(vocab_size=23, n_layer=3, n_head=2, n_embd=12, block_size=10,
                    **{"exit_scale": 1.0, **extra})
    model = GPT(cfg)
    for p in model.parameters():
        p.data = (p.data * sharpen).astype(dtype)
    return model


def test_layerskip_weights_rise_with_depth_and_sum_to_one():
    # e_l = e_scale * sum_{i<=l} i, the last (L-1) + e_scale * sum_{i<=L-2} i, normalised
    np.testing.assert_allclose(exit_weights(4, 1.0), np.array([0, 1, 3, 3 + 3]) / 10)
    np.testing.assert_allclose(exit_weights(4, 0.5), np.array([0, 0.5, 1.5, 3 + 1.5]) / 6.5)
    np.testing.assert_array_equal(exit_weights(3, 0.0), [0, 0, 1])       # off: the last layer alone
    np.testing.assert_array_equal(exit_weights(1, 2.0), [1])
    w = exit_weights(6, 0.3)
    assert np.all(np.diff(w) > 0) and np.isclose(w.sum(), 1)


def test_the_exit_loss_is_the_weighted_sum_of_every_layers_cross_entropy():
    model = _model(dtype=np.float64, sharpen=1.0).train()
    idx = np.random.default_rng(0).integers(0, 23, size=(2, 7))
    y = np.roll(idx, -1, axis=1)
    _, loss = model(idx, y)
    with ts.no_grad():
        x = model.wte(idx) + model.wpe(np.arange(7))
        ces = []
        for block in model.h:
            x = block(x)
            ces.append(F.cross_entropy(head(model, x), y).item())
    assert np.isclose(loss.item(), np.dot(exit_weights(3, 1.0), ces), rtol=1e-12)
    assert model._exit_heads == 1     # layer 1's head (layer 0 weighs 0; layer 2's is the model's own)
    model.eval()
    assert np.isclose(model(idx, y)[1].item(), ces[-1], rtol=1e-12)   # eval: the last layer only


def test_the_exit_loss_leaves_the_ignored_targets_out_of_every_layers_term():
    model = _model(dtype=np.float64, sharpen=1.0).train()
    idx = np.random.default_rng(1).integers(0, 23, size=(2, 6))
    y = np.roll(idx, -1, axis=1)
    y[:, -1] = -1                                    # nanoGPT's padding after the last token
    _, loss = model(idx, y, ignore_index=-1)
    y[:, -1] = -100                                  # what an ignored target holds does not matter
    _, again = model(idx, y, ignore_index=-100)
    assert loss.item() == again.item()
    _, shorter = model(idx[:, :5], y[:, :5])         # causal: the first 5 positions alone
    assert np.isclose(loss.item(), shorter.item(), rtol=1e-12)


def test_the_exit_loss_gradchecks():
    ts.manual_seed(1)
    model = GPT(GPTConfig(vocab_size=7, n_layer=2, n_head=1, n_embd=5, block_size=4,
                          exit_scale=0.7)).train()
    for p in model.parameters():
        p.data = p.data.astype(np.float64) * 10
    idx = np.array([[1, 4, 2], [6, 0, 3]])
    y = np.array([[4, 2, 5], [0, 3, 1]])
    assert ts.gradcheck(lambda *_: model(idx, y)[1], *model.parameters())


def test_a_confident_token_exits_and_its_state_fills_the_skipped_layers():
    model = _model().eval()
    idx = np.random.default_rng(1).integers(0, 23, size=(1, 6))
    cache = KVCache(3, 10)
    with ts.no_grad():
        model(idx[:, :5], cache=cache)
        logits = forward_with_exits(model, idx[:, 5:], cache, threshold=1e-6)   # any margin passes
        plan = model._exit_plan
        assert plan["exit_layer"].tolist() == [0] and plan["modes"] == ["full", "propagate", "propagate"]
        h = model.h[0](model.wte(idx) + model.wpe(np.arange(6)))[:, 5:]   # layer 0's output at 5
        np.testing.assert_allclose(logits.data, head(model, h).data, rtol=1e-5, atol=1e-6)
        for l in (1, 2):                                 # CALM: K, V from the exited hidden state
            qkv = model.h[l].attn.c_attn(model.h[l].ln_1(h)).data.reshape(1, 1, 3, 2, 6)
            np.testing.assert_allclose(cache.layers[l].k[0, :, 5], qkv[0, 0, 1], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(cache.layers[l].v[0, :, 5], qkv[0, 0, 2], rtol=1e-5, atol=1e-6)
            assert cache.layers[l].valid[0, 5]           # later tokens attend to it
    assert margin(logits.data)[0] > 0


def test_exits_that_never_fire_sample_the_uncached_tokens_and_low_thresholds_exit():
    model = _model(exit_threshold=1.0).eval()           # a margin of 1 needs a probability of 1
    prompt = np.random.default_rng(2).integers(0, 23, size=(2, 3))
    np.testing.assert_array_equal(*sample_both_ways(model, prompt, 15, seed=5))
    model.config.exit_threshold = 0.3
    ts.manual_seed(5)
    model.generate(prompt, 5)
    assert (model._exit_plan["exit_layer"] < 2).any()    # some token left early


def test_decoding_with_exits_is_causal():
    """Token by token (teacher forced): a later token never changes an earlier step's logits."""
    model = _model().eval()
    seq = np.random.default_rng(3).integers(0, 23, size=(1, 9))
    other = seq.copy()
    other[0, 6:] = (other[0, 6:] + 4) % 23
    steps = []
    for s in (seq, other):
        cache, out = KVCache(3, 10), []
        with ts.no_grad():
            model(s[:, :2], cache=cache)
            for t in range(2, 9):
                out.append(forward_with_exits(model, s[:, t:t + 1], cache, 0.2).data)
        steps.append(out)
    for t in range(4):                                   # steps 2..5 saw the same tokens
        np.testing.assert_array_equal(steps[0][t], steps[1][t])
    assert not np.allclose(steps[0][-1], steps[1][-1])


@pytest.mark.parametrize("kw, words", [
    (dict(exit_threshold=0.0), "exit_threshold must be None or a finite number in (0, 1]"),
    (dict(exit_threshold=1.5), "try --exit-threshold 0.9"),
    (dict(exit_threshold=float("nan")), "GPTConfig.exit_threshold=nan"),
    (dict(exit_scale=-1.0), "fix --exit-scale"),
])
def test_bad_exit_settings_are_refused_naming_them(kw, words):
    with pytest.raises(ValueError) as e:
        GPTConfig(**kw)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_early_exit_trains_and_samples_from_the_command_line(tmp_path):
    from test_cli import TINY, run
    proc = run("train", *TINY, "--max-iters", 3, "--out-dir", tmp_path / "run", "--n-layer", 2,
               "--exit-scale", 1.0, "--exit-threshold", 0.5)
    assert proc.returncode == 0 and "done: step 3" in proc.stdout, proc.stderr
    s = run("sample", "--out-dir", tmp_path / "run", "--max-new-tokens", 12)
    assert s.returncode == 0 and s.stderr == ""
