"""The counter: `with ledger.count(model) as led:` records the work of every Function call.

    with ledger.count(model) as led:
        logits, loss = model(idx, targets)
        loss.backward()
    led.totals.flops_matmul, led.totals.backward.bytes_rw, led.by_module(), led.per_token(B * T)

PyTorch's torch.utils.flop_counter.FlopCounterMode is the model; three things are done
differently, on purpose:
- Backward work is attributed to the module its forward ran in, recorded on each graph node at
  forward time. FlopCounterMode has to rebuild the module stack during backward from hooks on
  the modules' inputs and outputs, which is brittle (work whose gradient does not pass those
  hooks in order lands in another module, or in none).
- Elementwise ops, reductions, softmax, layer norm, GELU and the non-matmul part of attention
  are counted (`flops_other`, each formula's convention in costs.py); FlopCounterMode counts
  them as 0, so `flops_matmul` alone is its total.
- Sparse work is counted as executed (costs_fused.py): an expert's matmul counts the rows
  routed to it, not a dense layer's worth.

Bytes come as two figures:
- `bytes_rw`: every call's arrays read and written (positional input arrays and the output in
  forward; the incoming gradient, the saved arrays and the gradients returned in backward),
  summed over calls: the traffic with NO cache reuse between ops, an upper bound of what crosses
  the memory bus;
- `weight_bytes_touched`: the distinct parameter bytes read (each weight once however often it
  is used; of a stacked expert bank only the experts that got rows): the traffic with PERFECT
  reuse of the weights, the floor a step must read from memory.
The engine's unbroadcast sums (a bias gradient summed over the batch) are counted in `other`
as (gradient elements - input elements) adds.

Cost when no ledger is active: one check of a module global in Function.apply, in the backward
loop and in Module.__call__. Measured on a dense tiny training step against the same engine with
those lines removed, 40 alternating steps each on a shared 2-core machine: 205.5 vs 209.5 ms of
process CPU time (median), within the noise. Counting a tiny-moe step (318 Function calls,
forward and backward) cost 3.4% of the step (621 vs 601 ms, same method).
"""
import contextlib
import math
from dataclasses import dataclass, field, fields

from ..engine import function as _function
from .. import nn
from .costs import COSTS, ZERO

_NONE = {}
PHASES = ("forward", "backward")
OUTSIDE = "(no module)"
NODE = "_ledger_node"            # the attribute a counted forward leaves on its graph node's ctx


@dataclass
class Figures:
    """One set of counts. FLOPs are floating-point operations (a multiply-add is 2), bytes are
    bytes. `flops` is matmul + other (+ padding): tinysparse's total; `flops_matmul` alone is
    what FlopCounterMode would report."""
    flops_matmul: float = 0
    flops_other: float = 0
    flops_padding: float = 0
    bytes_rw: float = 0
    weight_bytes_touched: float = 0
    calls: int = 0

    @property
    def flops(self):
        return self.flops_matmul + self.flops_other + self.flops_padding

    @property
    def intensity(self):
        """Arithmetic intensity, FLOPs per byte moved (no reuse): the roofline's x axis."""
        return self.flops / self.bytes_rw if self.bytes_rw else math.inf

    def scaled(self, factor):
        return Figures(**{f.name: getattr(self, f.name) * factor for f in fields(self)})


@dataclass
class Totals(Figures):
    """Figures over both phases, and `forward` / `backward` for each."""
    forward: Figures = field(default_factory=Figures)
    backward: Figures = field(default_factory=Figures)

    def scaled(self, factor):
        base = Figures.scaled(Figures(**{f.name: getattr(self, f.name)
                                         for f in fields(Figures)}), factor)
        return Totals(**vars(base), forward=self.forward.scaled(factor),
                      backward=self.backward.scaled(factor))


class Node:
    """What a graph node's forward left for its backward's count."""
    __slots__ = ("module", "shapes", "out", "options", "touched")

    def __init__(self, module, shapes, out, options, touched):
        self.module, self.shapes, self.out, self.options, self.touched = (
            module, shapes, out, options, touched)


