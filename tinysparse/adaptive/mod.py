"""Mixture-of-Depths (Raposo et al. 2024): a routed block processes only some of the tokens.

A scalar router r_i = w^T x_i scores every token. In training, each sequence's top k = ceil(
capacity * T) tokens run the block (attention among themselves, then the FFN) and the others pass
by on the residual stream, untouched. The paper's eq. 1:

    x_i' = r_i f_i(X~) + x_i    if r_i is among the sequence's top k
    x_i' = x_i                  otherwise

with f the block's residual branch (attention + FFN, not the residual itself: it is added once)
and X~ the chosen tokens. The router's weight multiplies the processed path only, which is how it
learns; here the weight is sigmoid(r_i) (a bounded gate, as public implementations use; the paper
multiplies by r_i itself).

Top-k over a sequence is NOT causal: whether token i is processed depends on later tokens' scores
(tests/test_mod.py shows a later token changing an earlier output). Sampling cannot see the
future, so it uses the paper's first fix (section 3.5): an auxiliary binary cross-entropy teaches
sigmoid(r_i) to predict the top-k decision,

    L_aux = BCE(sigmoid(r_i), 1[i in top-k])

and at sampling (eval mode, and always with a KV cache, where a lone decoded token would be its
own "top-k") token i is processed when sigmoid(r_i) > 0.5, i.e. r_i > 0. A token that skips a
routed block writes no key or value there (kv_cache.py keeps the entry invalid), so later tokens
do not attend to it at that block.

rule: 'topk' (training) or 'causal' (sigmoid(r) > 0.5; the default in eval mode). random=True is
the control: the same capacity, tokens chosen without a router (training: top-k of uniform
draws; eval and sampling: a hash of the absolute position, so cached and uncached sampling agree).
"""
import math

import numpy as np

from .. import nn
from ..engine import random as ts_random
from ..engine.backend import array_module
from ..engine.ops import concatenate
from ..engine.tensor import Tensor
from ..moe.router import log_sigmoid
from .kv_cache import cached_attention

RULES = ("topk", "causal", "random")


