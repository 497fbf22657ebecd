"""Chapter 01, part 1: a scalar autograd engine (micrograd style), the code sections 1-3 run.

A Value holds one number, the Values it was computed from, and a closure that turns the gradient
of the Value into gradients of its parents; run.py builds the chapter's neuron from Values, checks
their gradients against central differences, shows the two wrong ways to order a backward pass,
and compares the Values' gradients with the library's Tensor.
"""
import math

# =================================================================================================
# 1. A scalar autograd engine (micrograd style)
#
# A Value holds one number, the Values it was computed from, and a closure that turns the gradient
# of the Value into gradients of its parents. Each op's backward sits right under its forward.
# =================================================================================================

class Value:
    def __init__(self, data, parents=(), op=""):
        self.data = float(data)
        self.grad = 0.0                # dL/d(self); backward() fills it in
        self._parents = parents        # a tuple, not a set: in x * x, x is a parent twice
        self._backward = lambda: None  # a leaf has nobody to pass its gradient to
        self.op = op                   # for printing only

    def __repr__(self):
        return f"Value(data={self.data:.6g}, grad={self.grad:.6g})"

    def __add__(self, other):
        other = other if isinstance(other, Value) else Value(other)
        out = Value(self.data + other.data, (self, other), "+")

        # d(a + b)/da = 1 and d(a + b)/db = 1: the gradient passes through unchanged.
        # `+=`, never `=`: a Value used twice receives a contribution from each use.
        def _backward():
            self.grad += out.grad
            other.grad += out.grad
        out._backward = _backward
        return out

    def __mul__(self, other):
        other = other if isinstance(other, Value) else Value(other)
        out = Value(self.data * other.data, (self, other), "*")

        # d(a b)/da = b and d(a b)/db = a: each factor's gradient is the other factor.
        def _backward():
            self.grad += other.data * out.grad
            other.grad += self.data * out.grad
        out._backward = _backward
        return out

    def __pow__(self, p):
        assert isinstance(p, (int, float)), "a constant exponent only"
        out = Value(self.data ** p, (self,), f"**{p}")

        # d(a^p)/da = p a^(p-1)
        def _backward():
            self.grad += p * self.data ** (p - 1) * out.grad
        out._backward = _backward
        return out

    def tanh(self):
        t = math.tanh(self.data)
        out = Value(t, (self,), "tanh")

        # d tanh(a)/da = 1 - tanh(a)^2: the output is all that backward needs to keep.
        def _backward():
            self.grad += (1.0 - t * t) * out.grad
        out._backward = _backward
        return out

    # Built from the four ops above, so they need no backward of their own.
    def __neg__(self):
        return self * -1.0

    def __sub__(self, other):
        return self + (-other)

    def __truediv__(self, other):
        return self * other ** -1.0

    def __radd__(self, other):  # 2 + v
        return self + other

    def __rmul__(self, other):  # 3 * v
        return self * other

    def __rsub__(self, other):  # 1 - v
        return (-self) + other

    def backward(self):
        """Fill in d(self)/dv for every Value v that self depends on.

        Unlike the library (which accumulates across calls, as PyTorch does), each call here starts
        from zero: that keeps the demonstrations below short.
        """
        order = topological_order(self)
        for v in order:
            v.grad = 0.0
        self.grad = 1.0  # dL/dL = 1: the seed of the chain rule
        # Reversed topological order: every consumer of v runs before v, so when v passes its
        # gradient on, v.grad already holds the contributions of all of v's uses.
        for v in reversed(order):
            v._backward()


def topological_order(root):
    """Every Value root depends on, each listed after all of its parents. No recursion.

    An explicit stack replaces the call stack: (v, False) means "visit v", (v, True) means
    "v's parents are all listed now, list v". The same algorithm is tinysparse/engine/autograd.py's
    `_topological_order`.
    """
    order, visited = [], set()
    stack = [(root, False)]
    while stack:
        v, parents_done = stack.pop()
        if parents_done:
            order.append(v)
        elif v not in visited:
            visited.add(v)
            stack.append((v, True))                     # come back to v after its parents...
            stack.extend((p, False) for p in v._parents)  # ...which the stack pops first
    return order


def topological_order_recursive(root):
    """micrograd's version: short and clear, but one Python stack frame per node of depth."""
    order, visited = [], set()

    def visit(v):
        if v not in visited:
            visited.add(v)
            for p in v._parents:
                visit(p)
            order.append(v)
    visit(root)
    return order


def naive_backward(root, remember_visited):
    """WRONG on purpose: pass a node's gradient on the moment the node is reached.

    Without a visited set, a Value used twice is reached twice and passes its gradient on twice.
    With one, it passes it on the first time it is reached, before its other uses have added to it.
    """
    for v in topological_order(root):
        v.grad = 0.0
    root.grad = 1.0
    visited = set()

    def visit(v):
        if remember_visited:
            if v in visited:
                return
            visited.add(v)
        v._backward()  # is v.grad complete yet? only if every consumer of v has already run
        for p in v._parents:
            visit(p)
    visit(root)


def numeric_grads(f, xs, eps=1e-6):
    """Central differences of the scalar function f(*Values) with respect to each input."""
    grads = []
    for i in range(len(xs)):
        plus = [Value(x + (eps if j == i else 0.0)) for j, x in enumerate(xs)]
        minus = [Value(x - (eps if j == i else 0.0)) for j, x in enumerate(xs)]
        grads.append((f(*plus).data - f(*minus).data) / (2 * eps))
    return grads


# The function the chapter differentiates: one tanh neuron and a squared error.
#   n = w1 x1 + w2 x2 + b,   o = tanh(n),   L = (o - 1)^2 + 0.1 (w1^2 + w2^2)
def neuron_loss(x1, x2, w1, w2, b):
    n = x1 * w1 + x2 * w2 + b
    o = n.tanh()
    return (o - 1.0) ** 2 + 0.1 * (w1 ** 2 + w2 ** 2)


NEURON_INPUTS = {"x1": 2.0, "x2": -1.0, "w1": -0.8, "w2": 0.3, "b": 0.7}
