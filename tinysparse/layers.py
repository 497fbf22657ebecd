"""Layers: Linear, Embedding, LayerNorm, Dropout and the activations, built on nn.py's Module.

Each is a Module whose parameters are Parameters set in __init__ (nn.py finds them) and whose
forward calls the engine's differentiable operations. nn.py re-exports every name here, so
`nn.Linear` and `from tinysparse.nn import Linear` are the spellings the library and the chapters use.
"""
import math

import numpy as np

from ._checks import check_int, check_number
from .engine import backend
from .engine import functional as F
from .engine import random as ts_random
from .engine.tensor import Tensor
from .nn import Module, Parameter


def _uniform(shape, bound, dtype):
    return ts_random.generator().uniform(-bound, bound, size=shape).astype(dtype)


class Linear(Module):
    """y = x @ W + b: (..., d_in) -> (..., d_out). W is stored (d_in, d_out), the layout the matmul
    reads directly (PyTorch stores its transpose, (out_features, in_features)).

    Init as PyTorch does: U(-1/sqrt(d_in), 1/sqrt(d_in)) for both W and b. d_in and d_out are
    integers >= 1 (ValueError or TypeError otherwise).
    """

    def __init__(self, d_in, d_out, bias=True, dtype=np.float32):
        check_int("Linear d_in (in_features)", d_in, low=1)
        check_int("Linear d_out (out_features)", d_out, low=1)
        bound = 1.0 / math.sqrt(d_in)
        self.weight = Parameter(_uniform((d_in, d_out), bound, dtype))
        self.bias = Parameter(_uniform((d_out,), bound, dtype)) if bias else None

    def extra_repr(self):
        d_in, d_out = self.weight.shape
        return f"in_features={d_in}, out_features={d_out}, bias={self.bias is not None}"

    def forward(self, x):
        _check_last_axis(self, x, self.weight.shape[0])
        # x @ W + b: one Function with a bias in float32/float64, the MatMul (+ Add) pair
        # otherwise (engine/linear.py says why)
        return F.linear(x, self.weight, self.bias)


def _check_last_axis(module, x, size):
    """A clear error where the matmul or the broadcast would give a confusing one (or none)."""
    shape = tuple(getattr(x, "shape", ()))
    if not shape or shape[-1] != size:
        raise ValueError(f"{module!r} got an input of shape {shape}; its last axis must be {size}")


def check_ids(what, ids, n, ignore=None, n_name="", fix=""):
    """Integer ids in [0, n), those equal to `ignore` aside: NumPy would read a negative id from
    the end, silently. A ValueError names the first bad id's position, its value and the range
    (a TypeError a float dtype). Ids whose dtype cannot hold a bad value (uint8 ids with n >= 256,
    as the training batches are) need no look at the values: free on a GPU too. Otherwise, on a
    GPU, the smallest and largest id come back to the host in one transfer (one wait)."""
    if ids.dtype.kind not in "iu":
        raise TypeError(f"{what} must be integer token ids, got dtype {ids.dtype}; "
                        f"convert them with .astype(np.int64)")
    if F.ids_fit_dtype(ids.dtype, n) or not ids.size:
        return
    xp = backend.array_module(ids)
    if ignore is None and xp is np:     # the ufuncs' own reductions: 5 us per sampled token, not 16
        lo, hi = int(np.minimum.reduce(ids, axis=None)), int(np.maximum.reduce(ids, axis=None))
    else:
        if ignore is not None:  # the ignored ids stand in as 0, which is valid: no boolean mask (its size is data)
            ids_ = xp.where(ids != ignore, ids, 0)
        else:
            ids_ = ids
        lo, hi = (int(v) for v in backend.to_numpy(xp.stack([ids_.min(), ids_.max()])))
    if lo < 0 or hi >= n:
        bad = lo if lo < 0 else hi
        at = [int(i) for i in backend.to_numpy(xp.argwhere(ids == bad)[0])]
        raise ValueError(f"{what}{at} = {bad} is outside the valid token ids [0, {n_name}{n})"
                         + (fix(bad) if fix else ""))


class Embedding(Module):
    """A lookup table: row i of the (n, d) weight is the vector of token i. Init N(0, 1).

    forward(idx): integer ids (...) in [0, n) -> (..., d). An id outside [0, n) is a ValueError
    (never NumPy's reading of -1 as the last row); a float id is a TypeError.
    """

    def __init__(self, n, d, dtype=np.float32):
        check_int("Embedding n (num_embeddings)", n, low=1)
        check_int("Embedding d (embedding_dim)", d, low=1)
        self.weight = Parameter(ts_random.generator().standard_normal((n, d)).astype(dtype))

    def extra_repr(self):
        return f"{self.weight.shape[0]}, {self.weight.shape[1]}"

    def forward(self, idx):
        idx = idx.data if isinstance(idx, Tensor) else idx
        if not hasattr(idx, "dtype"):                     # a list of ids
            idx = np.asarray(idx)
        check_ids("Embedding input", idx, self.weight.shape[0])     # before the copy to a GPU
        xp = backend.array_module(self.weight.data)
        return self.weight[xp.asarray(idx).astype(np.int64, copy=False)]   # uint8 ids as indices


class LayerNorm(Module):
    """Ba et al. 2016 over the last axis of size d: (..., d) -> (..., d); eps > 0 keeps the
    division finite on a constant row."""

    def __init__(self, d, eps=1e-5, bias=True, dtype=np.float32):
        check_int("LayerNorm d (normalized_shape)", d, low=1)
        check_number("LayerNorm eps", eps, low=0, low_open=True, hint="the usual value is 1e-5")
        self.weight = Parameter(np.ones(d, dtype=dtype))
        self.bias = Parameter(np.zeros(d, dtype=dtype)) if bias else None
        self.eps = eps

    def extra_repr(self):
        return f"{self.weight.shape[0]}, eps={self.eps}, bias={self.bias is not None}"

    def forward(self, x):
        _check_last_axis(self, x, self.weight.shape[0])
        return F.layer_norm(x, self.weight, self.bias, self.eps)


class Dropout(Module):
    """Zero each element with probability p in training (scaling the rest by 1/(1-p)); identity
    in eval mode. p in [0, 1)."""

    def __init__(self, p=0.1):
        check_number("Dropout p", p, low=0, high=1, high_open=True)
        self.p = p

    def extra_repr(self):
        return f"p={self.p}"

    def forward(self, x):
        return F.dropout(x, self.p, self.training)


class GELU(Module):
    """GELU, tanh approximation (Hendrycks & Gimpel 2016; GPT-2's): PyTorch's
    nn.GELU(approximate='tanh'), not its default exact erf form."""

    def forward(self, x):
        return F.gelu(x)


class ReLU(Module):
    def forward(self, x):
        return x.relu()


class Tanh(Module):
    def forward(self, x):
        return x.tanh()