class MoDBlock(nn.Module):
    """A routed transformer block around `block` (anything with ln_1, attn, ln_2, mlp):
    (B, T, C) -> (B, T, C). After a forward: aux_loss (the BCE, training only) and `last`
    (processed mask (B, T), the gathered positions, keys per query: compute.py reads it)."""

    def __init__(self, block, n_embd, capacity=0.125, aux_coef=0.01, random=False, salt=0):
        self.block = block
        self.salt = salt              # the random control's hash differs from block to block
        self.router = nn.Linear(n_embd, 1, bias=False)              # r_i = w^T x_i
        self.capacity, self.aux_coef, self.random = capacity, aux_coef, random
        self.eval_rule = "causal"     # what eval mode uses; set_rule(model, 'topk') measures top-k
        self.aux_loss, self.last = None, None

    def extra_repr(self):
        return f"capacity={self.capacity}, random={self.random}, eval_rule={self.eval_rule!r}"

    def _scores(self, x, logits, start):
        """The numbers whose order or sign decides: the router's logits, or the control's draws."""
        if not self.random:
            return logits.data
        xp = array_module(x.data)
        B, T = logits.shape
        if self.training:                                           # fresh uniform draws: top-k of them
            return xp.asarray(ts_random.generator().random((B, T)))
        # sampling: a hash of the absolute position and the block (exact integers, so the cached
        # and the uncached forward agree), > 0 with probability about `capacity`
        pos = (start + np.arange(T)).astype(np.uint64) * np.uint64(2654435761) + np.uint64(self.salt)
        u = ((pos * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(40)).astype(np.float64) / 2.0 ** 24
        return xp.asarray(np.broadcast_to(u - (1 - self.capacity), (B, T)))

    def _choose(self, scores, rule):
        """(B, T) bool: which tokens run the block."""
        xp = array_module(scores)
        B, T = scores.shape
        if rule == "causal":
            return scores > 0
        k = max(1, min(T, math.ceil(self.capacity * T)))
        top = xp.argsort(-scores, axis=1, kind="stable")[:, :k]      # ties: the earlier token
        chosen = xp.zeros((B, T), dtype=bool)
        chosen[xp.arange(B)[:, None], top] = True
        return chosen

    def forward(self, x, cache=None, start=0):
        B, T, C = x.shape
        logits = self.router(x).reshape(B, T)                       # (B, T) r_i
        rule = "topk" if self.training else self.eval_rule
        if cache is not None or self.random and not self.training:
            rule = "causal"                                         # no future to rank against
        chosen = self._choose(self._scores(x, logits, start), rule)
        self.aux_loss = None
        if self.training and self.aux_coef > 0 and not self.random:
            # Raposo et al. 2024, section 3.5: BCE(sigmoid(r), top-k membership), a mean over tokens
            t = chosen.astype(logits.dtype)
            bce = -(log_sigmoid(logits) * t + log_sigmoid(-logits) * (1 - t)).sum() / max(B * T, 1)
            self.aux_loss = bce * self.aux_coef
        slots, keep = _gather_plan(chosen)                          # (B, k) positions, (B, k) real
        self.last = {"chosen": chosen, "slots": slots, "keep": keep, "keys": 0, "rule": "random" if self.random else rule,
                     "logits": logits.data}
        if slots.shape[1] == 0:                                     # no token runs: x passes by
            return x
        rows = array_module(slots).arange(B)[:, None]
        x_sel = x[rows, slots]                                      # (B, k, C) in position order
        delta = self._branch(x_sel, cache, start + slots, keep)    # (B, k, C) attention + FFN
        gate = logits.sigmoid()[rows, slots] * keep.astype(x.dtype)  # (B, k): pads and skips get 0
        update = delta * gate.reshape(B, -1, 1)
        # x_i + gate_i * f_i for processed tokens, x_i exactly for the others: scatter the k rows
        # back by a gather from [update; 0] (a row k of zeros stands for "no slot")
        inverse = array_module(slots).full((B, T), slots.shape[1])
        inverse[rows, slots] = array_module(slots).arange(slots.shape[1])[None, :]
        inverse[~chosen] = slots.shape[1]
        zero = Tensor(array_module(x.data).zeros((B, 1, C), dtype=x.dtype))
        padded = concatenate([update, zero], axis=1)                # (B, k + 1, C)
        return x + padded[rows, inverse]                            # (B, T, C)

    def _branch(self, x, cache, positions, keep):
        """f(X~): the block's residual branch on the chosen tokens, attention among them only."""
        b = self.block
        if cache is None:
            a = b.attn(b.ln_1(x))                                   # causal over the gathered order
            self.last["keys"] = x.shape[1]
        else:
            qkv = b.attn.c_attn(b.ln_1(x))
            y = cached_attention(qkv, b.attn.n_head, cache, positions, keep)
            a = b.attn.resid_dropout(b.attn.c_proj(y))
            self.last["keys"] = int(positions.max()) + 1
        return a + b.mlp(b.ln_2(x + a))                             # the residual is added by the caller


def _gather_plan(chosen):
    """(slots (B, k_max), keep (B, k_max)): each row's chosen positions in order, then, to fill a
    ragged batch (the causal rule chooses different counts per row), that row's first unchosen
    positions, marked keep=False. Pads come after every real slot: causal attention over the
    gathered order never lets a real token see one, and with a cache a pad writes only the
    invalid entry its skipped position has anyway."""
    xp = array_module(chosen)
    B, T = chosen.shape
    k_max = int(chosen.sum(axis=1).max()) if B else 0
    order = xp.argsort(~chosen, axis=1, kind="stable")[:, :k_max]   # chosen first, in position order
    keep = xp.take_along_axis(chosen, order, axis=1)
    return order, keep


def set_rule(model, rule):
    """Which rule every MoD block of model uses in eval mode: 'causal' (sampling's) or 'topk'
    (training's, to measure the loss the causal rule gives up)."""
    if rule not in ("causal", "topk"):
        raise ValueError(f"MoD eval rule {rule!r}: use 'causal' or 'topk'")
    for m in model.modules():
        if isinstance(m, MoDBlock):
            m.eval_rule = rule


def mod_blocks(model):
    return [m for m in model.modules() if isinstance(m, MoDBlock)]


def mod_stats(model):
    """None without routed blocks; else, over the routed blocks' last forward:
    processed_fraction   tokens that ran the block / tokens
    predictor_accuracy   after a top-k (training) forward: how often the causal rule r > 0 agrees
                         with top-k's decision (Raposo et al. report ~97% for their predictor);
                         None after a forward under another rule
    """
    blocks = [b for b in mod_blocks(model) if b.last is not None]
    if not blocks:
        return None
    chosen = [np.asarray(b.last["chosen"]) for b in blocks]
    agree = [np.mean((np.asarray(b.last["logits"]) > 0) == c) for b, c in zip(blocks, chosen)
             if b.last["rule"] == "topk"]
    return {"processed_fraction": float(np.mean([c.mean() for c in chosen])),
            "predictor_accuracy": float(np.mean(agree)) if agree else None}


def is_routed(config, i):
    """Raposo et al. route every other block: block i is routed when (i + 1) % mod_every == 0,
    so the first block always sees every token."""
    return config.mod_capacity is not None and (i + 1) % config.mod_every == 0


def wrap_block(block, config, i):
    """block, or a MoDBlock around it when config routes block i."""
    if not is_routed(config, i):
        return block
    return MoDBlock(block, config.n_embd, config.mod_capacity, config.mod_aux_coef,
                    random=config.mod_router == "random", salt=i)
