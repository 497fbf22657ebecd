"""Chapter 01: autograd, from a scalar Value to the library's Tensor.

    python lessons/01_autograd/run.py            # the whole chapter, about a second
    python lessons/01_autograd/run.py --quick    # smaller inputs to the gradchecks (the tests use it)

Read lessons/01_autograd/README.md alongside. Every section prints what it shows; every claim it
makes is also checked, and the script exits with status 1 if any check fails.
"""
import argparse
import math
import os
import sys
import time

import numpy as np

import tinysparse as ts
from tinysparse import functional as F
from tinysparse.lesson import check, section, summary
from tinysparse.engine.autograd import _topological_order as tensor_topological_order
from tinysparse.engine.autograd import unbroadcast

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from value import (NEURON_INPUTS, Value, naive_backward, neuron_loss, numeric_grads,  # noqa: E402
                   topological_order, topological_order_recursive)




def part_scalar_engine():
    section("1. A scalar engine: Value, backward closures, topological order")
    xs = [Value(v) for v in NEURON_INPUTS.values()]
    loss = neuron_loss(*xs)
    loss.backward()
    order = topological_order(loss)
    print(f"  L = (tanh(w1 x1 + w2 x2 + b) - 1)^2 + 0.1 (w1^2 + w2^2) = {loss.data:.6f}")
    print(f"  the graph has {len(order)} Values; the last five in topological order: "
          + ", ".join(v.op or "leaf" for v in order[-5:]))
    numeric = numeric_grads(neuron_loss, list(NEURON_INPUTS.values()))
    print(f"  {'input':>6} {'backward()':>14} {'central diff':>14} {'|difference|':>13}")
    worst = 0.0
    for (name, _), x, num in zip(NEURON_INPUTS.items(), xs, numeric):
        worst = max(worst, abs(x.grad - num))
        print(f"  {name:>6} {x.grad:>14.9f} {num:>14.9f} {abs(x.grad - num):>13.2e}")
    check(worst < 1e-7, f"Value.backward agrees with central differences (worst {worst:.1e})")
    return {name: x.grad for name, x in zip(NEURON_INPUTS, xs)}


def part_order_pitfalls():
    section("2. Why a topological order: a reused intermediate, and a deep chain")
    # h is computed once and used twice. Its gradient is the sum over its two uses:
    #   y = h + h*h,  h = 3x   =>   dy/dh = 1 + 2h,   dy/dx = 3 (1 + 2h)
    x = Value(1.0)
    h = 3 * x
    y = h + h * h
    exact = 3 * (1 + 2 * h.data)
    print(f"  x = {x.data:g}, h = 3x = {h.data:g}, y = h + h*h = {y.data:g};  "
          f"by hand dy/dx = 3 (1 + 2h) = {exact:g}")

    y.backward()
    print(f"  topological order             : dy/dx = {x.grad:g}")
    check(x.grad == exact, "backward in reversed topological order gets the exact gradient")

    naive_backward(y, remember_visited=False)
    twice = x.grad
    print(f"  naive visitor, no visited set : dy/dx = {twice:g}   "
          "(h reached 3 times: passes 1, then 7, then 7 again, each times 3)")
    naive_backward(y, remember_visited=True)
    early = x.grad
    print(f"  naive visitor, visited set    : dy/dx = {early:g}   "
          "(h passes on 1 before h*h has added its 2h = 6)")
    check(twice != exact and early != exact, "both naive visitors get it wrong")

    # A chain of `depth` multiplications: v_k = 0.999 v_(k-1), so dv/dx = 0.999^depth.
    depth = 5 * sys.getrecursionlimit()
    x = Value(1.0)
    v = x
    for _ in range(depth):
        v = v * 0.999
    try:
        topological_order_recursive(v)
        recursion_failed = False
        print(f"  recursive topological sort on a chain of {depth} ops: finished (unexpected)")
    except RecursionError:
        recursion_failed = True
        print(f"  recursive topological sort on a chain of {depth} ops: RecursionError "
              f"(Python's limit is {sys.getrecursionlimit()} frames)")
    check(recursion_failed, "a recursive sort hits the recursion limit on a deep chain")
    v.backward()
    print(f"  iterative topological sort: dv/dx = {x.grad:.10f}, exact 0.999^{depth} = "
          f"{0.999 ** depth:.10f}")
    check(math.isclose(x.grad, 0.999 ** depth, rel_tol=1e-9), "the iterative sort handles any depth")


