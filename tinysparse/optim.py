"""Optimizers, learning-rate schedules and gradient clipping.

Updates are written in place on the parameters' arrays (an optimizer step allocates nothing
large). Gradients are left as backward produced them: clipping builds new arrays, so a gradient
a user is holding on to never changes under them.
"""
import math

import numpy as np

from ._checks import check_number
from .engine import backend, compiled
from .engine.tensor import Tensor


def _parameter_list(params, who):
    """The list of Tensors an optimizer updates; a Module, a dict, a duplicate or an empty list is
    refused with the fix (a parameter listed twice would be updated twice per step)."""
    if isinstance(params, Tensor) or hasattr(params, "named_parameters"):
        what = "a single Tensor" if isinstance(params, Tensor) else f"a {type(params).__name__} module"
        fix = "[tensor]" if isinstance(params, Tensor) else "model.parameters()"
        raise TypeError(f"{who} takes an iterable of parameters, got {what}; pass {fix}, "
                        f"e.g. {who}({fix}, lr=...)")
    params = list(params)
    for i, p in enumerate(params):
        if isinstance(p, dict):
            raise TypeError(f"{who}: parameter groups (dicts) are not supported; make one "
                            f"optimizer per group, or pass the parameters as one list")
        if not isinstance(p, Tensor):
            raise TypeError(f"{who}: item {i} of the parameters is a {type(p).__name__}, not a "
                            f"Tensor; pass model.parameters()")
    if not params:
        raise ValueError(f"{who} got an empty parameter list; did a generator of parameters "
                         f"get used up before? pass model.parameters()")
    if len({id(p) for p in params}) != len(params):
        raise ValueError(f"{who}: a parameter is listed more than once (it would be updated "
                         f"twice a step); list each once, as model.parameters() does")
    return params


class Optimizer:
    """Holds the parameters (an iterable of Tensors, usually model.parameters()) and the
    learning rate (a positive finite number; schedules set it before each step)."""

    def __init__(self, params, lr):
        who = type(self).__name__
        self.params = _parameter_list(params, who)
        check_number(f"{who} lr", lr, low=0, low_open=True, hint="try 1e-3")
        self.lr = lr
        self.step_count = 0

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    def _slots(self):
        """Names of per-parameter state arrays (one list each); saved in state_dict."""
        return ()

    def _follow_parameters(self):
        """Keep each state array on its parameter's device: a model moved with .to() after its
        optimizer was built would otherwise update GPU weights from host moments. (A no-op,
        one type check per array, when nothing moved.)"""
        for slot in self._slots():
            arrays = getattr(self, slot)
            for i, (a, p) in enumerate(zip(arrays, self.params)):
                device = backend.device_of(p.data)
                if backend.device_of(a) != device:
                    arrays[i] = backend.to_device(a, device)

    def state_dict(self):
        state = {"step_count": self.step_count, "lr": self.lr}
        for slot in self._slots():
            state[slot] = [np.array(backend.to_numpy(a)) for a in getattr(self, slot)]
        return state

    def load_state_dict(self, state):
        self.step_count, self.lr = state["step_count"], state["lr"]
        for slot in self._slots():
            arrays = state[slot]
            if len(arrays) != len(self.params) or any(
                    a.shape != p.shape for a, p in zip(arrays, self.params)):
                raise ValueError(f"optimizer state {slot!r} does not match the parameters; "
                                 f"was it saved for another model?")
            xp_arrays = [backend.array_module(p.data).asarray(a, dtype=p.dtype).copy()
                         for a, p in zip(arrays, self.params)]
            setattr(self, slot, xp_arrays)


