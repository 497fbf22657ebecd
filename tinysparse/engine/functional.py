"""Neural-network functions. The hot ones are fused: one Function with a hand-written backward.

Fusing matters twice over in an autograd engine written in Python: it replaces a chain of small
Functions (each an allocation, a graph node and a Python call) by one, and the hand-derived
backward is usually cheaper than the chain rule through every intermediate. Each backward is
derived in a comment above it and gradchecked in the tests.
"""
import math

from . import random as ts_random
from .backend import array_module
from .tensor import Function, Tensor


def _stable_softmax(x, axis):
    xp = array_module(x)
    shifted = x - x.max(axis=axis, keepdims=True)  # exp of a large logit would overflow
    e = xp.exp(shifted)
    return e / e.sum(axis=axis, keepdims=True)


# ---- softmax and log-softmax ---------------------------------------------------------------------

class Softmax(Function):
    # y = softmax(x):  dL/dx = y * (g - sum(g * y))
    @staticmethod
    def forward(ctx, x, axis=-1):
        y = _stable_softmax(x, axis)
        ctx.save_for_backward(y)
        ctx.axis = axis
        return y

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved
        return y * (grad - (grad * y).sum(axis=ctx.axis, keepdims=True))


def softmax(x, axis=-1):
    return Softmax.apply(x, axis=axis)


class LogSoftmax(Function):
    # y = x - logsumexp(x):  dL/dx = g - softmax(x) * sum(g)
    @staticmethod
    def forward(ctx, x, axis=-1):
        xp = array_module(x)
        shifted = x - x.max(axis=axis, keepdims=True)
        y = shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))
        ctx.save_for_backward(y)
        ctx.axis = axis
        return y

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved
        return grad - array_module(y).exp(y) * grad.sum(axis=ctx.axis, keepdims=True)


def log_softmax(x, axis=-1):
    return LogSoftmax.apply(x, axis=axis)


# ---- cross-entropy -------------------------------------------------------------------------------

class CrossEntropy(Function):
    # L = mean over counted rows of  -log softmax(z)[target]
    # dL/dz = (softmax(z) - onehot(target)) / n_counted   for counted rows, 0 for ignored rows
    @staticmethod
    def forward(ctx, logits, targets, ignore_index=None):
        xp = array_module(logits)
        V = logits.shape[-1]
        z = logits.reshape(-1, V)                      # (N, V)
        t = targets.reshape(-1)                        # (N,)
        keep = None if ignore_index is None else (t != ignore_index)
        if keep is not None:
            t = xp.where(keep, t, 0)                   # any valid index; those rows are masked
        rows = xp.arange(z.shape[0])
        shifted = z - z.max(axis=1, keepdims=True)
        sum_exp = xp.exp(shifted).sum(axis=1)
        nll = xp.log(sum_exp) - shifted[rows, t]       # (N,)
        count = z.shape[0] if keep is None else int(keep.sum())
        if keep is not None:
            nll = nll * keep
        ctx.save_for_backward(shifted, sum_exp, t, keep)
        ctx.shape, ctx.count = logits.shape, max(count, 1)
        return xp.asarray(nll.sum() / ctx.count, dtype=logits.dtype)

    @staticmethod
    def backward(ctx, grad):
        shifted, sum_exp, t, keep = ctx.saved
        xp = array_module(shifted)
        dz = xp.exp(shifted) / sum_exp[:, None]        # softmax, rebuilt (N, V)
        dz[xp.arange(dz.shape[0]), t] -= 1.0
        if keep is not None:
            dz *= keep[:, None]
        dz *= grad / ctx.count
        return dz.reshape(ctx.shape), None


def cross_entropy(logits, targets, ignore_index=None):
    """Mean negative log-likelihood of integer `targets` (...) under `logits` (..., V)."""
    targets = targets.data if isinstance(targets, Tensor) else targets
    xp = array_module(logits.data if isinstance(logits, Tensor) else logits)
    targets = xp.asarray(targets)
    if targets.dtype.kind not in "iu":
        raise TypeError(f"cross_entropy targets must be integers, got dtype {targets.dtype}")
    return CrossEntropy.apply(logits, targets, ignore_index=ignore_index)


# ---- layer norm ----------------------------------------------------------------------------------

