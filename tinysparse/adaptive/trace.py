"""Tracing a text through a model as sampling would run it: the compute each token takes.

The text is cut into windows of block_size tokens. In each window the first token is run alone
and every next one is decoded with the KV cache, exactly as GPT.generate decodes (the causal
rules: a Mixture-of-Depths block's sigmoid(r) > 0.5, early exits where exit_threshold is set),
except that the next token is the text's, not a sampled one (teacher forcing). For each token
this records compute_per_token (matmul FLOPs), what each layer ran for it, and its surprisal
-log p(token | the tokens before it in its window) under the model, or under another model
(a dense one: how hard the token is, measured by a model that spends the same on every token).
"""
import numpy as np

from ..engine.backend import to_numpy
from ..engine.tensor import no_grad
from .early_exit import forward_with_exits
from .kv_cache import KVCache


def _layer_work(model, block, mode):
    """The fraction of a layer's full work one decoded token ran: 1 for a dense block, experts
    ran / top_k for a MoE block, 0 for a MoD block it skipped or a layer it exited before."""
    if mode in ("propagate", "skip"):
        return 0.0
    inner = block
    if hasattr(block, "last"):                                       # a Mixture-of-Depths block
        keep = to_numpy(block.last["keep"])
        if keep.size == 0 or not keep[0, 0]:
            return 0.0
        inner = block.block
    ffn = inner.mlp
    if not hasattr(ffn, "_last_routing"):
        return 1.0
    ran = (to_numpy(ffn._last_routing[1].slot_position) >= 0).sum()
    return float(ran) / ffn.top_k


def _log_probs(logits):
    z = to_numpy(logits).astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def trace(model, ids, surprisal_model=None):
    """ids (N,) ints -> {'flops' (N,), 'work' (n_layer, N), 'surprisal' (N,) nats (NaN for a
    window's first token, which has no context)}. The model is put in eval mode."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.ndim != 1 or ids.size == 0:
        raise ValueError(f"trace needs a 1-D array of at least one token id, got shape {ids.shape}")
    model.eval()
    c = model.config
    N, bs = ids.size, c.block_size
    flops, work = np.zeros(N), np.zeros((c.n_layer, N))
    surprisal = np.full(N, np.nan)
    with no_grad():
        for w in range(0, N, bs):
            window = ids[w:w + bs]
            cache = KVCache(c.n_layer, bs)
            previous = None
            for t in range(window.size):
                step = window[None, t:t + 1]
                if t and c.exit_threshold is not None:
                    logits = forward_with_exits(model, step, cache, c.exit_threshold)
                else:
                    logits, _ = model(step, cache=cache)
                plan = model._exit_plan
                modes = plan["modes"] if plan else ["full"] * c.n_layer
                flops[w + t] = model.compute_per_token()[0, 0]
                work[:, w + t] = [_layer_work(model, b, m) for b, m in zip(model.h, modes)]
                if previous is not None:
                    surprisal[w + t] = -previous[window[t]]
                previous = _log_probs(logits.data)[0, -1]
            if surprisal_model is not None:                          # one forward per window
                surprisal_model.eval()
                logits, _ = surprisal_model(window[None, :])
                lp = _log_probs(logits.data)[0]
                surprisal[w + 1:w + window.size] = -lp[np.arange(window.size - 1), window[1:]]
    return {"flops": flops, "work": work, "surprisal": surprisal}
