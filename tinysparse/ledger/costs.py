"""The cost formulas: what one call of each Function executes, registered by Function class.

The engine knows no costs: it tells the ledger which Function ran on which arrays (one observer
hook, engine/function.py), and the ledger looks the class up in `COSTS`. A formula gives, for
one forward or one backward call, FLOPs in three columns:

    matmul   multiply-adds of matrix products, 2*m*n*k for (m, k) @ (k, n): the only column
             PyTorch's torch.utils.flop_counter.FlopCounterMode counts (it counts the ops below
             as 0), so `flops_matmul` is comparable with it one for one
    other    elementwise arithmetic, reductions, softmax, layer norm, GELU, the non-matmul part
             of attention: one FLOP per arithmetic operation per element as the op's code
             performs it (add, multiply, divide, exp, compare...); each formula states its count
    padding  work on rows that hold no token (capacity padding); no path of tinysparse pads
             today (a capacity drops slots, it never pads a segment), so it stays 0

and `extra_bytes`, arrays an op reads that are not among its positional inputs (index arrays
of the dispatch plan). The counter adds the bytes of the arrays themselves (see counter.py).

Work outside a Function is not counted: the router's top-k selection and the dispatch plan
(integer sorting and scans), the optimizer step, data loading. Formulas for the fused ops and
the Mixture-of-Experts primitives live in costs_fused.py; both register here.
"""
import math
from typing import NamedTuple

from ..engine import ops, ops_reduce, ops_shape
from ..engine.functional import _ScaleByMask


class Cost(NamedTuple):
    """FLOPs of one call, by column, and the bytes of arrays read that are not inputs (a tuple:
    one is made per counted call, and a tuple is the cheapest object Python makes)."""
    matmul: int = 0
    other: int = 0
    padding: int = 0
    extra_bytes: int = 0


ZERO = Cost()


class Formula:
    """The cost of one Function class: forward(arrays, out, options, ctx) and
    backward(node, ctx, grad, input_grads) return a Cost; `convention` says what is counted.

    node.shapes holds the forward's positional input shapes (None for a non-array), node.out
    the output's shape; input_grads are the gradients the backward returned (None: not computed).
    `touched(inputs, options)`, when given, names the parameter bytes the call reads as
    {key: nbytes} (default: every Parameter input, whole)."""

    def __init__(self, forward, backward, convention, touched=None):
        self.forward, self.backward, self.convention, self.touched = (
            forward, backward, convention, touched)


COSTS = {}


def register(cls, formula):
    """Count `cls` (a Function subclass) with `formula` from now on."""
    COSTS[cls] = formula
    return formula


def conventions():
    """{op name: its counting convention}, for the report and the docs."""
    return {cls.__name__: f.convention for cls, f in COSTS.items()}


def _computed(grads):
    return [g is not None for g in grads]


def elementwise(cls, forward, backward, convention):
    """An op whose FLOPs are a count per output element: `forward` per element; `backward` a
    tuple, per element, for each input whose gradient the backward computed."""
    def fwd(arrays, out, options, ctx):
        return Cost(other=forward * out.size)

    def bwd(node, ctx, grad, grads):
        return Cost(other=grad.size * sum(c for c, done in zip(backward, _computed(grads)) if done))
    return register(cls, Formula(fwd, bwd, convention))


def free(cls, convention, backward_other=lambda ctx, grad, grads: 0):
    """An op that moves data and computes nothing forward (its bytes still count)."""
    def bwd(node, ctx, grad, grads):
        return Cost(other=backward_other(ctx, grad, grads))
    return register(cls, Formula(lambda arrays, out, options, ctx: ZERO, bwd, convention))


# ---- arithmetic and elementwise functions (engine/ops.py, engine/ops_unary.py) ---------------------

elementwise(ops.Add, 1, (0, 0), "a+b: 1 per element; backward passes the gradient on (0)")
elementwise(ops.Sub, 1, (0, 1), "a-b: 1 per element; backward 1 to negate b's gradient")
elementwise(ops.Mul, 1, (1, 1), "a*b: 1 per element; backward 1 per input gradient")
elementwise(ops.Neg, 1, (1,), "-a: 1 per element; backward 1")


def _div_backward(node, ctx, grad, grads):
    return Cost(other=grad.size * (1 + 2 * (grads[1] is not None)))


register(ops.Div, Formula(lambda arrays, out, options, ctx: Cost(other=out.size), _div_backward,
                          "a/b: 1 per element; backward g/b always (1), and -(g/b)*out for "
                          "b's gradient (2)"))
