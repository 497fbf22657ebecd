"""Cost formulas of the fused ops (softmax, cross-entropy, GELU, layer norm, linear, attention)
and of the Mixture-of-Experts primitives (gather, grouped matmul, combine). See costs.py for the
columns.

Attention is counted as executed: the fused causal attention (engine/attention.py) computes the
full T x T score matrix and then masks the future, so its two matmuls count 2*T*T*hd each per
head, not the causal half (T*(T+1)/2 scores) that a kernel skipping masked tiles would execute.
PyTorch's FlopCounterMode counts scaled_dot_product_attention the same way (full T x T).

Sparse work is counted as executed: a grouped matmul multiplies only the rows routed to each
expert, S = offsets[E] = the plan's kept rows (dispatch.py), so it counts 2*S*d_in*d_out, the
sum over experts of 2*rows_e*d_in*d_out. The counts are taken at the Function, from shapes, so
every dispatch backend (numpy, numba, cuda) reports the same numbers for the same routing.
Gather, scatter and combine move rows: they count bytes, not FLOPs (a decision of the ledger's
design: the combine's k multiply-adds per token element, 2*T*k*C, are left out of the FLOPs).
"""
import math

from ..adaptive import kv_cache
from ..engine import attention, functional, linear, normalization
from ..engine.backend import to_numpy
from ..moe import primitives
from .costs import Cost, Formula, _computed, register


def _rowwise(cls, forward, backward, convention):
    """A per-element count on the op's (first) input, forward and backward."""
    def fwd(arrays, out, options, ctx):
        return Cost(other=forward * arrays[0].size)

    def bwd(node, ctx, grad, grads):
        return Cost(other=backward * math.prod(node.shapes[0]) if grads[0] is not None else 0)
    return register(cls, Formula(fwd, bwd, convention))


_rowwise(functional.Softmax, 5, 4, "softmax: max, subtract, exp, sum, divide (5 per element); "
         "backward g*y, sum, subtract, *y (4)")
_rowwise(functional.LogSoftmax, 5, 4, "log-softmax: max, subtract, exp, sum, subtract (5 per "
         "element; the log per row is not counted); backward sum, exp, multiply, subtract (4)")
_rowwise(functional.GELU, 15, 15, "GELU, tanh form: 2u = x(1 + 0.044715x^2)*c with a clip (6), "
         "sigmoid(2u) (8), x*s (1) = 15 per element; backward the slope s + x s(1-s) d(2u)/dx "
         "from the saved parts (15)")


def _cross_entropy_forward(arrays, out, options, ctx):
    logits = arrays[0]
    n = logits.size // logits.shape[-1]
    return Cost(other=4 * logits.size + 3 * n)


def _cross_entropy_backward(node, ctx, grad, grads):
    size = math.prod(node.shapes[0])
    n = size // node.shapes[0][-1]
    return Cost(other=3 * size + n)


register(functional.CrossEntropy, Formula(
    _cross_entropy_forward, _cross_entropy_backward,
    "cross-entropy on logits (N, V): max, subtract, exp, sum (4 per logit) and log, pick, sum "
    "(3 per row); backward exp, divide, scale (3 per logit) and the -1 at the target (1 per row)"))


def _layer_norm_forward(arrays, out, options, ctx):
    x, weight, bias = arrays[0], arrays[1], arrays[2]
    return Cost(other=x.size * (6 + (weight is not None) + (bias is not None)))


def _layer_norm_backward(node, ctx, grad, grads):
    done = _computed(grads)
    return Cost(other=grad.size * (8 * done[0] + 2 * done[1] + 1 * done[2]))


register(normalization.LayerNorm, Formula(
    _layer_norm_forward, _layer_norm_backward,
    "layer norm: shift, mean, centre, square, mean, divide by std (6 per element), +1 each for "
    "the gain and the bias; backward dx 8, dw 2 (multiply, sum), db 1 per element"))


def _linear_forward(arrays, out, options, ctx):
    return Cost(matmul=2 * out.size * arrays[0].shape[-1], other=out.size)


def _linear_backward(node, ctx, grad, grads):
    done = _computed(grads)
    return Cost(matmul=2 * grad.size * node.shapes[0][-1] * (done[0] + done[1]),
                other=(grad.size - grad.shape[-1]) * done[2])


register(linear.Linear, Formula(
    _linear_forward, _linear_backward,
    "x @ W + b: 2*m*n*k for the product (as MatMul) and 1 per output element for the bias (as "
    "Add); backward 2*m*n*k for each of dx and dW, and the bias gradient's sum over the rows "
    "(output elements - d_out adds, as the engine's unbroadcast sum after an Add)"))


# ---- attention ------------------------------------------------------------------------------------

def _attention_shapes(node_or_arrays, packed, n_head=None):
    """(batch*heads, Tq, Tk, hd, hd_v) of an attention call."""
    if packed:
        B, T, C3 = node_or_arrays[0]
        return B * n_head, T, T, C3 // 3 // n_head, C3 // 3 // n_head
    q, k, v = node_or_arrays[:3]
    return math.prod(q[:-2]), q[-2], k[-2], q[-1], v[-1]