class SGD(Optimizer):
    """p -= lr * v,  v = momentum * v + (g + weight_decay * p)   (PyTorch's form)."""

    def __init__(self, params, lr=0.01, momentum=0.0, weight_decay=0.0):
        super().__init__(params, lr)
        check_number("SGD momentum", momentum, low=0, high=1, high_open=True)
        check_number("SGD weight_decay", weight_decay, low=0)
        self.momentum, self.weight_decay = momentum, weight_decay
        self.velocity = [backend.array_module(p.data).zeros_like(p.data) for p in self.params]

    def _slots(self):
        return ("velocity",)

    def step(self):
        self.step_count += 1
        self._follow_parameters()
        for p, v in zip(self.params, self.velocity):
            if p.grad is None:
                continue
            g = p.grad + self.weight_decay * p.data if self.weight_decay else p.grad
            if self.momentum:
                v *= self.momentum
                v += g
                g = v
            p.data -= self.lr * g


class AdamW(Optimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019, Algorithm 2):

        m = b1 m + (1 - b1) g;   v = b2 v + (1 - b2) g^2
        p = p - lr * wd * p - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)

    Parameters with fewer than two dimensions (biases, layer-norm gains) are not decayed unless
    decay_1d=True, as in nanoGPT: shrinking a gain toward 0 is not a useful prior.

    fused: None (default) updates NumPy float32/float64 parameters in one compiled pass
    (optim_kernels.py: the same float operations in the same order, so bitwise the same
    numbers) and anything else (CuPy, float16, non-contiguous arrays) with the array code
    below; False always runs the array code; True is None that insists numba imports.

    Ranges (ValueError otherwise): lr > 0, betas each in [0, 1), eps > 0 (0 would make a
    parameter whose gradient is always 0 NaN: 0/0), weight_decay >= 0 with lr * weight_decay < 1
    (the factor 1 - lr*wd must keep a weight's sign).
    """

    def __init__(self, params, lr=3e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01,
                 decay_1d=False, fused=None):
        super().__init__(params, lr)
        if fused not in (None, True, False):
            raise ValueError(f"AdamW fused={fused!r} must be None (the compiled loop where it "
                             f"applies), True or False (always the array code)")
        if fused and _compiled_adamw() is None:
            raise ValueError("AdamW fused=True needs numba, which does not import here; "
                             "pass fused=None or False")
        self.fused = fused
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise TypeError(f"AdamW betas must be a pair (beta1, beta2), got {betas!r}")
        for i, b in enumerate(betas):
            check_number(f"AdamW betas[{i}]", b, low=0, high=1, high_open=True,
                         hint="the usual values are (0.9, 0.999)")
        check_number("AdamW eps", eps, low=0, low_open=True, hint="the usual value is 1e-8")
        check_number("AdamW weight_decay", weight_decay, low=0)
        if lr * weight_decay >= 1:
            raise ValueError(f"AdamW lr * weight_decay = {lr * weight_decay:g} must be below 1 "
                             f"(each step multiplies the weights by 1 - lr*wd); lower weight_decay")
        self.beta1, self.beta2 = betas
        self.eps, self.weight_decay, self.decay_1d = eps, weight_decay, decay_1d
        self.m = [backend.array_module(p.data).zeros_like(p.data) for p in self.params]
        self.v = [backend.array_module(p.data).zeros_like(p.data) for p in self.params]

    def _slots(self):
        return ("m", "v")

    def step(self):
        self.step_count += 1
        self._follow_parameters()
        t = self.step_count
        b1, b2 = self.beta1, self.beta2
        # fold the bias corrections into the step size and epsilon (same numbers, fewer ops)
        step_size = self.lr / (1 - b1 ** t)
        sqrt_bc2 = math.sqrt(1 - b2 ** t)
        kernel = _compiled_adamw() if self.fused is not False else None
        for p, m, v in zip(self.params, self.m, self.v):
            g = p.grad
            if g is None:
                continue
            decays = bool(self.weight_decay and (self.decay_1d or p.ndim >= 2))
            if kernel is not None and compiled.applies(p.data, g, m, v):
                # the same operations in the same order, one pass (optim_kernels.py)
                dt = p.data.dtype.type
                kernel(p.data.reshape(-1), g.reshape(-1), m.reshape(-1), v.reshape(-1),
                       dt(1 - self.lr * self.weight_decay), dt(b1), dt(1 - b1), dt(b2),
                       dt(1 - b2), dt(sqrt_bc2), dt(self.eps), dt(step_size), decays)
                continue
            if decays:
                p.data *= 1 - self.lr * self.weight_decay
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * (g * g)
            denom = backend.array_module(v).sqrt(v)
            denom /= sqrt_bc2
            denom += self.eps
            p.data -= step_size * (m / denom)


def _compiled_adamw():
    """optim_kernels.adamw_kernel, or None where numba does not import (engine/compiled.py's
    lazy import: numba takes a while to load, and the array code needs none of it)."""
    module = compiled.load("tinysparse.optim_kernels")
    return None if module is None else module.adamw_kernel


def cosine_lr(step, max_lr, warmup_steps, max_steps, min_lr=0.0):
    """Linear warm-up to max_lr over warmup_steps, then cosine decay to min_lr at max_steps.

    With max_steps <= warmup_steps there is no decay: the rate jumps from the warm-up to min_lr
    at warmup_steps (training/loop.py warns when a run is set up that way)."""
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= max_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    return min_lr + 0.5 * (max_lr - min_lr) * (1 + math.cos(math.pi * progress))


class CosineSchedule:
    """Sets optimizer.lr from cosine_lr each time step() is called (call it before optimizer.step)."""

    def __init__(self, optimizer, max_lr, warmup_steps, max_steps, min_lr=0.0):
        check_number("CosineSchedule max_lr", max_lr, low=0, low_open=True)
        check_number("CosineSchedule min_lr", min_lr, low=0, high=max_lr)
        for name, value in (("warmup_steps", warmup_steps), ("max_steps", max_steps)):
            check_number(f"CosineSchedule {name}", value, low=0)
        self.optimizer, self.max_lr, self.min_lr = optimizer, max_lr, min_lr
        self.warmup_steps, self.max_steps = warmup_steps, max_steps
        self.step_count = 0

    def step(self):
        self.optimizer.lr = cosine_lr(self.step_count, self.max_lr, self.warmup_steps,
                                      self.max_steps, self.min_lr)
        self.step_count += 1
        return self.optimizer.lr

    def state_dict(self):
        return {"step_count": self.step_count}

    def load_state_dict(self, state):
        self.step_count = state["step_count"]


def clip_grad_norm(params, max_norm):
    """Scale all gradients together so their global L2 norm is at most max_norm; return the norm
    before clipping (useful to log). Gradients are replaced, not modified in place.

    On NumPy arrays the norm is a Python float. On CuPy arrays it stays a 0-d device array and the
    scaling happens on the device, so a training step never waits for the GPU here: float() it
    when you log it (that is the one copy to the host).

    max_norm: a positive number; math.inf measures the norm without clipping. A NaN or infinite
    gradient gives a NaN or infinite norm and is left as it is (the caller decides: train() stops).
    """
    if isinstance(max_norm, bool) or not isinstance(max_norm, (int, float, np.floating, np.integer)) \
            or not max_norm > 0:
        raise ValueError(f"clip_grad_norm max_norm must be a positive number (math.inf: no "
                         f"clipping), got {max_norm!r}")
    params = [p for p in params if p.grad is not None]
    if not params:
        return 0.0
    xp = backend.array_module(params[0].grad)
    squares = [(p.grad.astype(np.float64) ** 2).sum() for p in params]   # each a 0-d array
    if xp is np:
        total = math.sqrt(sum(float(s) for s in squares))
        if total > max_norm:
            scale = max_norm / (total + 1e-6)
            for p in params:
                p.grad = p.grad * p.grad.dtype.type(scale)
        return total
    total = xp.sqrt(xp.stack(squares).sum())                             # on the device
    # min(1, max_norm / norm): gradients under the limit are multiplied by exactly 1
    scale = xp.minimum(1.0, max_norm / (total + 1e-6)) if max_norm < math.inf else None
    if scale is not None:
        for p in params:
            p.grad = p.grad * scale.astype(p.grad.dtype)
    return total