def part_tensor(scalar_grads, quick):
    section("3. The same computation with ts.Tensor")
    # 0-d float64 arrays keep full precision (Python floats would become float32 tensors).
    ts_inputs = {k: ts.Tensor(np.array(v), requires_grad=True) for k, v in NEURON_INPUTS.items()}
    loss = neuron_loss(*ts_inputs.values())  # Tensor has +, *, **, tanh: the same code runs
    loss.backward()
    print(f"  {'input':>6} {'Value grad':>14} {'Tensor grad':>14}")
    worst = 0.0
    for name, t in ts_inputs.items():
        worst = max(worst, abs(float(t.grad) - scalar_grads[name]))
        print(f"  {name:>6} {scalar_grads[name]:>14.9f} {float(t.grad):>14.9f}")
    check(worst < 1e-12, f"Value and Tensor gradients agree (worst {worst:.1e})")

    # Why tensors: one graph node per *array* operation, not per number.
    B = 32 if quick else 256
    rng = np.random.default_rng(0)
    X, w_np, b_np = rng.standard_normal((B, 2)), rng.standard_normal(2), 0.1
    w, b = ts.Tensor(w_np, requires_grad=True), ts.Tensor(np.array(b_np), requires_grad=True)
    batch_loss = ((ts.Tensor(X) @ w + b).tanh() - 1.0) ** 2
    batch_loss = batch_loss.mean()
    n_tensors = len(tensor_topological_order(batch_loss))   # before backward, which frees the graph
    batch_loss.backward()

    ws = [Value(c) for c in w_np]
    bv = Value(b_np)
    total = Value(0.0)
    for row in X:
        total = total + ((row[0] * ws[0] + row[1] * ws[1] + bv).tanh() - 1.0) ** 2
    value_loss = total / B
    value_loss.backward()
    n_values = len(topological_order(value_loss))
    print(f"  a batch of B={B} examples: {n_values} Values in the scalar graph, "
          f"{n_tensors} Tensors in the array graph")
    diff = max(abs(ws[0].grad - w.grad[0]), abs(ws[1].grad - w.grad[1]), abs(bv.grad - float(b.grad)))
    check(diff < 1e-12, f"the batched Tensor gradient equals the scalar one (|diff| {diff:.1e})")

    # A deep chain is no problem for the library's iterative topological sort either.
    depth = 5 * sys.getrecursionlimit()
    t0 = ts.Tensor(np.ones(3), requires_grad=True)
    t = t0
    for _ in range(depth):
        t = t * 0.999
    t.sum().backward()
    check(np.allclose(t0.grad, 0.999 ** depth), f"Tensor.backward on a chain of {depth} ops")


def part_broadcasting():
    section("4. Broadcasting, and how backward undoes it")
    rng = np.random.default_rng(1)
    x = ts.Tensor(rng.standard_normal((4, 3)), requires_grad=True)
    s = ts.Tensor(rng.standard_normal((4, 1)), requires_grad=True)  # stretched along axis 1
    b = ts.Tensor(rng.standard_normal(3), requires_grad=True)       # given a new axis 0
    y = x * s + b                                                   # (4, 3)
    g = rng.standard_normal(y.shape)                                # an arbitrary dL/dy
    y.backward(g)
    print(f"  y = x * s + b with x {x.shape}, s {s.shape}, b {b.shape} -> y {y.shape}")
    print(f"  grads: x {x.grad.shape}, s {s.grad.shape}, b {b.grad.shape} (each its input's shape)")
    # Every element of b was added to 4 rows of y, so its gradient is the sum of those 4 rows.
    check(np.allclose(b.grad, g.sum(axis=0)), "dL/db = sum of dL/dy over the broadcast axis 0")
    check(np.allclose(s.grad, (g * x.data).sum(axis=1, keepdims=True)),
          "dL/ds = sum over the stretched axis 1 of dL/dy * x, kept as shape (4, 1)")
    check(np.allclose(x.grad, g * s.data), "dL/dx = dL/dy * s (no broadcasting to undo)")
    for grad_shape, shape in [((2, 4, 3), (3,)), ((2, 4, 3), (4, 1)), ((2, 4, 3), (1, 4, 3))]:
        out = unbroadcast(np.ones(grad_shape), shape)
        print(f"  unbroadcast(ones{grad_shape}, {shape}) -> shape {out.shape}, every entry "
              f"{out.flat[0]:g} (the number of copies each element made)")
    check(ts.gradcheck(lambda x, s, b: x * s + b, x, s, b), "gradcheck of x * s + b")