def _attention_cost(shapes, backward):
    heads, Tq, Tk, hd, hd_v = shapes
    scores = heads * Tq * Tk
    if backward:   # dV = P^T G, dP = G V^T (2 hd_v each); dQ = dS K, dK = dS^T Q (2 hd each)
        return Cost(matmul=scores * (4 * hd_v + 4 * hd), other=5 * scores)
    return Cost(matmul=scores * (2 * hd + 2 * hd_v), other=6 * scores)


def _attention_formula(cls, packed):
    def fwd(arrays, out, options, ctx):
        shapes = [a.shape for a in arrays[:3]]
        return _attention_cost(_attention_shapes(shapes, packed, options.get("n_head")), False)

    def bwd(node, ctx, grad, grads):
        return _attention_cost(_attention_shapes(node.shapes, packed, node.options.get("n_head")),
                               True)
    return register(cls, Formula(fwd, bwd, (
        "attention over the FULL Tq x Tk scores (the causal mask is applied to computed scores): "
        "matmul Q K^T and P V, 2*Tq*Tk*hd each per head; other: scale, max, subtract, exp, sum, "
        "divide (6 per score). Backward (all of dQ, dK, dV, always): 4 matmuls of 2*Tq*Tk*hd; "
        "dP*P, sum, subtract, *P, *scale (5 per score)")))


_attention_formula(attention.Attention, packed=False)
_attention_formula(attention.PackedCausalAttention, packed=True)


def _cached_attention_forward(arrays, out, options, ctx):
    """T new queries against the L cached keys up to the last query's position (the slice the
    kernel computes; a prefill is L = T)."""
    B, T, C3 = arrays[0].shape
    start, n_head = options["start"], options["n_head"]
    L = int(start.max()) + 1 if hasattr(start, "shape") else start + T
    hd = C3 // 3 // n_head
    return _attention_cost((B * n_head, T, L, hd, hd), False)


register(kv_cache.CachedAttention, Formula(
    _cached_attention_forward, lambda node, ctx, grad, grads: Cost(),
    "attention of T new tokens over the KV cache's L keys (adaptive/kv_cache.py): as attention, "
    "over T x L scores; sampling only, no backward"))


# ---- Mixture-of-Experts primitives (moe/primitives.py) --------------------------------------------

def _gather_forward(arrays, out, options, ctx):
    return Cost(extra_bytes=options["plan"].token_index.nbytes)


def _gather_backward(node, ctx, grad, grads):
    return Cost(extra_bytes=ctx.plan.slot_position.nbytes)


register(primitives.GatherRows, Formula(
    _gather_forward, _gather_backward,
    "gather rows into the dispatch buffer: 0 FLOPs, bytes (x, buffer, token_index); backward "
    "scatters them back: 0 FLOPs, bytes (the design counts moves as bytes, not FLOPs)"))


def _combine_forward(arrays, out, options, ctx):
    return Cost(extra_bytes=options["plan"].slot_position.nbytes)


register(primitives.Combine, Formula(
    _combine_forward, lambda node, ctx, grad, grads: Cost(
        extra_bytes=ctx.plan.slot_position.nbytes),
    "combine: the gate-weighted sum of each token's k rows; counted as bytes (y, gates, out, "
    "slot_position), 0 FLOPs, by the design's rule for data movement; backward likewise"))


def _grouped_forward(arrays, out, options, ctx):
    x, w, b = arrays[0], arrays[1], arrays[2]
    S, d_in, d_out = x.shape[0], w.shape[1], w.shape[2]     # S = offsets[E]: rows routed, kept
    return Cost(matmul=2 * S * d_in * d_out, other=S * d_out if b is not None else 0,
                extra_bytes=options["offsets"].nbytes)


def _grouped_backward(node, ctx, grad, grads):
    (S, d_in), (_, _, d_out) = node.shapes[0], node.shapes[1]
    done = _computed(grads)
    weights = done[1] or (len(done) > 2 and done[2])     # dW and db come from one backend call
    matmul = 2 * S * d_in * d_out * (done[0] + weights)
    other = S * d_out if weights and ctx.has_bias else 0
    return Cost(matmul=matmul, other=other, extra_bytes=ctx.offsets.nbytes)


def _grouped_touched(inputs, options):
    """Only the experts that got rows are read: {(id(param), e): bytes of expert e's slice}."""
    off = to_numpy(options["offsets"])
    busy = [e for e in range(len(off) - 1) if off[e + 1] > off[e]]
    out = {}
    for p in inputs[1:3]:
        if p is not None:
            per_expert = p.data.nbytes // p.shape[0]
            out.update({(id(p), e): per_expert for e in busy})
    return out


register(primitives.GroupedLinear, Formula(
    _grouped_forward, _grouped_backward,
    "grouped matmul: 2*rows_e*d_in*d_out per expert segment, rows from the dispatch plan (only "
    "the rows routed there; an expert without rows costs 0), + rows*d_out for the bias; "
    "backward 2*S*d_in*d_out for dX and again for dW (+ S*d_out for db)",
    touched=_grouped_touched))

