"""The efficiency ledger's counter (tinysparse/ledger/counter.py, costs.py, costs_fused.py):
counted FLOPs against exact analytic counts, sparse work as executed on every dispatch backend,
bytes of single ops, module attribution in forward and backward, PyTorch's FlopCounterMode."""
import math

import numpy as np
import pytest

import tinysparse as ts
from tinysparse import ledger
from tinysparse.engine import function
from tinysparse.gpt import GPT, GPTConfig
from tinysparse.moe import MoE
from tinysparse.moe.dispatch import get_backend
from tinysparse.moe.primitives import grouped_linear
from tinysparse import nn

from ledger_helpers import B, C, H, L, T, V, batch, dense_gpt


def test_dense_gpt_matmul_flops_equal_the_analytic_count(rng):
    """Matmul FLOPs of one forward of a dense GPT on (B, T) tokens, width C, L blocks, V tokens:

    per block   c_attn  (BT, C) @ (C, 3C)          2 BT C 3C  =  6 BT C^2
                Q K^T   B*H heads of (T, hd) @ (hd, T)    2 B H T T hd = 2 B T^2 C
                P V     B*H heads of (T, T) @ (T, hd)     2 B T^2 C
                c_proj  (BT, C) @ (C, C)            2 BT C^2
                c_fc    (BT, C) @ (C, 4C)           8 BT C^2
                c_proj  (BT, 4C) @ (4C, C)          8 BT C^2
                                            = 24 BT C^2 + 4 B T^2 C
    head        (BT, C) @ (C, V), tied to wte   2 BT C V

    Attention is counted as executed: the fused causal attention computes all T x T scores and
    masks the future afterwards, so Q K^T and P V count the full square (not T(T+1)/2).
    Backward: every matmul has both operands requiring grad (the first block's input comes from
    the embedding lookup, a Parameter), so each forward matmul m,n,k costs two of the same size
    (dA = G B^T, dB = A^T G), and attention's backward runs 4 matmuls of 2 T^2 hd per head:
    backward = 2 x forward, exactly."""
    model = dense_gpt()
    idx, targets = batch(rng)
    with ledger.count(model) as led:
        _, loss = model(idx, targets)
        loss.backward()
    forward = L * (24 * B * T * C * C + 4 * B * T * T * C) + 2 * B * T * C * V
    assert led.totals.forward.flops_matmul == forward
    assert led.totals.backward.flops_matmul == 2 * forward
    assert led.totals.flops_matmul == 3 * forward
    assert led.totals.flops_padding == 0
    assert led.totals.flops_other > 0 and not led.unknown_ops


def test_backward_is_attributed_to_the_module_of_its_forward(rng):
    """FlopCounterMode attributes backward work through module hooks; here each graph node
    carries the module it ran in, so h.1.mlp.c_fc's backward is exactly 2 x its forward."""
    model = dense_gpt()
    idx, targets = batch(rng)
    with ledger.count(model) as led:
        _, loss = model(idx, targets)
        loss.backward()
    per = led.per_token(4)
    assert per.backward.flops_matmul == pytest.approx(led.totals.backward.flops_matmul / 4)
    assert per.backward.calls == pytest.approx(led.totals.backward.calls / 4)
    fwd = dict(led.by_module("forward"))
    bwd = dict(led.by_module("backward"))
    assert fwd["h.1.mlp.c_fc"].flops_matmul == 2 * B * T * C * 4 * C
    assert bwd["h.1.mlp.c_fc"].flops_matmul == 2 * 2 * B * T * C * 4 * C
    assert bwd["h.0.attn"].flops_matmul == 2 * 4 * B * T * T * C     # the fused attention
    assert fwd["GPT"].flops_matmul == 2 * B * T * C * V                # the head, in GPT.forward
    assert bwd["GPT"].flops_matmul == 4 * B * T * C * V
    # inclusive rows add children up: the model's row is the total, a block's holds its parts
    inclusive = dict(led.by_module(inclusive=True))
    assert inclusive["GPT"].flops == pytest.approx(led.totals.flops)
    parts = [f.flops_matmul for name, f in led.by_module() if name.startswith("h.1.")]
    assert inclusive["h.1"].flops_matmul == sum(parts)


def test_names_without_a_model_are_class_chains(rng):
    layer = MoE(C, 5, top_k=2, d_expert=9, dispatch_backend="numpy")
    x = ts.Tensor(rng.standard_normal((2, T, C)).astype(np.float32))
    with ledger.count() as led:
        layer(x)
    names = {name for name, _ in led.by_module()}
    assert "MoE.Experts" in names and "MoE.TopKRouter" in names


