"""Chapter 06 helpers: three ways to compute a MoE layer's expert outputs, forward only, in NumPy.

    out[t] = sum_j gate[t, j] * FFN_{e(t, j)}(x[t]),   FFN_e(x) = GELU(x W1_e + b1_e) W2_e + b2_e

Each function returns (out, rows): `rows` counts the token rows it pushed through an expert's
matmuls, which is what its FLOPs are proportional to (4 * C * d per row: two matmuls, 2 FLOPs per
multiply-add). They share one GELU so the comparison is about data movement, nothing else.

    dense_masked   every expert on every token, then multiply by a (T, E) gate matrix that is zero
                   where the token did not choose the expert.        rows = T * E
    mask_loop      a Python loop over experts; each finds its tokens with a boolean mask over the
                   whole routing table (what a simple PyTorch MoE does).   rows = T * k
    sort_based     tinysparse's dispatch: plan (sort), gather, grouped matmul, combine.
                                                                      rows = T * k
"""
import math

import numpy as np

from tinysparse import functional as F


def gelu(h):
    """GELU on a plain array: tinysparse.functional.gelu's forward (no graph is recorded)."""
    return F.gelu(h).data


def random_moe(T, C, E, k, d, seed=0, dtype=np.float32):
    """Inputs of one MoE layer: x (T, C), expert_ids (T, k) (k distinct experts per token, at
    random), gates (T, k) summing to 1, and the expert weights w1 (E, C, d), b1, w2 (E, d, C), b2."""
    rng = np.random.default_rng(seed)
    ids = np.argsort(rng.random((T, E)), axis=1)[:, :k]
    gates = rng.random((T, k)).astype(dtype)
    gates /= gates.sum(axis=1, keepdims=True)
    x = rng.standard_normal((T, C)).astype(dtype)
    w1 = (rng.standard_normal((E, C, d)) / math.sqrt(C)).astype(dtype)
    w2 = (rng.standard_normal((E, d, C)) / math.sqrt(d)).astype(dtype)
    b1 = (0.1 * rng.standard_normal((E, d))).astype(dtype)
    b2 = (0.1 * rng.standard_normal((E, C))).astype(dtype)
    return x, ids, gates, (w1, b1, w2, b2)


def dense_masked(x, ids, gates, weights):
    """Run all E experts on all T tokens (two batched matmuls), weight by a dense gate matrix."""
    w1, b1, w2, b2 = weights
    T, E = x.shape[0], w1.shape[0]
    G = np.zeros((T, E), dtype=gates.dtype)                   # G[t, e] = gate, 0 if not chosen
    np.put_along_axis(G, ids, gates, axis=1)
    h = gelu(np.matmul(x[None], w1) + b1[:, None])            # (E, T, d): E * T rows of work
    y = np.matmul(h, w2) + b2[:, None]                        # (E, T, C)
    out = np.einsum("te,etc->tc", G, y)                       # most of G is zero: wasted work
    return out, T * E


def mask_loop(x, ids, gates, weights):
    """for e in experts: find e's tokens with a mask over the routing table, run e on them."""
    w1, b1, w2, b2 = weights
    out = np.zeros_like(x)
    rows = 0
    for e in range(w1.shape[0]):
        hit = ids == e                                        # (T, k): T * k compares, E times
        tok = np.flatnonzero(hit.any(axis=1))                 # a token picks e at most once
        if tok.size == 0:
            continue
        g = (gates * hit).sum(axis=1)[tok]
        h = gelu(x[tok] @ w1[e] + b1[e])                      # a gather (x[tok]) per expert
        out[tok] += g[:, None] * (h @ w2[e] + b2[e])          # a scatter-add per expert
        rows += tok.size
    return out, rows


def sort_based(x, ids, gates, weights, backend, capacity=None):
    """tinysparse's dispatch, called primitive by primitive (what MoE.forward does, minus autograd)."""
    w1, b1, w2, b2 = weights
    plan = backend.plan(ids, w1.shape[0], capacity)            # sort: integers only
    buf = backend.gather(x, plan.token_index)                 # (S, C) rows grouped by expert
    h = gelu(backend.grouped_mm(buf, w1, b1, plan.offsets))   # (S, d): S = T * k rows of work
    y = backend.grouped_mm(h, w2, b2, plan.offsets)           # (S, C)
    return backend.combine(y, gates, plan.slot_position), plan.n_kept


def naive_loop(x, ids, gates, weights, capacity=None):
    """The definition, one (token, choice) at a time, in float64; with a capacity C, expert e
    serves only the first C slots that chose it, in token order (a dropped slot adds nothing)."""
    w1, b1, w2, b2 = (w.astype(np.float64) for w in weights)
    out = np.zeros(x.shape, dtype=np.float64)
    served = np.zeros(w1.shape[0], dtype=np.int64)
    for t in range(x.shape[0]):
        for j, e in enumerate(ids[t]):
            served[e] += 1
            if capacity is not None and served[e] > capacity:
                continue
            h = gelu(x[t].astype(np.float64) @ w1[e] + b1[e])
            out[t] += gates[t, j] * (h @ w2[e] + b2[e])
    return out


def matmul_flops(rows, C, d):
    """Forward FLOPs of the experts' two matmuls for `rows` token rows: 2 * (C*d + d*C) per row."""
    return 4 * rows * C * d
