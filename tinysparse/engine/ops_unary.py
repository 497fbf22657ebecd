"""Elementwise functions of one tensor: exp, log, sqrt, tanh, relu, sigmoid, and the dtype cast
and clone, with their functional spellings (exp(a) for a.exp()).

Split from ops.py, which re-exports them; the same rules hold (backward right under forward,
one gradient per positional input in the output's shape, arrays from `array_module`).
Every function is finite wherever its mathematics is, in float32 and float64: the tails of
sigmoid and tanh' are computed from exp(-|x|), which cannot overflow, instead of from
1 - (a number that rounded to 1).
"""
from .backend import array_module
from .tensor import Function


# ---- elementwise functions -----------------------------------------------------------------------

class Exp(Function):
    @staticmethod
    def forward(ctx, a):
        out = array_module(a).exp(a)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved
        return grad * out


class Log(Function):
    @staticmethod
    def forward(ctx, a):
        ctx.save_for_backward(a)
        return array_module(a).log(a)

    @staticmethod
    def backward(ctx, grad):
        (a,) = ctx.saved
        return grad / a


class Sqrt(Function):
    @staticmethod
    def forward(ctx, a):
        out = array_module(a).sqrt(a)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved
        return grad / (2.0 * out)


class Tanh(Function):
    # tanh'(x) = 1 - tanh(x)^2 = sech(x)^2, with sech(x) = 2e/(1 + e^2), e = exp(-|x|).
    # 1 - tanh^2 is exactly 0 once tanh rounds to 1 (|x| > 9 in float32, 19 in float64), although
    # sech^2 is still a normal number there (tanh'(10) = 8.2e-9): hence the exp form.
    @staticmethod
    def forward(ctx, a):
        ctx.save_for_backward(a)
        return array_module(a).tanh(a)

    @staticmethod
    def backward(ctx, grad):
        (a,) = ctx.saved
        xp = array_module(a)
        e = xp.exp(-xp.abs(a))                 # in (0, 1]: cannot overflow
        sech = 2.0 * e / (1.0 + e * e)
        return grad * (sech * sech)


class Relu(Function):
    @staticmethod
    def forward(ctx, a):
        positive = a > 0
        ctx.save_for_backward(positive)
        return a * positive

    @staticmethod
    def backward(ctx, grad):
        (positive,) = ctx.saved
        return grad * positive


def sigmoid_parts(a):
    """e = exp(-|a|) and r = 1 / (1 + e), the two numbers sigmoid(a) and its slope are made of.

    1/(1 + exp(-a)) overflows exp for a < -88.7 (float32); 0.5 (tanh(a/2) + 1) rounds to exactly
    0 below about -17 in float32 (the true sigmoid(-20) is 2.06e-9). e lies in (0, 1], so nothing
    overflows, and with it both tails are exact:
        sigmoid(a) = r for a >= 0, e r for a < 0;    sigmoid'(a) = e r^2 on both sides,
    never 1 - (something that rounded to 1).
    """
    e = array_module(a).exp(-abs(a))
    return e, 1.0 / (1.0 + e)


def sigmoid_from_parts(nonnegative, e, r):
    """sigmoid = r where `nonnegative` (a >= 0), e r elsewhere: r * max(e, [a >= 0]), since
    e <= 1 (no np.where: it is several times slower than these two passes)."""
    s = array_module(e).maximum(e, nonnegative)
    s *= r
    return s


class Sigmoid(Function):
    @staticmethod
    def forward(ctx, a):
        e, r = sigmoid_parts(a)
        ctx.save_for_backward(e)
        return sigmoid_from_parts(a >= 0, e, r)

    @staticmethod
    def backward(ctx, grad):
        (e,) = ctx.saved
        r = 1.0 / (1.0 + e)
        return grad * (e * r * r)             # sigmoid' = e / (1 + e)^2


class Cast(Function):
    computes_half_in_float32 = False  # a cast is exact in any dtype (it is how float16 is left)

    @staticmethod
    def forward(ctx, a, dtype):
        ctx.dtype = a.dtype
        return a.astype(dtype, copy=False)

    @staticmethod
    def backward(ctx, grad):
        return grad.astype(ctx.dtype, copy=False)


class Clone(Function):
    """A copy of the data (PyTorch's clone): the gradient passes through unchanged."""
    @staticmethod
    def forward(ctx, a):
        return a.copy()

    @staticmethod
    def backward(ctx, grad):
        return grad


# ---- functional spellings of the Tensor methods --------------------------------------------------

def exp(a):
    return Exp.apply(a)


def log(a):
    return Log.apply(a)


def sqrt(a):
    return Sqrt.apply(a)


def tanh(a):
    return Tanh.apply(a)


def relu(a):
    return Relu.apply(a)


def sigmoid(a):
    return Sigmoid.apply(a)


def clone(a):
    return Clone.apply(a)