def _routed_rows(layer, x):
    """Rows the experts get, from the routing itself: dropless T*k; with a capacity C, each
    expert keeps min(count, C)."""
    r = layer.router(x.reshape(-1, layer.n_embd))
    counts = np.bincount(r.expert_ids.reshape(-1), minlength=layer.n_expert)
    if layer.capacity_factor is None:
        return int(counts.sum())
    cap = int(np.ceil(layer.capacity_factor * r.expert_ids.size / layer.n_expert))
    return int(np.minimum(counts, cap).sum())


@pytest.mark.parametrize("capacity_factor", [None, 0.75])
def test_expert_flops_are_routed_rows_on_every_backend(rng, capacity_factor):
    """Each grouped matmul counts 2 * rows * C * d_expert, rows = the rows routed (and kept);
    numpy, numba and cuda (simulator) report identical counts for identical routing."""
    E, k, d = 6, 2, 11
    x_np = rng.standard_normal((2, 9, C)).astype(np.float32)
    seen = []
    for backend in ("numpy", "numba", "cuda"):
        ts.manual_seed(0)
        layer = MoE(C, E, top_k=k, d_expert=d, capacity_factor=capacity_factor,
                    dispatch_backend=backend)
        x = ts.Tensor(x_np, requires_grad=True)
        rows = _routed_rows(layer, x)
        with ledger.count(layer) as led:
            out = layer(x)
            (out * out).sum().backward()
        experts_fwd = dict(led.by_module("forward"))["experts"]
        experts_bwd = dict(led.by_module("backward"))["experts"]
        assert experts_fwd.flops_matmul == 2 * (2 * rows * C * d)            # w1 and w2
        assert experts_bwd.flops_matmul == 2 * 2 * (2 * rows * C * d)        # dX and dW of each
        seen.append([(name, vars(f)) for name, f in led.by_module()] + [vars(led.totals.forward)])
    if capacity_factor is not None:
        assert rows < 2 * 9 * k                                          # some slots were dropped
    assert seen[0] == seen[1] == seen[2]


def test_no_rows_count_zero():
    """A routing that sends no token anywhere (every slot empty, as expert choice leaves holes):
    the grouped matmul multiplies nothing and reads no expert's weights."""
    E, d = 4, 5
    backend = get_backend("numpy")
    plan = backend.plan(np.full((6, 2), -1, dtype=np.int64), E)
    w = nn.Parameter(np.ones((E, C, d), dtype=np.float32))
    b = nn.Parameter(np.ones((E, d), dtype=np.float32))
    buffer = ts.Tensor(np.zeros((0, C), dtype=np.float32), requires_grad=True)
    with ledger.count() as led:
        h = grouped_linear(buffer, w, b, plan.offsets, backend)
        h.sum().backward()
    assert h.shape == (0, d)
    assert led.totals.flops_matmul == 0
    assert dict(led.by_op())["GroupedLinear"].flops == 0
    assert led.totals.forward.weight_bytes_touched == 0


def test_only_experts_with_rows_are_touched(rng):
    E, d = 5, 3
    backend = get_backend("numpy")
    plan = backend.plan(np.array([[0, 3], [3, 0], [0, 3]]), E)       # experts 0 and 3 only
    w = nn.Parameter(rng.standard_normal((E, C, d)).astype(np.float32))
    b = nn.Parameter(rng.standard_normal((E, d)).astype(np.float32))
    buffer = ts.Tensor(rng.standard_normal((6, C)).astype(np.float32))
    with ledger.count() as led:
        grouped_linear(buffer, w, b, plan.offsets, backend)
    assert led.totals.weight_bytes_touched == 2 * (C * d + d) * 4
    assert led.totals.flops_matmul == 2 * 6 * C * d


def test_bytes_of_single_ops_are_their_arrays(rng):
    a = ts.Tensor(rng.standard_normal((3, 5)), requires_grad=True)          # float64
    bias = ts.Tensor(rng.standard_normal(5), requires_grad=True)
    with ledger.count() as led:
        y = a + bias
    assert led.totals.bytes_rw == (15 + 5 + 15) * 8
    assert led.totals.flops_other == 15
    with ledger.count() as led:
        y.backward(np.ones((3, 5)))
    # the gradient in (15), the two gradients out (15 each, before bias's is summed to (5,)),
    # nothing saved; the engine's sum of bias's gradient over 3 rows: 15 - 5 adds
    assert led.totals.backward.bytes_rw == (15 + 15 + 15) * 8
    assert led.totals.backward.flops_other == 15 - 5
    m = ts.Tensor(rng.standard_normal((4, 6)).astype(np.float32), requires_grad=True)
    n = ts.Tensor(rng.standard_normal((6, 5)).astype(np.float32), requires_grad=True)
    with ledger.count() as led:
        p = m @ n
        p.backward(np.ones((4, 5), dtype=np.float32))
    assert led.totals.forward.bytes_rw == (24 + 30 + 20) * 4
    assert led.totals.backward.bytes_rw == (20 + 24 + 30 + 24 + 30) * 4      # g, saved a b, da db
    assert led.totals.forward.flops_matmul == 2 * 4 * 5 * 6
    assert led.totals.backward.flops_matmul == 2 * (2 * 4 * 5 * 6)


