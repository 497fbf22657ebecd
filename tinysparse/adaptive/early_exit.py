"""Early exit: the shared final layer norm and LM head read every layer, and a confident token
stops climbing.

Training (LayerSkip, Elhoushi et al. 2024, eq. 4-5, without their curriculum): the loss is a
weighted sum of every layer's cross-entropy through the shared ln_f + head,

    L = sum_l e~_l CE(head(ln_f(h_l)), y),   e~_l = e_l / sum_i e_i,
    e_l = e_scale * sum_{i<=l} i  (l < L-1),   e_{L-1} = (L-1) + e_scale * sum_{i<=L-2} i

so the weights rise with depth and the last layer keeps the largest share. In eval the loss is
the last layer's alone, comparable with any other model's.

Sampling (CALM, Schuster et al. 2022, section 3-4): after layer l, the softmax-response
confidence of the shared head, top-1 minus top-2 probability, is compared with a threshold; at
the first layer where it passes, the token exits with that layer's logits. The layers it skipped
still need its keys and values for the tokens after it: CALM's state propagation computes them
from the exited hidden state h_l (K = W_k ln_1(h_l), V = W_v ln_1(h_l) at each skipped layer),
which is what running the skipped blocks with a frozen residual stream writes into the cache.
A token that exits at a Mixture-of-Depths block it would skip writes nothing there (mod.py).

Exits happen only in cached decoding (one new token per step); the prompt, and every rebuilt
window, run at full depth, as in CALM.
"""
import numpy as np

from ..engine import functional as F
from ..engine.backend import array_module, to_numpy
from ..engine.ops import where
from ..engine.tensor import Tensor


def exit_weights(n_layer, e_scale):
    """LayerSkip's normalised per-layer loss weights e~_l, (n_layer,), rising with l, sum 1."""
    tri = np.cumsum(np.arange(n_layer, dtype=np.float64))          # sum_{i<=l} i
    e = e_scale * tri
    e[-1] = (n_layer - 1) + e_scale * (tri[-2] if n_layer > 1 else 0.0)
    return e / e.sum() if e.sum() > 0 else np.eye(n_layer)[-1]


def head(model, h):
    """The shared exit: ln_f then the tied LM head, (B, T, C) -> (B, T, vocab_size)."""
    return model.ln_f(h) @ model.wte.weight.T


def exit_loss(model, hiddens, final_logits, targets, ignore_index=None):
    """sum_l e~_l CE_l over the blocks' outputs `hiddens` (the last one's logits given)."""
    w = exit_weights(len(hiddens), model.config.exit_scale)
    loss = F.cross_entropy(final_logits, targets, ignore_index=ignore_index) * float(w[-1])
    for l, h in enumerate(hiddens[:-1]):
        if w[l] > 0:                                                 # e~_0 = 0: no head at layer 0
            ce = F.cross_entropy(head(model, h), targets, ignore_index=ignore_index)
            loss = loss + ce * float(w[l])
    model._exit_heads = int((w[:-1] > 0).sum())                      # extra heads run: compute.py
    return loss


def margin(logits):
    """CALM's softmax response: top-1 minus top-2 probability of the last position, (B,)."""
    z = to_numpy(logits).astype(np.float64)[:, -1]                   # (B, V)
    p = np.exp(z - z.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    top2 = np.sort(p, axis=-1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def forward_with_exits(model, idx, cache, threshold):
    """One decoding step with early exits: idx (B, 1) at position cache.length -> logits (B, 1, V),
    each row's from the layer it exited at. Under no_grad, in eval mode. Records model._exit_plan
    for compute_per_token: each layer's mode ('full': the block ran for every row, exited rows on
    a frozen stream; 'propagate': every row had exited, only K and V were computed; 'skip': a MoD
    block nobody runs), the heads evaluated, and each row's exit layer."""
    B, T = idx.shape
    xp = array_module(model.wte.weight.data)
    start = cache.start(T, model.config.n_layer)
    x = model.wte(idx) + model.wpe(np.arange(start, start + T))     # (B, 1, C)
    L = len(model.h)
    exited, exit_layer = np.zeros(B, dtype=bool), np.full(B, L - 1)
    logits, modes, heads = None, [], 0
    for l, block in enumerate(model.h):
        if exited.all():
            modes.append(_propagate(block, x, cache.layers[l], start))
            continue
        y = block(x, cache.layers[l], start)                        # exited rows: K/V from their h
        x = y if not exited.any() else where(Tensor(xp.asarray(exited)[:, None, None]), x, y)
        modes.append("full")
        if l == L - 1:
            break
        heads += 1
        layer_logits = head(model, x)                               # (B, 1, V) the shared exit
        now = ~exited & (margin(layer_logits.data) >= threshold)
        if now.any():
            logits = layer_logits if logits is None else where(
                Tensor(xp.asarray(now)[:, None, None]), layer_logits, logits)
            exit_layer[now], exited = l, exited | now
    if not exited.all():
        heads += 1
        final = head(model, x)
        logits = final if logits is None else where(
            Tensor(xp.asarray(exited)[:, None, None]), logits, final)
    cache.length = start + T
    model._last_positions = (B, T, start + T)
    model._exit_plan = {"modes": modes, "heads": heads, "exit_layer": exit_layer}
    return logits


def _propagate(block, h, layer_cache, start):
    """CALM's state propagation at a layer every row skipped: K, V from the exited state h."""
    if hasattr(block, "last"):                  # a MoD block: a skipping token writes nothing
        return "skip"
    qkv = block.attn.c_attn(block.ln_1(h)).data                     # (B, T, 3C)
    B, T, C3 = qkv.shape
    nh = block.attn.n_head
    _, k, v = qkv.reshape(B, T, 3, nh, C3 // 3 // nh).transpose(2, 0, 3, 1, 4)
    layer_cache.write(k, v, start)                                  # positions start .. start+T-1
    return "propagate"
