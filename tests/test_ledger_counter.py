"""The efficiency ledger's bookkeeping (tinysparse/ledger/counter.py): nested blocks, module rows
and their order, unknown Functions, padding and extra bytes, backward bytes. Written against
the mutants that survived (docs/MUTATION.md); split from test_ledger.py."""
import math

import numpy as np
import pytest

import tinysparse as ts
from tinysparse import ledger
from tinysparse.engine import function
from tinysparse import nn

from ledger_helpers import batch, dense_gpt

def _step(model, idx, targets):
    _, loss = model(idx, targets)
    loss.backward()


def test_a_block_inside_another_counts_into_both(rng):
    """The inner block counts what it would alone; the outer one gets every forward AND backward
    event too (its totals are the same), and the backward rows keep the innermost names (the
    graph node's record is not overwritten by the outer block)."""
    model = dense_gpt()
    idx, targets = batch(rng)
    with ledger.count(model) as alone:
        _step(model, idx, targets)
    with ledger.count() as outer:                       # no model: rows named by class chains
        with ledger.count(model) as inner:
            _step(model, idx, targets)
    assert inner.totals == alone.totals and inner.by_module() == alone.by_module()
    assert outer.totals == alone.totals and not outer.unknown_ops
    backward_names = {n for n, _ in alone.by_module("backward")}
    assert {n for n, _ in outer.by_module("backward")} == backward_names
    forward_names = {n for n, _ in outer.by_module("forward")}
    assert "GPT.Block.MLP.Linear" in forward_names and "GPT" in forward_names


def test_rows_are_module_paths_most_flops_first_and_inclusive_rows_add_children(rng):
    model = dense_gpt()
    idx, _ = batch(rng)
    with ledger.count(model) as led:
        model(idx)
    rows = led.by_module()
    assert {n for n, _ in rows} <= set(ledger.counter.module_paths(model).values()) - {""} | {"GPT"}
    flops = [f.flops for _, f in rows]
    assert flops == sorted(flops, reverse=True)
    assert sum(flops) == pytest.approx(led.totals.flops, rel=1e-12)   # exclusive rows partition
    exclusive, inclusive = dict(rows), dict(led.by_module(inclusive=True))
    prefixes = {".".join(n.split(".")[:i]) for n in exclusive if n != "GPT"
                for i in range(1, n.count(".") + 2)}
    assert set(inclusive) == prefixes | {"GPT"}
    for name in prefixes:
        below = [f.flops for n, f in exclusive.items() if n == name or n.startswith(name + ".")]
        assert inclusive[name].flops == pytest.approx(sum(below), rel=1e-12), name


class _TwoTwins(nn.Module):
    """Two Linear layers of one shape (equal counts) and a Linear shared under two names."""

    def __init__(self):
        super().__init__()
        self.b, self.a = nn.Linear(4, 3), nn.Linear(4, 3)
        self.shared = nn.Linear(3, 3)
        self.again = self.shared

    def forward(self, x):
        return self.again(self.b(x) + self.a(x))


def test_ties_are_ordered_by_bytes_then_name_and_a_shared_module_keeps_its_first_path(rng):
    model = _TwoTwins()
    assert sorted(ledger.counter.module_paths(model).values()) == ["", "a", "b", "shared"]
    x = ts.Tensor(rng.standard_normal((2, 4)).astype(np.float32))
    with ledger.count(model) as led:
        model(x)
    names = [n for n, _ in led.by_module()]
    assert names.index("a") + 1 == names.index("b")        # equal FLOPs and bytes: by name
    assert "shared" in names and "again" not in names
    # equal FLOPs (35 each), more bytes first although its name sorts later
    wide = ts.Tensor(rng.standard_normal((5, 7)))                              # float64
    narrow = ts.Tensor(rng.standard_normal((5, 7)).astype(np.float32))
    with ledger.count() as led:
        -wide                                              # Neg: (35 + 35) x 8 bytes
        narrow + narrow                                    # Add: (35 + 35 + 35) x 4 bytes
    assert [n for n, _ in led.by_op()] == ["Neg", "Add"]
    assert [n for n, _ in led.by_module()] == ["(no module)"]     # outside any module


class _Twice(function.Function):
    """A Function the library does not know (no cost formula)."""

    @staticmethod
    def forward(ctx, a):
        return a * 2

    @staticmethod
    def backward(ctx, grad):
        return grad * 2


def test_an_unknown_function_is_named_and_a_registered_formula_counts_padding_and_extra_bytes(
        rng, monkeypatch):
    x = ts.Tensor(rng.standard_normal((5, 7)), requires_grad=True)           # 280 bytes
    with ledger.count() as led:
        _Twice.apply(x).backward(np.ones((5, 7)))
    assert led.unknown_ops == {"_Twice"} and led.totals.flops == 0
    assert (led.totals.forward.bytes_rw, led.totals.backward.bytes_rw) == (2 * 280, 2 * 280)
    formula = ledger.costs.Formula(
        lambda arrays, out, options, ctx: ledger.costs.Cost(other=out.size, padding=3,
                                                            extra_bytes=16),
        lambda node, ctx, grad, grads: ledger.costs.Cost(other=math.prod(node.out), padding=5,
                                                         extra_bytes=24), "test")  # (5, 7)
    monkeypatch.setitem(ledger.costs.COSTS, _Twice, formula)
    with ledger.count() as led:
        for _ in range(2):
            _Twice.apply(x).backward(np.ones((5, 7)))
    t = led.totals
    assert not led.unknown_ops and t.calls == 4
    assert (t.forward.flops_padding, t.backward.flops_padding, t.flops_padding) == (6, 10, 16)
    assert t.flops == 4 * 35 + 16
    assert t.forward.bytes_rw == 2 * (2 * 280 + 16) and t.backward.bytes_rw == 2 * (2 * 280 + 24)


def test_backward_bytes_sums_and_weights(rng):
    """A product of two broadcast operands: the backward's 1 FLOP per input gradient plus the
    engine's two unbroadcast sums; a scalar operand adds no bytes; a layer's backward touches
    the weights its forward read."""
    a = ts.Tensor(rng.standard_normal((3, 1)), requires_grad=True)
    b = ts.Tensor(rng.standard_normal((1, 5)), requires_grad=True)
    with ledger.count() as led:
        (a * b).backward(np.ones((3, 5)))
    assert led.totals.backward.flops_other == 2 * 15 + (15 - 3) + (15 - 5)
    x = ts.Tensor(rng.standard_normal((5, 7)), requires_grad=True)
    with ledger.count() as led:
        (x * 2.0).backward(np.ones((5, 7)))
    assert (led.totals.forward.bytes_rw, led.totals.backward.bytes_rw) == (2 * 280, 3 * 280)
    layer = nn.Linear(7, 4)
    with ledger.count() as led:
        layer(ts.Tensor(rng.standard_normal((2, 7)).astype(np.float32))).sum().backward()
    assert led.totals.backward.weight_bytes_touched == (7 * 4 + 4) * 4