def part_central_differences():
    section("5. Finite differences: why central, why float64")
    # f(x) = tanh(x) at x = 0.5. Taylor: f(x +- e) = f +- e f' + e^2 f''/2 +- e^3 f'''/6 + ...
    #   forward  (f(x+e) - f(x)) / e      = f' + e f''/2 + ...     error O(e)
    #   central  (f(x+e) - f(x-e)) / (2e) = f' + e^2 f'''/6 + ...  error O(e^2)
    # Rounding adds about u |f| / e on top (u: 1.1e-16 in float64, 6e-8 in float32).
    x = 0.5
    exact = 1.0 - math.tanh(x) ** 2
    print(f"  d tanh(x)/dx at x = {x}: exact {exact:.12f}")
    print(f"  {'eps':>8} {'forward f64':>12} {'central f64':>12} {'central f32':>12}   (absolute errors)")
    errors = {}
    for eps in [1e-1, 1e-2, 1e-3, 1e-4, 1e-6]:
        fwd = (np.tanh(np.float64(x + eps)) - np.tanh(np.float64(x))) / eps
        cen = (np.tanh(np.float64(x + eps)) - np.tanh(np.float64(x - eps))) / (2 * eps)
        x32, e32 = np.float32(x), np.float32(eps)
        cen32 = (np.tanh(x32 + e32) - np.tanh(x32 - e32)) / (np.float32(2) * e32)
        errors[eps] = (abs(fwd - exact), abs(cen - exact), abs(float(cen32) - exact))
        print(f"  {eps:>8.0e} {errors[eps][0]:>12.2e} {errors[eps][1]:>12.2e} {errors[eps][2]:>12.2e}")
    # Shrinking eps 10x shrinks the forward error ~10x and the central error ~100x.
    check(errors[1e-2][0] / errors[1e-3][0] > 5, "forward-difference error falls like eps")
    check(errors[1e-2][1] / errors[1e-3][1] > 50, "central-difference error falls like eps^2")
    check(errors[1e-6][1] < 1e-9 and errors[1e-6][2] > 1e-3,
          "at eps = 1e-6 float64 is accurate to < 1e-9, float32 is off by > 1e-3 (rounding)")


def part_gradcheck(quick):
    section("6. ts.gradcheck on the library's ops")
    rng = np.random.default_rng(2)
    n = 3 if quick else 6

    def randn(*shape, positive=False):
        a = rng.standard_normal(shape)
        return ts.Tensor(np.abs(a) + 0.5 if positive else a, requires_grad=True)  # float64

    idx = np.array([0, 2, 2, 1, 0])  # repeated rows: their gradients must add up
    cases = [
        ("a * b, b broadcast", lambda a, b: a * b, (randn(n, 4), randn(4))),
        ("a / b", lambda a, b: a / b, (randn(n, 4), randn(n, 4, positive=True))),
        ("a @ b", lambda a, b: a @ b, (randn(2, n, 4), randn(4, 5))),
        ("tanh, exp, log", lambda a: a.tanh() + a.exp() + a.log(), (randn(n, 4, positive=True),)),
        ("sum(axis=0), mean(axis=1, keepdims)",
         lambda a: a.sum(axis=0) + a.mean(axis=1, keepdims=True), (randn(n, 4),)),
        ("max(axis=-1)", lambda a: a.max(axis=-1), (randn(n, 4),)),
        ("a[idx] with repeated rows", lambda a: a[idx], (randn(3, 4),)),
        ("F.softmax(axis=-1)", lambda a: F.softmax(a, axis=-1), (randn(n, 5),)),
        ("h + h*h, h = tanh(a) (reuse)", lambda a: a.tanh() + a.tanh() * a.tanh(), (randn(n),)),
    ]
    for name, fn, inputs in cases:
        try:
            ok = ts.gradcheck(fn, *inputs)
            msg = ""
        except ts.GradcheckError as e:
            ok, msg = False, f": {e}"
        elements = sum(t.size for t in inputs)
        # one backward pass, then two forward passes per input element
        check(ok, f"{name:<36} {elements:>3} elements, {2 * elements:>3} forward passes{msg}")


