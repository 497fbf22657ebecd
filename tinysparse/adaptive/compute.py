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
    head        2*C*vocab_size (the tied LM head)

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


def compute_per_token(model):
    """(B, T) float64: the matmul FLOPs each token of model's last forward executed.

    A ValueError before any forward. Every block is counted as it ran: a dense MLP costs every
    token the same, a MoE layer costs each token the experts it ran."""
    shape = getattr(model, "_last_positions", None)
    if shape is None:
        raise ValueError("compute_per_token reads the last forward: run the model first")
    B, T, n_keys = shape
    c = model.config
    total = np.zeros((B, T))
    for block in model.h:
        total += attention_flops(c.n_embd, n_keys)
        ffn = block.mlp
        total += moe_flops(ffn, B, T) if hasattr(ffn, "_last_routing") else mlp_flops(c.n_embd)
    total += 2 * c.n_embd * c.vocab_size
    return total
