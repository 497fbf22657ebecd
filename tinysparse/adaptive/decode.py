"""The sampling loop behind GPT.generate: one token at a time, with or without a KV cache.

    logits of the last position -> / temperature -> keep the top_k -> softmax -> draw one token

With the cache, the first step runs the prompt (a prefill) and every later step feeds only the
token just drawn; with exit_threshold set, each decoded token may leave early (early_exit.py).
Once the context reaches block_size, the window slides at every step and the cache would have to
be rebuilt from the last block_size tokens each time (kv_cache.py says why). Such a cache is full
from the start, so no later step could read it: those steps run the window without one, which
is the prefill's own computation (the same logits) minus the writes. Without the cache, every
step runs the whole cropped context, as nanoGPT does. Both draw from the same generator in the
same order, so with the same seed they return the same tokens (tests/test_kv_cache.py).

Only the last position's logits are read, so a step that runs several positions asks the model
for that row alone (logits_to_keep=1): the head skips the others, as nanoGPT's forward does at
inference, and the final layer norm too, as the PyTorch twin's does (bench/torch_decode.py).
Those logits are the last row of the full forward to float rounding: BLAS sums a one-row
product in another order.

The model is duck-typed (anything with .config.n_layer, .config.block_size and
model(idx, cache=..., logits_to_keep=...) -> (logits, loss)): this layer does not import the GPT
around it.
"""
import numpy as np

from .._checks import check_int, check_number
from ..engine import random as ts_random
from ..engine.backend import to_numpy
from .early_exit import forward_with_exits
from .kv_cache import KVCache


def next_token_probs(logits, temperature, top_k):
    """Sampling distribution (B, V) float64 from the last position's logits (B, V).
    (np.maximum.reduce and np.add.reduce are what .max() and .sum() call, minus their Python.)"""
    last = to_numpy(logits).astype(np.float64) / temperature
    if top_k is not None:
        kth = np.sort(last, axis=-1)[:, -min(top_k, last.shape[-1])][:, None]
        last = np.where(last < kth, -np.inf, last)
    probs = np.exp(last - np.maximum.reduce(last, axis=-1, keepdims=True))
    return probs / np.add.reduce(probs, axis=-1, keepdims=True)


def draw(rng, probs):
    """One token id per row of probs (B, V), (B,) int64: exactly what rng.choice(V, p=row)
    returns, from the same one uniform double per row (choice's inverse-CDF method: cumulative
    sums divided by their last, then searchsorted 'right'), without choice's checks of p, which
    cost 20 us per token. The one check that matters here stays: a distribution that is not
    finite (NaN logits: a diverged model) or sums to 0 is a ValueError, never a silent token."""
    tokens = np.empty(len(probs), dtype=np.int64)
    for b, p in enumerate(probs):
        cdf = p.cumsum()
        if not (np.isfinite(cdf[-1]) and cdf[-1] > 0):
            raise ValueError("the model's next-token probabilities are not finite or all zero "
                             "(NaN or inf logits: did training diverge?); sample from an earlier "
                             "checkpoint")
        cdf /= cdf[-1]
        tokens[b] = cdf.searchsorted(rng.random(), side="right")
    return tokens


def generate_tokens(model, idx, max_new_tokens, temperature, top_k, use_cache):
    """idx (B, T) int64 NumPy -> (B, T + max_new_tokens). Call under no_grad, the model in eval
    mode (GPT.generate checks the arguments and does both)."""
    rng = ts_random.generator()
    block_size = model.config.block_size
    cache = None
    for _ in range(max_new_tokens):
        if not use_cache or (idx.shape[1] >= block_size and (cache is None or cache.room() == 0)):
            # the whole window: without a cache by choice, or because the window slid (or the
            # prompt fills it): a cache built now would be full, and the next token slides the
            # window again, so nothing would read it
            logits, _ = model(idx[:, -block_size:], logits_to_keep=1)
            cache = None
        elif cache is None:                                         # first step: the prefill
            cache = KVCache(model.config.n_layer, block_size)
            logits, _ = model(idx, cache=cache, logits_to_keep=1)
        elif model.config.exit_threshold is not None:               # CALM: a confident token exits
            logits = forward_with_exits(model, idx[:, -1:], cache, model.config.exit_threshold)
        else:
            logits, _ = model(idx[:, -1:], cache=cache)             # only the newest token
        probs = next_token_probs(logits.data[:, -1, :], temperature, top_k)
        nxt = draw(rng, probs)[:, None]                             # (B, 1)
        idx = np.concatenate([idx, nxt], axis=1)
    return idx


def check_generate_args(max_new_tokens, temperature, top_k, names=None):
    """Refuse sampling settings without a meaning, naming each: max_new_tokens an integer >= 0,
    temperature a positive finite number, top_k None or an integer >= 1. `names` maps an argument
    to the name to show (the command line passes its flags: {"top_k": "--top-k", ...})."""
    names = names or {}
    check_int(names.get("max_new_tokens", "max_new_tokens"), max_new_tokens, low=0)
    check_number(names.get("temperature", "temperature"), temperature, low=0, low_open=True,
                 hint="try 0.8 (1: the model's own distribution)")
    if top_k is not None:
        check_int(names.get("top_k", "top_k"), top_k, low=1,
                  hint="None keeps every token; 1 is greedy decoding")