class LayerNorm(Function):
    # Ba, Kiros, Hinton 2016: y = (x - mean) / sqrt(var + eps) * w + b, over the last axis.
    # With xhat = (x - mean) * rstd and gh = g * w:
    #   dL/dx = rstd * (gh - mean(gh) - xhat * mean(gh * xhat))
    #   dL/dw = sum over rows of g * xhat,   dL/db = sum over rows of g
    @staticmethod
    def forward(ctx, x, weight, bias, eps=1e-5):
        xp = array_module(x)
        mean = x.mean(axis=-1, keepdims=True)
        centered = x - mean
        var = (centered * centered).mean(axis=-1, keepdims=True)
        rstd = 1.0 / xp.sqrt(var + eps)
        xhat = centered * rstd
        ctx.save_for_backward(xhat, rstd, weight)
        out = xhat
        if weight is not None:
            out = out * weight
        if bias is not None:
            out = out + bias
        return out

    @staticmethod
    def backward(ctx, grad):
        xhat, rstd, weight = ctx.saved
        gh = grad if weight is None else grad * weight
        C = xhat.shape[-1]
        dx = rstd * (gh - gh.sum(axis=-1, keepdims=True) / C
                     - xhat * (gh * xhat).sum(axis=-1, keepdims=True) / C)
        rows = tuple(range(grad.ndim - 1))
        dw = (grad * xhat).sum(axis=rows) if ctx.needs_input_grad[1] else None
        db = grad.sum(axis=rows) if ctx.needs_input_grad[2] else None
        return dx, dw, db


def layer_norm(x, weight=None, bias=None, eps=1e-5):
    return LayerNorm.apply(x, weight, bias, eps=eps)


# ---- GELU ----------------------------------------------------------------------------------------

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


class GELU(Function):
    # Hendrycks & Gimpel 2016, tanh form: gelu(x) = 0.5 x (1 + tanh(u)),  u = sqrt(2/pi)(x + 0.044715 x^3)
    # d/dx = 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) sqrt(2/pi) (1 + 3 * 0.044715 x^2)
    @staticmethod
    def forward(ctx, x):
        xp = array_module(x)
        th = xp.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x * x * x))
        ctx.save_for_backward(x, th)
        return 0.5 * x * (1.0 + th)

    @staticmethod
    def backward(ctx, grad):
        x, th = ctx.saved
        du_dx = _SQRT_2_OVER_PI * (1.0 + 3 * 0.044715 * x * x)
        return grad * (0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * du_dx)


def gelu(x):
    return GELU.apply(x)


# ---- dropout -------------------------------------------------------------------------------------

class _ScaleByMask(Function):
    @staticmethod
    def forward(ctx, x, scaled_mask):
        ctx.save_for_backward(scaled_mask)
        return x * scaled_mask

    @staticmethod
    def backward(ctx, grad):
        (scaled_mask,) = ctx.saved
        return grad * scaled_mask, None


def dropout(x, p=0.1, training=True):
    """Zero each element with probability p and scale the rest by 1/(1-p) (inverted dropout).

    The mask comes from the library's seeded generator (tinysparse.random), so runs repeat.
    In eval mode, or with p = 0, x passes through untouched.
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    if not training or p == 0.0:
        return x
    data = x.data if isinstance(x, Tensor) else x
    keep = ts_random.uniform(data.shape, device=x.device if isinstance(x, Tensor) else "cpu") >= p
    scaled_mask = keep.astype(data.dtype) * (1.0 / (1.0 - p))  # a Python float keeps the dtype
    return _ScaleByMask.apply(x, scaled_mask)


# ---- causal self-attention -----------------------------------------------------------------------

_causal_masks = {}


def _future_mask(T, xp):
    """(T, T) booleans, True above the diagonal: the positions a token must not attend to."""
    key = (T, xp.__name__)
    if key not in _causal_masks:
        _causal_masks[key] = xp.triu(xp.ones((T, T), dtype=bool), k=1)
    return _causal_masks[key]


class Attention(Function):
    # Vaswani et al. 2017, "Attention Is All You Need", eq. (1):
    #   S = Q K^T / sqrt(d),  P = softmax(S + causal mask),  Y = P V
    # Backward, with G = dL/dY:
    #   dV = P^T G,  dP = G V^T,  dS = P * (dP - rowsum(dP * P)),  dQ = dS K / sqrt(d),  dK = dS^T Q / sqrt(d)
    # One Function instead of five: the (T, T) score matrix is built, masked and normalised in
    # place, and only P is kept for the backward.
    @staticmethod
    def forward(ctx, q, k, v, causal=True):
        xp = array_module(q)
        T, hd = q.shape[-2], q.shape[-1]
        scale = 1.0 / math.sqrt(hd)
        p = q @ k.swapaxes(-1, -2)                     # (..., T, T) scores
        p *= scale
        if causal:
            p[..., _future_mask(T, xp)] = -xp.inf     # the diagonal is never masked: no empty rows
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
        ds -= (ds * p).sum(axis=-1, keepdims=True)
        ds *= p                                        # dS (masked entries have P = 0, so dS = 0)
        ds *= ctx.scale
        dq = ds @ k
        dk = ds.swapaxes(-1, -2) @ q
        return dq, dk, dv


def attention(q, k, v, causal=True):
    """Scaled dot-product attention over the last two axes: q, k, v (..., T, head_dim)."""
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
    return PackedCausalAttention.apply(qkv, n_head=n_head)
