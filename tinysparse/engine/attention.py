"""Scaled dot-product attention as one fused Function, and its packed multi-head causal form.

Split from functional.py, which re-exports both; the same rules hold (backward derived in a
comment above it, gradchecked in the tests).

Numerics: the softmax over keys divides by a sum that is at least 1 (the row's largest score
contributes exp(0)), and a causal row always keeps its diagonal, so no row is empty. The scores
S = Q K^T / sqrt(d) are formed in the inputs' dtype, like every library's: the result is finite
whenever every score q.k is (|q| |k| below the dtype's maximum), not for any finite q and k.
"""
import math

import numpy as np

from .backend import array_module
from .compiled import kernels as compiled_kernels
from .tensor import Function

_causal_masks = {}


def _future_ceiling(T, xp, dtype):
    """(T, T): -inf above the diagonal (the positions a token must not attend to), +inf elsewhere.
    minimum(scores, it) is the score or -inf, exactly as the assignment p[..., mask] = -inf
    (for every score but NaN), as one elementwise pass: a boolean-mask assignment makes CuPy
    turn the mask into indices first, which waits for the GPU."""
    key = (T, xp.__name__, np.dtype(dtype).str)
    if key not in _causal_masks:
        _causal_masks[key] = xp.where(xp.triu(xp.ones((T, T), dtype=bool), k=1),
                                      dtype.type(-np.inf), dtype.type(np.inf))
    return _causal_masks[key]


_NO_CEILING = np.empty((1, 1), np.float32)     # softmax_shift's ceiling when causal is False (unread)


class Attention(Function):
    # Vaswani et al. 2017, "Attention Is All You Need", eq. (1):
    #   S = Q K^T / sqrt(d),  P = softmax(S + causal mask),  Y = P V
    # Backward, with G = dL/dY:
    #   dV = P^T G,  dP = G V^T,  dS = P * (dP - rowsum(dP * P)),  dQ = dS K / sqrt(d),  dK = dS^T Q / sqrt(d)
    # One Function instead of five: the (T, T) score matrix is built, masked and normalised in
    # place, and only P is kept for the backward.
    compiled = True   # softmax through row_kernels.py on NumPy arrays (same bits); False: arrays only

    @staticmethod
    def forward(ctx, q, k, v, causal=True):
        xp = array_module(q)
        T, hd = q.shape[-2], q.shape[-1]
        scale = 1.0 / math.sqrt(hd)
        p = q @ k.swapaxes(-1, -2)                     # (..., T, T) scores
        if p.size == 0:                                # no queries (T = 0): an empty answer
            ctx.save_for_backward(q, k, v, p)
            ctx.scale = scale
            return p @ v
        # the loops read the (T, T) ceiling by query and key: causal needs Tq == Tk (attention()
        # says so; a direct call with others gets the array code's broadcast, or its error)
        square = not causal or p.shape[-2] == p.shape[-1]
        kernels = Attention.compiled and square and compiled_kernels(".row_kernels", p)
        if kernels:                                    # the lines below, in two loops around exp
            rows = p.reshape(-1, p.shape[-1])          # (..., T, Tk) -> (rows, Tk), a view
            ceiling = _future_ceiling(T, xp, p.dtype) if causal else _NO_CEILING
            kernels.softmax_shift(rows, ceiling, causal, p.dtype.type(scale))
            xp.exp(p, out=p)
            kernels.softmax_normalize(rows, p.dtype.type(0))
            ctx.save_for_backward(q, k, v, p)
            ctx.scale = scale
            return p @ v
        p *= scale
        if causal:
            xp.minimum(p, _future_ceiling(T, xp, p.dtype), out=p)  # the diagonal is never masked
        p -= p.max(axis=-1, keepdims=True)
        xp.exp(p, out=p)
        p /= p.sum(axis=-1, keepdims=True)             # P, softmax over keys
        ctx.save_for_backward(q, k, v, p)
        ctx.scale = scale
        return p @ v                                   # (..., T, hd)

    @staticmethod
    def backward(ctx, grad):
        q, k, v, p = ctx.saved
        dv = p.swapaxes(-1, -2) @ grad
        ds = grad @ v.swapaxes(-1, -2)                 # dP
        kernels = (Attention.compiled and ds.size and ds.shape == p.shape
                   and compiled_kernels(".row_kernels", ds, p))
        if kernels:                                    # the three lines below in one loop
            kernels.softmax_backward(ds.reshape(-1, ds.shape[-1]), p.reshape(-1, p.shape[-1]),
                                     ds.dtype.type(ctx.scale), ds.dtype.type(0))
        else:
            ds -= (ds * p).sum(axis=-1, keepdims=True)
            ds *= p                                    # dS (masked entries have P = 0, so dS = 0)
            ds *= ctx.scale
        dq = ds @ k
        dk = ds.swapaxes(-1, -2) @ q
        return dq, dk, dv


