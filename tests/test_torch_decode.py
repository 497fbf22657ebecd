"""The PyTorch twin's cached greedy decoding (bench/torch_decode.py) returns tinysparse's tokens.

tinysparse's side is GPT.generate(top_k=1, kv_cache=True): only the likeliest token survives the
top-k cut, so the draw is the argmax. In float64 (model and twin) with sharpened weights, so a
near-tie cannot flip a token between the two frameworks. PyTorch is optional: without it these
tests skip.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch not installed: parity tests skip")

from tinysparse.bench.torch_decode import TorchKVCache, forward_cached, torch_greedy_generate  # noqa: E402
from tinysparse.bench.torch_twins import copy_weights, torch_modules  # noqa: E402
from tinysparse.engine import random as ts_random  # noqa: E402
from tinysparse.gpt import GPT, GPTConfig  # noqa: E402

BLOCK = 9


def _pair(seed=11, sharpen=3.0):
    """A float64 tinysparse GPT with peaked next-token distributions, and its float64 twin."""
    ts_random.manual_seed(seed)
    config = GPTConfig(vocab_size=37, n_layer=2, n_head=2, n_embd=16, block_size=BLOCK)
    model = GPT(config)
    for p in model.parameters():
        p.data = (p.data * sharpen).astype(np.float64)
    twin = copy_weights(model, torch_modules()["GPT"](config).double())
    return model.eval(), twin.eval()


def _ts_greedy(model, prompt, n):
    ts_random.manual_seed(0)
    return model.generate(prompt, n, top_k=1, kv_cache=True)


@pytest.mark.parametrize("prompt_len", [1, 4, BLOCK])   # BLOCK: the window slides at once
def test_twin_cached_greedy_tokens_equal_tinysparse(prompt_len):
    model, twin = _pair()
    prompt = np.random.default_rng(prompt_len).integers(0, 37, size=(2, prompt_len))
    n = 2 * BLOCK + 3                                      # past block_size: the cache is rebuilt
    ours = _ts_greedy(model, prompt, n)
    theirs = torch_greedy_generate(twin, prompt, n)
    assert theirs.shape == ours.shape == (2, prompt_len + n)
    assert np.array_equal(ours, theirs)
    # the tokens are the weights', not a constant: another model decodes something else
    other_model, other_twin = _pair(seed=12)
    assert not np.array_equal(torch_greedy_generate(other_twin, prompt, n), theirs)
    assert np.array_equal(_ts_greedy(other_model, prompt, n), torch_greedy_generate(other_twin, prompt, n))


def test_cached_step_logits_equal_the_full_forward():
    """Token by token through the cache, each step's logits are the full forward's last row."""
    _, twin = _pair()
    tokens = torch.as_tensor(np.random.default_rng(3).integers(0, 37, size=(2, BLOCK)))
    cache = TorchKVCache(len(twin.h))
    with torch.no_grad():
        forward_cached(twin, tokens[:, :3], cache)
        for t in range(3, BLOCK):
            step = forward_cached(twin, tokens[:, t:t + 1], cache)
            full, _ = twin(tokens[:, :t + 1])
            np.testing.assert_allclose(step.numpy(), full[:, -1].numpy(), rtol=1e-10, atol=1e-12)
        assert cache.length == BLOCK
        with pytest.raises(ValueError, match="start a new cache"):
            forward_cached(twin, tokens[:, :1], cache)
