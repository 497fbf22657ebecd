"""Modules: parameters with names, train/eval mode, state dicts. PyTorch's habits, NumPy's arrays.

A Module finds its parameters by looking at its own attributes: a `Parameter`, a sub-Module, or a
ModuleList. No registration calls, no metaclass: `vars(self)` in insertion order is the registry.
This file is the module system (Parameter, Module, ModuleList, Sequential); the layers built on it
(Linear, Embedding, LayerNorm, Dropout, GELU, ReLU, Tanh) are in layers.py, re-exported here.
"""
import numpy as np

from .engine import backend
from .engine.tensor import Tensor


class Parameter(Tensor):
    """A Tensor that a Module owns and an optimizer updates (requires_grad is always on)."""

    def __init__(self, data, dtype=np.float32):
        super().__init__(np.asarray(data, dtype=dtype) if isinstance(data, (list, float, int)) else data,
                         requires_grad=True)


# Told which module runs, while the efficiency ledger counts (it sets this through
# set_call_observer; nn never imports it). None: the only cost of a call is this one check.
_call_observer = None


def set_call_observer(observer):
    """Install `observer` (enter(module) before a Module's forward, exit(module) after it) and
    return the previous one; None removes it. tinysparse.ledger.count() keeps its module stack so."""
    global _call_observer
    previous, _call_observer = _call_observer, observer
    return previous


class Module:
    """Base class: subclasses set attributes in __init__ and write forward()."""

    training = True

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} has no forward(); a Module subclass "
                                  f"must define forward(self, ...)")

    def __call__(self, *args, **kwargs):
        if _call_observer is None:
            return self.forward(*args, **kwargs)
        _call_observer.enter(self)
        try:
            return self.forward(*args, **kwargs)
        finally:
            _call_observer.exit(self)

    # ---- printing, as PyTorch prints a model ---------------------------------------------------
    def extra_repr(self):
        """The settings shown between the parentheses of repr (override in subclasses)."""
        return ""

    def __repr__(self):
        """Name(settings), then each child indented on its own line: print(model) shows the tree."""
        children = [f"({name}): " + repr(child).replace("\n", "\n  ")
                    for name, child in self.named_children()]
        if not children:
            return f"{type(self).__name__}({self.extra_repr()})"
        lines = ([self.extra_repr()] if self.extra_repr() else []) + children
        return f"{type(self).__name__}(\n  " + "\n  ".join(lines) + "\n)"

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

    def astype(self, dtype):
        """Cast every parameter to the floating dtype `dtype` in place (float64 for gradcheck,
        float32 to train); returns self. Gradients are dropped: they no longer match their
        parameters' dtype. Buffers keep their dtype (counters and indices are not weights).
        Cast before creating an optimizer: its moment buffers take the parameters' dtype then.

        Raises TypeError for a dtype that is not floating: parameters must stay differentiable."""
        dtype = np.dtype(dtype)
        if dtype.kind != "f":
            raise TypeError(f"{type(self).__name__}.astype({dtype}): parameters must be a floating "
                            f"dtype; use np.float32 or np.float64")
        for p in self.parameters():
            p.data = p.data.astype(dtype)
            p.grad = None
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


def _as_module(m, where, i):
    """m, if it is a Module: anything else would be skipped by discovery and by forward alike."""
    if not isinstance(m, Module):
        fix = " (wrap a function in a Module: nn.GELU(), nn.ReLU(), nn.Tanh())" if callable(m) else ""
        raise TypeError(f"{where} item {i} is a {type(m).__name__}, not an nn.Module{fix}")
    return m


class ModuleList(Module):
    """A list of modules whose parameters are named 0, 1, 2, ..."""

    def __init__(self, modules=()):
        if isinstance(modules, Module):
            raise TypeError(f"ModuleList takes a list of modules, got a single "
                            f"{type(modules).__name__}; write ModuleList([module])")
        for i, m in enumerate(modules):
            setattr(self, str(i), _as_module(m, type(self).__name__, i))

    def __len__(self):
        return sum(1 for _ in self.named_children())

    def __iter__(self):
        return (m for _, m in self.named_children())

    def __getitem__(self, i):
        return list(self)[i]

    def append(self, module):
        setattr(self, str(len(self)), _as_module(module, f"{type(self).__name__}.append:", len(self)))


class Sequential(ModuleList):
    """Modules applied in order. Both spellings work: Sequential(a, b, c) as in PyTorch, and
    Sequential([a, b, c]) (a list, as ModuleList takes it)."""

    def __init__(self, *modules):
        if len(modules) == 1 and not isinstance(modules[0], Module):
            modules = modules[0]             # Sequential([a, b, c]) or any iterable
        super().__init__(list(modules))

    def forward(self, x):
        for m in self:
            x = m(x)
        return x


# The layers (Linear, Embedding, LayerNorm, Dropout, the activations) are layers.py's, built on
# the classes above, and re-exported here: `nn.Linear` and `from tinysparse.nn import Linear` are
# how everything spells them. Imported last because layers.py imports Module and Parameter from
# this module (tinysparse/__init__.py imports nn first, so this is always the order).
from .layers import (GELU, Dropout, Embedding, LayerNorm, Linear, ReLU, Tanh,  # noqa: E402,F401
                     check_ids)