def test_weights_touched_count_each_parameter_once(rng):
    layer = nn.Linear(7, 4)
    x = ts.Tensor(rng.standard_normal((2, 7)).astype(np.float32))
    with ledger.count() as led:
        layer(x)
        layer(x)
    assert led.totals.weight_bytes_touched == (7 * 4 + 4) * 4
    assert led.totals.bytes_rw == 2 * (14 + 28 + 4 + 8) * 4    # one fused call: x, W, b in; y out


def test_per_token_and_the_hook_is_removed(rng):
    model = dense_gpt()
    idx, _ = batch(rng)
    with ledger.count(model) as led:
        model(idx)
    per = led.per_token(B * T)
    assert per.flops_matmul == pytest.approx(led.totals.flops_matmul / (B * T))
    assert per.forward.bytes_rw == pytest.approx(led.totals.forward.bytes_rw / (B * T))
    assert per.weight_bytes_touched == pytest.approx(led.totals.weight_bytes_touched / (B * T))
    for bad in (0, -3, None):
        with pytest.raises(ValueError, match="positive number of tokens"):
            led.per_token(bad)
    assert function._observer is None and nn._call_observer is None
    calls = led.totals.calls
    model(idx)                                      # outside the block: nothing more is counted
    assert led.totals.calls == calls


def test_hook_is_removed_after_an_error_and_blocks_nest(rng):
    x = ts.Tensor(rng.standard_normal((2, 3)).astype(np.float32))
    with pytest.raises(RuntimeError):
        with ledger.count():
            raise RuntimeError("boom")
    assert function._observer is None and nn._call_observer is None
    with ledger.count() as outer:
        x.exp()
        with ledger.count() as inner:
            x * x
        x.exp()
    assert [name for name, _ in inner.by_op()] == ["Mul"]
    assert dict(outer.by_op())["Exp"].calls == 2 and dict(outer.by_op())["Mul"].calls == 1


def test_elementwise_conventions(rng):
    x = ts.Tensor(rng.standard_normal((5, 7)), requires_grad=True)
    with ledger.count() as led:
        y = ts.functional.gelu(x)
        y.sum().backward()
    ops = dict(led.by_op("forward"))
    assert ops["GELU"].flops_other == 15 * 35 and ops["Sum"].flops_other == 35
    assert dict(led.by_op("backward"))["GELU"].flops_other == 15 * 35
    assert "GELU" in ledger.conventions()
    # per input gradient computed: Mul 1 each; Div 1 for a, 2 for b; a constant costs nothing
    c = ts.Tensor(rng.standard_normal((5, 7)))
    with ledger.count() as led:
        (x * c).backward(np.ones((5, 7)))
        (x * x).backward(np.ones((5, 7)))
        (c / x).backward(np.ones((5, 7)))
        x.exp().max(axis=1).backward(np.ones(5))
    backward = dict(led.by_op("backward"))
    assert backward["Mul"].flops_other == 35 * (1 + 2)
    assert backward["Div"].flops_other == 35 * (1 + 2)
    assert backward["Exp"].flops_other == 35 and backward["Max"].flops_other == 3 * 35
    assert dict(led.by_op("forward"))["Max"].flops_other == 2 * 35


def test_matches_pytorch_flop_counter(rng):
    """FlopCounterMode counts matmuls only (elementwise ops are 0): its total equals
    flops_matmul, forward and backward, dense and MoE. Its attention needs the math kernel:
    on the CPU (torch 2.13) scaled_dot_product_attention runs a fused kernel that is not in
    FlopCounterMode's registry and counts 0; the math kernel runs Q K^T and P V as bmm's over
    the full T x T scores, which it counts, as the ledger does."""
    torch = pytest.importorskip("torch")
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode
    from tinysparse.bench.torch_twins import build_torch_twin
    for n_expert in (0, 4):
        ts.manual_seed(0)
        model = GPT(GPTConfig(n_layer=L, n_head=H, n_embd=C, block_size=T, vocab_size=V,
                              n_expert=n_expert, top_k=2, d_expert=10 if n_expert else 0,
                              dispatch_backend="numpy"))
        idx, targets = batch(rng)
        twin = build_torch_twin(model)
        with ledger.count(model) as led:
            _, loss = model(idx, targets)
            loss.backward()
        counter = FlopCounterMode(display=False)
        with counter, sdpa_kernel(SDPBackend.MATH):
            _, tloss = twin(torch.from_numpy(idx), torch.from_numpy(targets))
            forward_torch = counter.get_total_flops()
            tloss.backward()
        assert led.totals.forward.flops_matmul == forward_torch, n_expert
        assert led.totals.flops_matmul == counter.get_total_flops(), n_expert