class Square(ts.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)  # backward needs x: keep a reference (no copy)
        return x * x

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved
        return 2.0 * x * grad     # d(x^2)/dx = 2x, times the incoming gradient


class SquareForgotTwo(ts.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved
        return x * grad           # BUG: d(x^2)/dx is 2x


class FlipForgotToFlipBack(ts.Function):
    @staticmethod
    def forward(ctx, x):
        return x[::-1]            # y[i] = x[n-1-i]

    @staticmethod
    def backward(ctx, grad):
        return grad               # BUG: dL/dx[i] = dL/dy[n-1-i], i.e. grad[::-1]


def part_functions():
    section("7. Writing a Function: forward, backward, ctx, apply")
    x = ts.Tensor(np.array([1.0, -2.0, 3.0]), requires_grad=True)
    y = Square.apply(x)
    fn, ctx, inputs = y._ctx
    print(f"  y = Square.apply(x): y.data = {y.data}, y._ctx = ({fn.__name__}, ctx, inputs)")
    print(f"  ctx.saved holds x: {ctx.saved[0] is x.data};  ctx.needs_input_grad = {ctx.needs_input_grad}")
    with ts.no_grad():
        z = Square.apply(x)
    check(z._ctx is None and not z.requires_grad, "under ts.no_grad() apply records nothing")
    check(ts.gradcheck(lambda t: Square.apply(t), x), "gradcheck passes a correct Function")

    section("8. gradcheck catches a wrong backward")
    try:
        ts.gradcheck(lambda t: SquareForgotTwo.apply(t), x)
        check(False, "SquareForgotTwo should have failed gradcheck")
    except ts.GradcheckError as e:
        print(f"  SquareForgotTwo: {e}")
        check(True, "the missing factor 2 is caught")

    # The flip bug is invisible to an all-ones cotangent: with L = sum(y), every dL/dy is 1, and
    # flipping a vector of ones changes nothing. gradcheck contracts with a *random* w instead.
    v = ts.Tensor(np.array([0.5, -1.0, 2.0, 0.25]), requires_grad=True)
    FlipForgotToFlipBack.apply(v).sum().backward()
    print(f"  FlipForgotToFlipBack with L = sum(y): dL/dx = {v.grad} (correct by accident)")
    try:
        ts.gradcheck(lambda t: FlipForgotToFlipBack.apply(t), v)
        check(False, "FlipForgotToFlipBack should have failed gradcheck")
    except ts.GradcheckError as e:
        print(f"  with a random cotangent, gradcheck raises GradcheckError:\n    {e}")
        check(True, "the forgotten flip is caught, thanks to the random cotangent")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller inputs (used by the tests)")
    parser.add_argument("--out-dir", default="out/lesson01",
                        help="where outputs would go (this chapter writes none; every lesson accepts it)")
    args = parser.parse_args()
    np.random.seed(0)  # nothing here draws from the global state, but a lesson is always seeded
    ts.manual_seed(0)

    start = time.perf_counter()
    scalar_grads = part_scalar_engine()
    part_order_pitfalls()
    part_tensor(scalar_grads, args.quick)
    part_broadcasting()
    part_central_differences()
    part_gradcheck(args.quick)
    part_functions()

    return summary(start)


if __name__ == "__main__":
    sys.exit(main())
