"""The backward engine: reverse-mode automatic differentiation over the recorded graph.

`backward(root)` walks the graph below `root` once, in reverse topological order, and calls each
Function's `backward` to turn the gradient of its output into gradients of its inputs (the chain
rule). Gradients of a tensor used several times add up; a leaf that requires grad keeps the sum
in `.grad`.

Lesson 01 builds this up from a scalar micrograd-style value; this file is the real thing.
"""
from . import backend
from . import function


def unbroadcast(grad, shape):
    """Sum a gradient over the axes that broadcasting added or stretched, back to `shape`.

    If y = x + b with x (B, T, C) and b (C,), then dL/db = sum over B and T of dL/dy.
    """
    if grad.shape == shape:
        return grad
    extra = grad.ndim - len(shape)
    if extra > 0:
        grad = grad.sum(axis=tuple(range(extra)))
    stretched = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if stretched:
        grad = grad.sum(axis=stretched, keepdims=True)
    return grad


def _topological_order(root):
    """Every tensor that requires grad and leads to `root`, each after all of its inputs.

    Iterative depth-first search: a deep graph (a long sequence, many layers) would exceed
    Python's recursion limit, and a tensor used twice must still be visited only once, after
    both of its consumers have handed it their gradient.
    """
    order, visited = [], set()
    stack = [(root, False)]
    while stack:
        node, inputs_done = stack.pop()
        if inputs_done:
            order.append(node)
            continue
        if id(node) in visited:
            continue
        visited.add(id(node))
        stack.append((node, True))
        if node._ctx is not None:
            for parent in node._ctx[2]:
                if isinstance(parent, Tensor) and parent.requires_grad and id(parent) not in visited:
                    stack.append((parent, False))
    return order


def backward(root, grad=None, retain_graph=False):
    """Accumulate d(root)/d(leaf) into the .grad of every leaf that requires grad (Tensor.backward).

    The graph is freed as the walk goes, as in PyTorch: each node's saved arrays and its links to
    its inputs are dropped once its backward has run, so the memory they hold is released. A
    second backward through a freed node is an error; `retain_graph=True` keeps the graph for one.

    Each pending gradient travels with an `owned` flag: True when the array is new and nothing
    but the engine references it: the seed ones, a sum the engine made (two contributions, or
    unbroadcast's reduction), or what a Function with `new_grads = True` returned. A leaf keeps
    an owned gradient as it is; any other may alias a tensor's data or another gradient (Add's
    backward hands the SAME array to both inputs, Reshape's a view), so the leaf copies it, and
    an in-place update of one .grad can never change another array.
    """
    if not root.requires_grad:
        raise RuntimeError("backward() on a tensor that does not require grad: "
                           "create the inputs with requires_grad=True, outside no_grad()")
    xp = backend.array_module(root.data)
    if grad is None:
        if root.data.size != 1:
            raise RuntimeError(f"backward() without a gradient needs a single-element tensor, "
                               f"got shape {root.shape}: pass grad= or reduce to a scalar first")
        grads = {id(root): (xp.ones_like(root.data), True)}
    else:  # asarray may return the caller's own array: not owned
        grad = xp.asarray(grad.data if isinstance(grad, Tensor) else grad, dtype=root.dtype)
        if grad.shape != root.shape:
            raise RuntimeError(f"backward(grad) needs a gradient of the tensor's shape {root.shape}, "
                               f"got {grad.shape}")
        grads = {id(root): (grad, False)}
    order = _topological_order(root)
    observer = function._observer          # the ledger's, while one counts (function.set_observer)
    if any(node._ctx is not None and node._ctx[1] is _FREED for node in order):
        raise RuntimeError("Trying to backward through the graph a second time: the first "
                           "backward() freed it to release its memory. Pass retain_graph=True to "
                           "the first backward() to keep the graph, or run the forward again")
    for node in reversed(order):
        grad, owned = grads.pop(id(node), (None, False))
        if node._ctx is None:  # a leaf: keep its own array, in its own dtype
            if grad is None:
                continue
            if node.grad is None:  # astype copies unless the array is owned and already the dtype
                node.grad = grad.astype(node.dtype, copy=not owned)
            else:  # cast first: a float64 gradient must not promote a float32 leaf's grad
                node.grad = node.grad + grad.astype(node.dtype, copy=False)
            continue
        fn, ctx, inputs = node._ctx
        if not retain_graph:
            node._ctx = (fn, _FREED, ())  # drop saved arrays and inputs: the memory goes back
        if grad is None:
            continue
        input_grads = _call_backward(fn, ctx, grad)
        if observer is not None:
            observer.on_backward(fn, ctx, grad, input_grads)
        for parent, g in zip(inputs, input_grads):
            if g is None or not isinstance(parent, Tensor) or not parent.requires_grad:
                continue
            summed = unbroadcast(g, parent.shape)      # a new array unless it returned g itself
            key = id(parent)
            if key in grads:
                pending, owned = grads[key]
                if owned and pending.dtype == summed.dtype:    # nobody else sees it: add in place
                    pending += summed
                else:
                    grads[key] = (pending + summed, True)
            else:
                grads[key] = (summed, fn.new_grads or summed is not g)


def _call_backward(fn, ctx, grad):
    """fn.backward as a tuple of gradients; for a float16 node (see function.py) the gradient goes
    in as float32 and comes out rounded to float16, so every backward sees its output's dtype."""
    if ctx.half is not None:
        grad = grad.astype(backend.array_module(grad).float32)
    input_grads = fn.backward(ctx, grad)
    if not isinstance(input_grads, tuple):
        input_grads = (input_grads,)
    if ctx.half is not None:
        input_grads = tuple(g.astype(ctx.half) if g is not None and g.dtype.kind == "f" else g
                            for g in input_grads)
    return input_grads


from .tensor import Tensor  # noqa: E402  (tensor.py imports this module; Tensor is needed only at call time)
from .function import Context  # noqa: E402

_FREED = Context(None)  # what a node's ctx becomes once backward has used and released it
