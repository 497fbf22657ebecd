"""Compute per token: the matmul FLOPs each token of the last forward executed, (B, T).

What is counted is what the ledger (chapter 10) counts in its matmul column, call by call, so the
sum over tokens is the ledger's `flops_matmul` for the same forward (tests/test_compute.py checks
it where tinysparse.ledger exists): 2*m*n*k per (m, k) @ (k, n) product, attributed to the token
whose row it is. Elementwise work (layer norm, GELU, softmax, the gate-weighted combine) is the
ledger's other column and is not in here. Per token, with C = n_embd:

    attention   c_attn 2*C*3C + c_proj 2*C*C, and 4*C*L for the scores Q K^T and the mix P V
                over the L keys the kernel computes: L = T, the FULL context, because the fused
                kernel computes every score and then masks the future (engine/attention.py); with
                a KV cache L = the cached positions + T (adaptive/kv_cache.py)
    dense MLP   2*C*4C + 2*4C*C = 16*C^2
    MoE         the router 2*C*E_cols (E_cols = n_expert, + n_null with null experts), 4*C*d_expert
                per expert the token RAN (its kept slots: null, empty and dropped slots are 0),
                and 4*C*(n_shared*d_expert) for the shared experts
    head        2*C*vocab_size (the tied LM head), for the positions it ran on: every one, or
                the last logits_to_keep (sampling's prefill: only the last token pays for it)
    exits       the head again at every layer whose exit was evaluated (LayerSkip's loss: every
                layer but the first; CALM's decoding: each layer until all rows exited), and at
                a layer every row skipped only K and V, 2*C*3C (CALM's state propagation)
    routed      a Mixture-of-Depths block: 2*C for its router on every token, and the attention
                (over the keys of the tokens it gathered) and FFN above for the tokens it ran;
                a skipped token's block work is 0

The embedding lookups are gathers (0 FLOPs). The model is read by attribute (this file does not
import gpt.py); the forward leaves what is needed: GPT._last_positions (B, T, keys) and each MoE
layer's routing plan.
"""
import numpy as np

from ..engine.backend import to_numpy


def attention_flops(n_embd, n_keys):
    """Matmul FLOPs of one token's attention: projections 8*C^2 and scores + mix 4*C*n_keys."""
    return 2 * n_embd * 3 * n_embd + 2 * n_embd * n_embd + 4 * n_embd * n_keys


def mlp_flops(n_embd):
    """The dense MLP, C -> 4C -> C: 16*C^2."""
    return 2 * n_embd * 4 * n_embd * 2


def moe_flops(layer, B, T):
    """(B, T) matmul FLOPs of a MoE layer's last forward, from its routing plan."""
    C, d = layer.n_embd, layer.d_expert
    _, plan = layer._last_routing
    ran = (to_numpy(plan.slot_position) >= 0).sum(axis=1).reshape(B, T)    # experts each token ran
    router = 2 * C * layer.router.weight.shape[1]
    shared = 0 if layer.shared is None else 4 * C * layer.n_shared * d
    return router + shared + ran * (4 * C * d)


def _ffn_flops(ffn, n_embd, B, T):
    return moe_flops(ffn, B, T) if hasattr(ffn, "_last_routing") else mlp_flops(n_embd)


def _routed_block(block, n_embd, B, T, total):
    """A Mixture-of-Depths block (mod.py): its router 2*C for every token; the block's work for
    the tokens it processed, at their positions; returns the FLOPs of pad rows (no token's)."""
    last = block.last
    total += 2 * n_embd
    slots, keep = to_numpy(last["slots"]), to_numpy(last["keep"])
    if slots.shape[1] == 0:                                     # nobody ran: the block cost 0
        return 0.0
    k = slots.shape[1]
    per_slot = attention_flops(n_embd, last["keys"]) + _ffn_flops(block.block.mlp, n_embd, B, k)
    per_slot = np.broadcast_to(per_slot, (B, k))
    rows = np.arange(B)[:, None].repeat(k, axis=1)
    np.add.at(total, (rows[keep], slots[keep]), per_slot[keep])
    return float(per_slot[~keep].sum())


def _count(model):
    shape = getattr(model, "_last_positions", None)
    if shape is None:
        raise ValueError("compute_per_token reads the last forward: run the model first")
    B, T, n_keys = shape
    c = model.config
    total, padding = np.zeros((B, T)), 0.0
    plan = getattr(model, "_exit_plan", None)                   # a decoding step with early exits
    modes = plan["modes"] if plan else ["full"] * len(model.h)
    for block, mode in zip(model.h, modes):
        if mode == "propagate":                                 # CALM: only K, V from the exited state
            total += 2 * c.n_embd * 3 * c.n_embd
        elif mode == "skip":
            continue
        elif hasattr(block, "last"):                            # routed: only some tokens ran it
            padding += _routed_block(block, c.n_embd, B, T, total)
        else:
            total += attention_flops(c.n_embd, n_keys)
            total += _ffn_flops(block.mlp, c.n_embd, B, T)
    heads = plan["heads"] if plan else 1 + getattr(model, "_exit_heads", 0)
    rows = T if plan else getattr(model, "_head_rows", None) or T   # the last positions it ran on
    total[:, T - rows:] += heads * 2 * c.n_embd * c.vocab_size  # the head, at every exit it was read
    return total, padding


def compute_per_token(model):
    """(B, T) float64: the matmul FLOPs each token of model's last forward executed.

    A ValueError before any forward. Every block is counted as it ran: a dense MLP costs every
    token the same, a MoE layer costs each token the experts it ran, a routed (MoD) block costs a
    token it skipped only its router's 2*C."""
    return _count(model)[0]


def padding_flops(model):
    """Matmul FLOPs of the last forward on rows that held no token: a ragged batch under MoD's
    causal rule pads each row's chosen tokens to the longest row's count (mod.py). 0 in training
    (top-k takes the same count from every row) and for one sequence. compute_per_token's sum
    plus this is every matmul FLOP executed."""
    return _count(model)[1]