def attention(q, k, v, causal=True):
    """Scaled dot-product attention over the last two axes: q (..., Tq, hd), k (..., Tk, hd),
    v (..., Tk, hd_v) -> (..., Tq, hd_v). causal=True needs Tq == Tk (query i sees keys <= i).
    Vaswani et al. 2017, eq. (1)."""
    qs, ks, vs = (tuple(t.shape) for t in (q, k, v))
    if len(qs) < 2 or len(ks) < 2 or len(vs) < 2 or qs[-1] != ks[-1] or ks[-2] != vs[-2]:
        raise ValueError(f"attention needs q (..., Tq, hd), k (..., Tk, hd), v (..., Tk, hd_v); "
                         f"got q {qs}, k {ks}, v {vs}")
    if ks[-2] == 0 and qs[-2] > 0:
        raise ValueError(f"attention over no keys (k has shape {ks}) is undefined: each query "
                         f"needs at least one key")
    if causal and qs[-2] != ks[-2]:
        raise ValueError(f"causal attention needs as many queries as keys, got Tq={qs[-2]}, "
                         f"Tk={ks[-2]}: pass causal=False for cross-attention")
    return Attention.apply(q, k, v, causal=causal)


class PackedCausalAttention(Function):
    """Multi-head causal attention straight from the packed projection qkv (B, T, 3C) to (B, T, C).

    The same maths as Attention; packing saves the graph nodes and copies of splitting q, k, v
    and moving heads around: the head views are strided windows into qkv, and the backward
    writes dq, dk, dv straight into one (B, T, 3C) gradient.
    """
    @staticmethod
    def forward(ctx, qkv, n_head):
        B, T, C3 = qkv.shape
        C = C3 // 3
        q, k, v = qkv.reshape(B, T, 3, n_head, C // n_head).transpose(2, 0, 3, 1, 4)  # (B, nh, T, hd) each
        y = Attention.forward(ctx, q, k, v, causal=True)                              # (B, nh, T, hd)
        ctx.n_head = n_head
        return y.transpose(0, 2, 1, 3).reshape(B, T, C)                               # (B, T, C)

    @staticmethod
    def backward(ctx, grad):
        B, T, C = grad.shape
        nh = ctx.n_head
        g = grad.reshape(B, T, nh, C // nh).transpose(0, 2, 1, 3)                     # (B, nh, T, hd)
        dq, dk, dv = Attention.backward(ctx, g)
        dqkv = array_module(grad).empty((3, B, nh, T, C // nh), dtype=grad.dtype)
        dqkv[0], dqkv[1], dqkv[2] = dq, dk, dv
        return dqkv.transpose(1, 3, 0, 2, 4).reshape(B, T, 3 * C)                    # (B, T, 3C)


def causal_self_attention(qkv, n_head):
    """Causal multi-head attention from packed q, k, v projections (B, T, 3C) -> (B, T, C)."""
    shape = tuple(qkv.shape)
    if len(shape) != 3 or shape[-1] % 3:
        raise ValueError(f"causal_self_attention needs qkv of shape (B, T, 3C), got {shape}")
    C = shape[-1] // 3
    if isinstance(n_head, bool) or not isinstance(n_head, int) or n_head < 1 or C % n_head:
        raise ValueError(f"n_head must be a positive integer dividing C={C}, got {n_head!r}")
    return PackedCausalAttention.apply(qkv, n_head=n_head)