def module_paths(model):
    """{id(module): dotted path} of every module under `model` ('' for the model itself), the
    first path where a shared module appears."""
    paths, stack = {}, [("", model)]
    while stack:
        prefix, module = stack.pop()
        if id(module) in paths:
            continue
        paths[id(module)] = prefix
        children = list(module.named_children())
        for name, child in reversed(children):
            stack.append((f"{prefix}.{name}" if prefix else name, child))
    return paths


class Ledger:
    """The counts of one `count()` block. Read them with `totals`, `by_module()`, `by_op()`,
    `per_token(n)`; `unknown_ops` names Function classes without a cost formula (their bytes
    count, their FLOPs cannot)."""

    def __init__(self, model=None, weights=True):
        self.model, self.weights = model, weights
        self.root = type(model).__name__ if model is not None else OUTSIDE
        self._paths = module_paths(model) if model is not None else {}
        self._stack = []
        self._rows = {}                       # (phase, module, op) -> [calls, matmul, other, pad, bytes]
        self._touched = {p: {} for p in PHASES}   # phase -> {parameter key: bytes}
        self.unknown_ops = set()
        self._outer = None

    # ---- the module stack (nn.Module.__call__'s observer) ------------------------------------------
    def enter(self, module):
        path = self._paths.get(id(module))
        if path is None:                      # not under the model (or no model): class names
            parent = self._stack[-1] if self._stack else ""
            name = type(module).__name__
            path = f"{parent}.{name}" if parent and self.model is None else name
        self._stack.append(path or self.root)
        if self._outer is not None:
            self._outer.enter(module)

    def exit(self, module):
        self._stack.pop()
        if self._outer is not None:
            self._outer.exit(module)

    # ---- the engine's observer ------------------------------------------------------------------------
    def on_forward(self, cls, ctx, inputs, arrays, out, options):
        module = self._stack[-1] if self._stack else self.root
        formula = COSTS.get(cls)
        if formula is None:
            self.unknown_ops.add(cls.__name__)
            cost = ZERO
        else:
            cost = formula.forward(arrays, out, options, ctx)
        nbytes = out.nbytes + cost.extra_bytes
        for a in arrays:                      # arrays have nbytes; scalars and indices do not
            nbytes += getattr(a, "nbytes", 0)
        touched = _NONE
        if self.weights:
            touched = (formula.touched(inputs, options) if formula is not None and formula.touched
                       else {id(x): x.data.nbytes for x in inputs if isinstance(x, nn.Parameter)})
            self._touched["forward"].update(touched)
        self._add("forward", module, cls.__name__, cost, nbytes)
        if ctx.needs_input_grad is not None and NODE not in ctx.__dict__:
            # a graph node: what its backward's count needs, for whichever ledger counts it (the
            # innermost ledger's record when blocks nest: the outer one does not overwrite it)
            shapes = tuple([getattr(a, "shape", None) for a in arrays])
            ctx.__dict__[NODE] = Node(module, shapes, out.shape, options, touched)
        if self._outer is not None:
            self._outer.on_forward(cls, ctx, inputs, arrays, out, options)

    def on_backward(self, fn, ctx, grad, input_grads):
        node = ctx.__dict__.get(NODE)
        formula = COSTS.get(fn)
        if node is None:                      # its forward ran outside this ledger: no shapes
            self.unknown_ops.add(f"{fn.__name__} (backward of a forward not counted)")
            cost, module, shapes = ZERO, OUTSIDE, (None,) * len(input_grads)
        elif formula is None:
            self.unknown_ops.add(fn.__name__)
            cost, module, shapes = ZERO, node.module, node.shapes
        else:
            cost = formula.backward(node, ctx, grad, input_grads)
            module, shapes = node.module, node.shapes
        nbytes = grad.nbytes + cost.extra_bytes
        for a in ctx.saved:                   # what backward reads besides the gradient
            nbytes += getattr(a, "nbytes", 0)
        other = cost.other
        for shape, g in zip(shapes, input_grads):
            if g is not None and hasattr(g, "nbytes"):
                nbytes += g.nbytes
                if shape is not None and g.shape != shape:    # the engine's unbroadcast sum
                    other += g.size - math.prod(shape)
        if node is not None and node.touched:
            self._touched["backward"].update(node.touched)
        self._add("backward", module, fn.__name__,
                  cost if other == cost.other else _with_other(cost, other), nbytes)
        if self._outer is not None:
            self._outer.on_backward(fn, ctx, grad, input_grads)

    def _add(self, phase, module, op, cost, nbytes):
        row = self._rows.get((phase, module, op))
        if row is None:
            row = self._rows[(phase, module, op)] = [0, 0, 0, 0, 0]
        row[0] += 1
        row[1] += cost.matmul
        row[2] += cost.other
        row[3] += cost.padding
        row[4] += nbytes

    # ---- results ----------------------------------------------------------------------------------------
    def _figures(self, rows, touched):
        f = Figures(weight_bytes_touched=sum(touched.values()))
        for calls, mm, other, pad, nbytes in rows:
            f.calls += calls
            f.flops_matmul += mm
            f.flops_other += other
            f.flops_padding += pad
            f.bytes_rw += nbytes
        return f

    @property
    def totals(self):
        """Totals over both phases (weights touched: distinct over both), with .forward and
        .backward."""
        per = {p: self._figures([r for (ph, _, _), r in self._rows.items() if ph == p],
                                self._touched[p]) for p in PHASES}
        union = {**self._touched["forward"], **self._touched["backward"]}
        both = self._figures(self._rows.values(), union)
        return Totals(**vars(both), forward=per["forward"], backward=per["backward"])

    def _grouped(self, key, phase, inclusive=False):
        groups = {}
        for (ph, module, op), row in self._rows.items():
            if phase is not None and ph != phase:
                continue
            names = [module, op][key:key + 1]
            if inclusive and key == 0 and module not in (self.root, OUTSIDE):
                parts = module.split(".")
                names = [self.root] + [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
            for name in names:
                groups.setdefault(name, []).append(row)
        table = [(name, self._figures(rows, {})) for name, rows in groups.items()]
        return sorted(table, key=lambda item: (-item[1].flops, -item[1].bytes_rw, item[0]))

    def by_module(self, phase=None, inclusive=False):
        """[(module path, Figures)], most FLOPs first. A path is dotted from the model given to
        count() ('h.2.mlp.experts'; the model itself by its class name), or a chain of class
        names without a model. inclusive=True adds each module's children into it (the model's
        row is then the total). phase: None (both), 'forward' or 'backward'."""
        return self._grouped(0, phase, inclusive)

    def by_op(self, phase=None):
        """[(Function class name, Figures)], most FLOPs first; phase as in by_module."""
        return self._grouped(1, phase)

    def per_token(self, n_tokens):
        """totals divided by n_tokens (the tokens the counted work processed), a Totals."""
        if not n_tokens or n_tokens < 0:
            raise ValueError(f"per_token needs a positive number of tokens, got {n_tokens!r}")
        return self.totals.scaled(1.0 / n_tokens)


def _with_other(cost, other):
    return cost._replace(other=other)


@contextlib.contextmanager
def count(model=None, weights=True):
    """Count every Function call (forward and backward) inside the block: yields a Ledger.

    model: the nn.Module whose submodules name the rows ('h.0.attn.c_attn'); None names them
    by class. weights=False skips weight_bytes_touched (it stays 0): which experts got rows is
    then never read, so on a GPU the count adds no wait for the device (the training loop).
    A block inside another counts its own work and passes every event on to the outer one,
    which keeps counting too.
    """
    led = Ledger(model, weights)
    led._outer = _function._observer if isinstance(_function._observer, Ledger) else None
    previous = _function.set_observer(led)
    previous_call = nn.set_call_observer(led)
    try:
        yield led
    finally:
        _function.set_observer(previous)
        nn.set_call_observer(previous_call)
