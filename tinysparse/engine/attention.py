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
        return Attention.attend(ctx, q, k, v, causal)

    @staticmethod
    def attend(ctx, q, k, v, causal, out=None):
        """The forward, with P V written into `out` when given (a NumPy array of the result's
        shape whose matrices BLAS can write: PackedCausalAttention's (B, T, C) output)."""
        xp = array_module(q)
        T, hd = q.shape[-2], q.shape[-1]
        scale = 1.0 / math.sqrt(hd)
        p = q @ k.swapaxes(-1, -2)                     # (..., T, T) scores
        if p.size == 0:                                # no queries (T = 0): an empty answer
            ctx.save_for_backward(q, k, v, p)
            ctx.scale = scale
            return xp.matmul(p, v, out=out)
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
            return xp.matmul(p, v, out=out)
        p *= scale
        if causal:
            xp.minimum(p, _future_ceiling(T, xp, p.dtype), out=p)  # the diagonal is never masked
        p -= p.max(axis=-1, keepdims=True)
        xp.exp(p, out=p)
        p /= p.sum(axis=-1, keepdims=True)             # P, softmax over keys
        ctx.save_for_backward(q, k, v, p)
        ctx.scale = scale
        return xp.matmul(p, v, out=out)                # (..., T, hd)

    @staticmethod
    def backward(ctx, grad):
        return Attention.attend_backward(ctx, grad)

    @staticmethod
    def attend_backward(ctx, grad, out=(None, None, None)):
        """The backward, with dq, dk, dv written into `out` where given (NumPy arrays BLAS can
        write: views into PackedCausalAttention's (B, T, 3C) gradient)."""
        q, k, v, p = ctx.saved
        xp = array_module(grad)
        dv = xp.matmul(p.swapaxes(-1, -2), grad, out=out[2])
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
        dq = xp.matmul(ds, k, out=out[0])
        dk = xp.matmul(ds.swapaxes(-1, -2), q, out=out[1])
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
    and moving heads around: the head views are strided windows into qkv. On NumPy arrays the
    matmuls also write through such windows: P V straight into the (B, T, C) output, and dq, dk,
    dv into the (B, T, 3C) gradient, where a transposed copy of each was made before (the same
    BLAS calls, the same bits). A small gain, within the spread at the level of a training step:
    the headline step took 0.986x the time (median of 150 per-step ratios, quartiles 0.963-1.01,
    the two versions taking turns in one process).
    """
    @staticmethod
    def forward(ctx, qkv, n_head):
        B, T, C3 = qkv.shape
        C = C3 // 3
        q, k, v = qkv.reshape(B, T, 3, n_head, C // n_head).transpose(2, 0, 3, 1, 4)  # (B, nh, T, hd) each
        ctx.n_head = n_head
        if array_module(qkv) is not np:                # CuPy: the result, then one copy
            y = Attention.attend(ctx, q, k, v, causal=True)                           # (B, nh, T, hd)
            return y.transpose(0, 2, 1, 3).reshape(B, T, C)                           # (B, T, C)
        # NumPy: P V goes straight into the (B, T, C) output through a (B, nh, T, hd) view of
        # it (rows C apart: BLAS writes it as it is), the copy of a transpose saved
        y = np.empty((B, T, C), qkv.dtype)
        Attention.attend(ctx, q, k, v, causal=True,
                         out=y.reshape(B, T, n_head, C // n_head).transpose(0, 2, 1, 3))
        return y

    @staticmethod
    def backward(ctx, grad):
        B, T, C = grad.shape
        nh = ctx.n_head
        g = grad.reshape(B, T, nh, C // nh).transpose(0, 2, 1, 3)                     # (B, nh, T, hd)
        if array_module(grad) is not np:               # CuPy: the three, then one copy
            dq, dk, dv = Attention.attend_backward(ctx, g)
            dqkv = array_module(grad).empty((3, B, nh, T, C // nh), dtype=grad.dtype)
            dqkv[0], dqkv[1], dqkv[2] = dq, dk, dv
            return dqkv.transpose(1, 3, 0, 2, 4).reshape(B, T, 3 * C)                # (B, T, 3C)
        # NumPy: dq, dk, dv go straight into the (B, T, 3C) gradient through (B, nh, T, hd)
        # views of it, as the forward read q, k, v out of qkv
        dqkv = np.empty((B, T, 3 * C), grad.dtype)
        views = dqkv.reshape(B, T, 3, nh, C // nh).transpose(2, 0, 3, 1, 4)          # (3, B, nh, T, hd)
        Attention.attend_backward(ctx, g, out=(views[0], views[1], views[2]))
        return dqkv


def causal_self_attention(qkv, n_head):
    """Causal multi-head attention from packed q, k, v projections (B, T, 3C) -> (B, T, C)."""
    shape = tuple(qkv.shape)
    if len(shape) != 3 or shape[-1] % 3:
        raise ValueError(f"causal_self_attention needs qkv of shape (B, T, 3C), got {shape}")
    C = shape[-1] // 3
    if isinstance(n_head, bool) or not isinstance(n_head, int) or n_head < 1 or C % n_head:
        raise ValueError(f"n_head must be a positive integer dividing C={C}, got {n_head!r}")
    return PackedCausalAttention.apply(qkv, n_head=n_head)
