"""The differentiable dispatch primitives: gather -> grouped matmul -> combine, as autograd
Functions. Each forward and backward is one call into a dispatch backend (dispatch.py's
NumpyDispatch, or numba / cuda by name), so every backend gets the same gradients for free.

    buffer = gather_rows(x, plan, backend)           # (T, C) -> (S, C), rows grouped by expert
    h = grouped_linear(buffer, w1, b1, offsets, ...)  # each expert's rows times its own weights
    out = combine(y, gates, plan, backend)            # (S, C) -> (T, C), weighted by the gates
"""
from ..engine.function import Function
from .dispatch import get_backend


class GatherRows(Function):
    # buffer[i] = x[token_index[i]];  backward: dx[t] = sum over t's slots of dbuffer[slot]
    @staticmethod
    def forward(ctx, x, plan, backend):
        ctx.plan, ctx.backend = plan, backend
        return backend.gather(x, plan.token_index)

    @staticmethod
    def backward(ctx, grad):
        return ctx.backend.scatter(grad, ctx.plan.slot_position)


def gather_rows(x, plan, backend="numpy"):
    """x (T, C) -> buffer (S, C): each token's row once per kept slot, grouped by expert."""
    return GatherRows.apply(x, plan=plan, backend=_backend(backend))


class GroupedLinear(Function):
    # y[off[e]:off[e+1]] = x[off[e]:off[e+1]] @ W[e] + b[e] for every expert e
    # dx, dW, db are new arrays of the backend's: the engine keeps dW, db as the experts' .grad
    # without copying them (at E=128, d_expert 256 that copy was 33 MB, ~1.7 ms, per step).
    new_grads = True
    @staticmethod
    def forward(ctx, x, w, b, offsets, backend):
        ctx.save_for_backward(x, w)
        ctx.offsets, ctx.backend, ctx.has_bias = offsets, backend, b is not None
        return backend.grouped_mm(x, w, b, offsets)

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved
        need = ctx.needs_input_grad
        dx = ctx.backend.grouped_mm_dx(grad, w, ctx.offsets) if need[0] else None
        dw = db = None
        if need[1] or (ctx.has_bias and need[2]):
            dw, db = ctx.backend.grouped_mm_dw(x, grad, ctx.offsets, with_bias=ctx.has_bias)
        return dx, dw, db


def grouped_linear(x, w, b, offsets, backend="numpy"):
    """x (S, d_in) with expert segments `offsets` -> (S, d_out): each segment times its own W[e]."""
    return GroupedLinear.apply(x, w, b, offsets=offsets, backend=_backend(backend))


class Combine(Function):
    # out[t] = sum_j gates[t, j] * y[slot(t, j)]   (a dropped slot contributes 0)
    @staticmethod
    def forward(ctx, y, gates, plan, backend):
        ctx.save_for_backward(y, gates)
        ctx.plan, ctx.backend = plan, backend
        return backend.combine(y, gates, plan.slot_position)

    @staticmethod
    def backward(ctx, grad):
        y, gates = ctx.saved
        return ctx.backend.combine_backward(grad, y, gates, ctx.plan.slot_position)


def combine(y, gates, plan, backend="numpy"):
    """Expert outputs y (S, C) and gates (T, k) -> (T, C), each token's k answers weighted and summed."""
    return Combine.apply(y, gates, plan=plan, backend=_backend(backend))


def _backend(backend):
    return get_backend(backend) if isinstance(backend, str) else backend