elementwise(ops.Pow, 1, (3,), "a**p: 1 per element; backward a**(p-1), *p, *g (3)")
elementwise(ops.Exp, 1, (1,), "exp: 1 per element (a transcendental counts 1); backward g*out (1)")
elementwise(ops.Log, 1, (1,), "log: 1 per element; backward g/a (1)")
elementwise(ops.Sqrt, 1, (2,), "sqrt: 1 per element; backward g/(2*out) (2)")
elementwise(ops.Tanh, 1, (9,), "tanh: 1 per element; backward from e=exp(-|a|): abs, neg, exp, "
            "2e/(1+e*e) (4), squared, *g (9)")
elementwise(ops.Relu, 2, (1,), "relu: compare and multiply (2); backward g*mask (1)")
elementwise(ops.Sigmoid, 8, (5,), "sigmoid from e=exp(-|a|): abs, neg, exp, 1+e, 1/(.), compare, "
            "max, multiply (8); backward 1+e, 1/(.), e*r, *r, *g (5)")
elementwise(_ScaleByMask, 1, (1, 0), "dropout x*mask: 1 per element; backward g*mask (1)")


def _matmul_forward(arrays, out, options, ctx):
    a, b = arrays[0], arrays[1]
    if a.ndim == 1 and b.ndim == 1:
        return Cost(matmul=2 * a.shape[0])
    return Cost(matmul=2 * out.size * a.shape[-1])


def _matmul_backward(node, ctx, grad, grads):
    a_shape, b_shape = node.shapes[0], node.shapes[1]
    done = _computed(grads)
    if len(a_shape) == 1 and len(b_shape) == 1:          # a dot product: g*b and g*a, elementwise
        return Cost(other=a_shape[0] * sum(done))
    per_grad = 2 * grad.size * a_shape[-1]               # da = g b^T and db = a^T g: 2*m*n*k each
    return Cost(matmul=per_grad * sum(done[:2]))


register(ops.MatMul, Formula(_matmul_forward, _matmul_backward,
                             "a @ b: 2*m*n*k (batched: times the batch); backward 2*m*n*k for "
                             "each of da = g b^T and db = a^T g that is computed"))

# ---- shape ops: bytes only (engine/ops_shape.py) ---------------------------------------------------

for _cls in (ops.Cast, ops.Clone, ops_shape.Reshape, ops_shape.Permute, ops_shape.BroadcastTo,
             ops_shape.Concatenate, ops_shape.Stack, ops_shape.Where):
    free(_cls, "moves or selects data: 0 FLOPs (its bytes count)")
free(ops_shape.GetItem, "a[index]: 0 FLOPs; backward scatter-adds the gradient: 1 add per "
     "gradient element for an integer-array index (an embedding), 0 for slices",
     lambda ctx, grad, grads: grad.size if grads[0] is not None and ops_shape._is_advanced(
         ctx.index) else 0)
free(ops_shape.TakeAlongAxis, "take_along_axis (a gather): 0 FLOPs; backward adds each "
     "gradient element back where it was read (1 add per gradient element)",
     lambda ctx, grad, grads: grad.size if grads[0] is not None else 0)


# ---- reductions (engine/ops_reduce.py) -------------------------------------------------------------

def reduction(cls, forward, backward, convention):
    """FLOPs per INPUT element (the reduced array), forward and backward."""
    def fwd(arrays, out, options, ctx):
        return Cost(other=forward * arrays[0].size)

    def bwd(node, ctx, grad, grads):
        n = math.prod(node.shapes[0])
        return Cost(other=backward(n, grad.size) if grads[0] is not None else 0)
    return register(cls, Formula(fwd, bwd, convention))


reduction(ops_reduce.Sum, 1, lambda n, g: 0,
          "sum: 1 add per input element; backward broadcasts the gradient (0)")
reduction(ops_reduce.Mean, 1, lambda n, g: g,
          "mean: 1 per input element (adds, and the divide); backward 1 divide per output element")
reduction(ops_reduce.Max, 2, lambda n, g: 3 * n,
          "max: compare, and a == max for the ties (2 per input element); backward counts ties, "
          "masks and divides (3 per input element)")
reduction(ops_reduce.Min, 2, lambda n, g: 3 * n, "min: as max")

from . import costs_fused  # noqa: E402,F401  (registers the fused ops and the MoE primitives)
