"""Modules: parameters with names, train/eval mode, state dicts. PyTorch's habits, NumPy's arrays.

A Module finds its parameters by looking at its own attributes: a `Parameter`, a sub-Module, or a
ModuleList. No registration calls, no metaclass: `vars(self)` in insertion order is the registry.
"""
import math

import numpy as np

from .engine import backend
from .engine import functional as F
from .engine import random as ts_random
from .engine.tensor import Tensor


class Parameter(Tensor):
    """A Tensor that a Module owns and an optimizer updates (requires_grad is always on)."""

    def __init__(self, data, dtype=np.float32):
        super().__init__(np.asarray(data, dtype=dtype) if isinstance(data, (list, float, int)) else data,
                         requires_grad=True)


class Module:
    """Base class: subclasses set attributes in __init__ and write forward()."""

    training = True

    def forward(self, *args, **kwargs):
        raise NotImplementedError

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # ---- discovery ---------------------------------------------------------------------------
    def named_children(self):
        for name, value in vars(self).items():
            if isinstance(value, Module):
                yield name, value

    def named_parameters(self, prefix=""):
        """(dotted name, Parameter) for every parameter, each shared parameter once."""
        seen = set()
        for name, p in self._named_tensors(prefix, want_buffers=False):
            if id(p) not in seen:
                seen.add(id(p))
                yield name, p

    def _named_tensors(self, prefix, want_buffers):
        for name, value in vars(self).items():
            if isinstance(value, Parameter) and not want_buffers:
                yield prefix + name, value
            elif want_buffers and name in getattr(self, "_buffer_names", ()):
                yield prefix + name, value
            elif isinstance(value, Module):
                yield from value._named_tensors(f"{prefix}{name}.", want_buffers)

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def named_buffers(self, prefix=""):
        yield from self._named_tensors(prefix, want_buffers=True)

    def register_buffer(self, name, array):
        """A non-trained array that belongs in checkpoints (e.g. a router's balancing bias)."""
        if "_buffer_names" not in vars(self):
            self._buffer_names = set()
        self._buffer_names.add(name)
        setattr(self, name, Tensor(array))

    def modules(self):
        yield self
        for _, child in self.named_children():
            yield from child.modules()

    def num_parameters(self):
        return sum(p.size for p in self.parameters())

    # ---- modes and gradients -----------------------------------------------------------------
    def train(self, mode=True):
        for m in self.modules():
            m.training = mode
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    def to(self, device):
        """Move every parameter and buffer to `device` in place (optimizers keep their references)."""
        backend.check_device(device)
        for _, t in list(self.named_parameters()) + list(self.named_buffers()):
            t.data = backend.to_device(t.data, device)
            if t.grad is not None:
                t.grad = backend.to_device(t.grad, device)
        return self

    # ---- state dicts -------------------------------------------------------------------------
    def state_dict(self):
        """{name: NumPy array copy} of every parameter and buffer: device-independent plain arrays
        (training checkpoints store them in a safetensors file)."""
        state = {name: np.array(backend.to_numpy(p.data)) for name, p in self.named_parameters()}
        state.update({name: np.array(backend.to_numpy(b.data)) for name, b in self.named_buffers()})
        return state

    def load_state_dict(self, state):
        """Copy arrays into this module's tensors; every name and shape must match exactly."""
        own = dict(self.named_parameters())
        own.update(dict(self.named_buffers()))
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise KeyError(f"state dict does not match the model: missing {missing or 'none'}, "
                           f"unexpected {unexpected or 'none'}; was it saved from another config?")
        # Check every shape before copying anything: a failed load must leave the model unchanged.
        for name, tensor in own.items():
            value = state[name]
            if tuple(value.shape) != tuple(tensor.shape):
                raise ValueError(f"state dict entry {name!r} has shape {tuple(value.shape)} but the "
                                 f"model expects {tuple(tensor.shape)}; was it saved from another config?")
        for name, tensor in own.items():
            xp = backend.array_module(tensor.data)
            tensor.data = xp.asarray(state[name], dtype=tensor.dtype).copy()


class ModuleList(Module):
    """A list of modules whose parameters are named 0, 1, 2, ..."""

    def __init__(self, modules=()):
        for i, m in enumerate(modules):
            setattr(self, str(i), m)

    def __len__(self):
        return sum(1 for _ in self.named_children())

    def __iter__(self):
        return (m for _, m in self.named_children())

    def __getitem__(self, i):
        return list(self)[i]

    def append(self, module):
        setattr(self, str(len(self)), module)


class Sequential(ModuleList):
    def forward(self, x):
        for m in self:
            x = m(x)
        return x


def _uniform(shape, bound, dtype):
    return ts_random.generator().uniform(-bound, bound, size=shape).astype(dtype)


class Linear(Module):
    """y = x @ W + b. W is stored (d_in, d_out), the layout the matmul reads directly.

    Init as PyTorch does: U(-1/sqrt(d_in), 1/sqrt(d_in)) for both W and b.
    """

    def __init__(self, d_in, d_out, bias=True, dtype=np.float32):
        bound = 1.0 / math.sqrt(d_in)
        self.weight = Parameter(_uniform((d_in, d_out), bound, dtype))
        self.bias = Parameter(_uniform((d_out,), bound, dtype)) if bias else None

    def forward(self, x):
        y = x @ self.weight
        return y + self.bias if self.bias is not None else y


class Embedding(Module):
    """A lookup table: row i of the (n, d) weight is the vector of token i. Init N(0, 1)."""

    def __init__(self, n, d, dtype=np.float32):
        self.weight = Parameter(ts_random.generator().standard_normal((n, d)).astype(dtype))

    def forward(self, idx):
        idx = idx.data if isinstance(idx, Tensor) else idx
        return self.weight[backend.array_module(self.weight.data).asarray(idx)]


class LayerNorm(Module):
    def __init__(self, d, eps=1e-5, bias=True, dtype=np.float32):
        self.weight = Parameter(np.ones(d, dtype=dtype))
        self.bias = Parameter(np.zeros(d, dtype=dtype)) if bias else None
        self.eps = eps

    def forward(self, x):
        return F.layer_norm(x, self.weight, self.bias, self.eps)


class Dropout(Module):
    def __init__(self, p=0.1):
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout p must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x):
        return F.dropout(x, self.p, self.training)


class GELU(Module):
    def forward(self, x):
        return F.gelu(x)


class ReLU(Module):
    def forward(self, x):
        return x.relu()


class Tanh(Module):
    def forward(self, x):
        return x.tanh()