def test_every_function_of_the_library_has_a_cost_formula():
    """A new op without a formula would count 0 FLOPs silently (its name would only show in
    led.unknown_ops): every Function subclass tinysparse defines must be registered."""
    import importlib
    import pkgutil
    import tinysparse
    for info in pkgutil.walk_packages(tinysparse.__path__, "tinysparse."):
        if not info.name.endswith(("__main__", "gpu_check")):
            importlib.import_module(info.name)
    seen, stack = set(), list(function.Function.__subclasses__())
    while stack:
        cls = stack.pop()
        if cls not in seen:
            seen.add(cls)
            stack.extend(cls.__subclasses__())
    ours = {c for c in seen if c.__module__.startswith("tinysparse.")}
    assert len(ours) > 30
    missing = sorted(c.__qualname__ for c in ours if c not in ledger.COSTS)
    assert missing == []


def test_a_backward_whose_forward_was_not_counted_is_named(rng):
    a = ts.Tensor(rng.standard_normal((3, 4)), requires_grad=True)
    b = ts.Tensor(rng.standard_normal((4, 2)), requires_grad=True)
    y = a @ b                                          # outside any ledger
    with ledger.count() as led:
        y.backward(np.ones((3, 2)))
    assert led.unknown_ops == {"MatMul (backward of a forward not counted)"}
    assert led.totals.flops == 0
    assert led.totals.bytes_rw == (6 + 12 + 8 + 12 + 8) * 8        # g, saved a b, da db


def test_fused_and_indexing_conventions(rng):
    """Softmax 5 forward / 4 backward per element; attention 6 / 5 per score beside its
    matmuls; an integer-array index scatter-adds its gradient (1 add per gradient element)."""
    x = ts.Tensor(rng.standard_normal((3, 7)), requires_grad=True)
    table = ts.Tensor(rng.standard_normal((10, 4)), requires_grad=True)
    qkv = ts.Tensor(rng.standard_normal((2, 5, 3 * 6)), requires_grad=True)
    with ledger.count() as led:
        ts.functional.softmax(x, axis=-1).backward(np.ones((3, 7)))
        table[np.array([1, 1, 4])].backward(np.ones((3, 4)))
        table[1:3].backward(np.ones((2, 4)))                       # a slice: no adds
        ts.functional.causal_self_attention(qkv, 2).backward(np.ones((2, 5, 6)))
    fwd, bwd = dict(led.by_op("forward")), dict(led.by_op("backward"))
    assert (fwd["Softmax"].flops_other, bwd["Softmax"].flops_other) == (5 * 21, 4 * 21)
    assert bwd["GetItem"].flops_other == 3 * 4
    scores, hd = 2 * 2 * 5 * 5, 3                                  # B * heads * T * T, C / heads
    attn_f, attn_b = fwd["PackedCausalAttention"], bwd["PackedCausalAttention"]
    assert (attn_f.flops_matmul, attn_f.flops_other) == (4 * scores * hd, 6 * scores)
    assert (attn_b.flops_matmul, attn_b.flops_other) == (8 * scores * hd, 5 * scores)


def test_analytic_estimate_differs_from_the_count_by_the_non_matmul_parameters(rng):
    """2N + 4LTC counts every active parameter as a multiply-add per token; the biases and
    layer-norm gains in N are elementwise work, so the counted matmul FLOPs per token are the
    estimate minus 2 per such parameter, exactly. Training: 3 x the forward (6N + 12LTC)."""
    from tinysparse.ledger import analytic
    model = dense_gpt()
    idx, _ = batch(rng)
    with ledger.count(model) as led:
        model(idx)
    elementwise_params = sum(p.size for name, p in model.named_parameters()
                             if name.endswith("bias") or ".ln_" in f".{name}")
    per_token = led.totals.flops_matmul / (B * T)
    assert per_token == analytic.forward_flops_per_token(model, T) - 2 * elementwise_params
    assert analytic.training_flops_per_token(model, T) == 3 * analytic.forward_flops_per_token(model, T)
    assert analytic.training_flops_per_token(model) == model.flops_per_token()
