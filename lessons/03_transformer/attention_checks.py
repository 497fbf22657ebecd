"""Chapter 03, parts 1-3: the attention Function checked three ways.

Part 1 builds softmax(q k^T / sqrt(hd) + mask) v from primitive ops and holds the fused
F.attention to it (values, gradients, graph size, memory, time); part 2 reads the heads straight
out of the packed (B, T, 3C) projection and gradchecks both Functions in float64; part 3 shows
numerically that the causal mask keeps the future from changing the past, down to the GPT's
logits. run.py runs these parts and then the GPT (parts 4 to 6).
"""
import math
import time

import numpy as np

import tinysparse as ts
from tinysparse import functional as F
from tinysparse.gpt import GPT, GPTConfig
from tinysparse.lesson import check, measured, section
from tinysparse.engine.autograd import _topological_order
from tinysparse.engine.tensor import Tensor


def max_diff(a, b):
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))


def try_gradcheck(what, fn, *inputs):
    """ts.gradcheck, reported as a check instead of an exception."""
    try:
        ok, detail = ts.gradcheck(fn, *inputs), ""
    except ts.GradcheckError as e:
        ok, detail = False, f": {e}"
    n = sum(x.size for x in inputs if isinstance(x, Tensor) and x.requires_grad)
    check(ok, f"gradcheck {what} ({n} elements){detail}")


# ---- 1. Attention from primitive ops, against the fused Function -------------------------------

def attention_from_primitives(q, k, v, causal=True):
    """softmax(q k^T / sqrt(hd) + mask) v, one library op at a time: each line is a graph node."""
    T, hd = q.shape[-2], q.shape[-1]
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hd))        # (..., T, T)
    if causal:
        future = np.triu(np.ones((T, T), dtype=bool), k=1)             # True above the diagonal
        scores = scores.masked_fill(future, -np.inf)                   # a where(): no grad to -inf
    # softmax by hand. Subtracting the row max (a constant: softmax ignores shifts) keeps exp
    # from overflowing; the diagonal is never masked, so every row max is finite.
    scores = scores - Tensor(scores.data.max(axis=-1, keepdims=True))
    e = scores.exp()                                                   # exp(-inf) = 0
    p = e / e.sum(axis=-1, keepdims=True)                              # (..., T, T) rows sum to 1
    return p @ v                                                       # (..., T, hd)


def graph_facts(y):
    """(Function nodes, bytes held by the graph, how many of those buffers are (..., T, T)):
    every intermediate's data and every saved array, each buffer counted once (a view counts as
    the array it views)."""
    buffers, nodes = {}, 0
    for t in _topological_order(y):
        if t._ctx is None:
            continue
        nodes += 1
        arrays = [t.data] + [a for a in t._ctx[1].saved if isinstance(a, np.ndarray)]
        for a in arrays:
            while a.base is not None:
                a = a.base
            buffers[id(a)] = a
    T = y.shape[-2]
    n_tt = sum(1 for a in buffers.values() if a.ndim >= 2 and a.shape[-2:] == (T, T) and a.dtype != bool)
    return nodes, sum(a.nbytes for a in buffers.values()), n_tt


def part_primitives(args):
    section("1. Attention from primitive ops vs the fused F.attention")
    rng = np.random.default_rng(1)
    B, nh, T, hd = 2, 3, 7, 5
    q, k, v = (Tensor(rng.standard_normal((B, nh, T, hd)), requires_grad=True) for _ in range(3))
    g = rng.standard_normal((B, nh, T, hd))          # some upstream gradient dL/dY
    results = {}
    for name, fn in (("primitives", attention_from_primitives), ("fused", F.attention)):
        for t in (q, k, v):
            t.grad = None
        y = fn(q, k, v)
        y.backward(g)
        results[name] = (y.data, [t.grad.copy() for t in (q, k, v)])
    (y0, g0), (y1, g1) = results["primitives"], results["fused"]
    print(f"  q, k, v: (B, nh, T, hd) = {(B, nh, T, hd)}, float64")
    print(f"  max |Y_primitives - Y_fused|          = {max_diff(y0, y1):.2e}")
    for name, a, b in zip("qkv", g0, g1):
        print(f"  max |d{name}_primitives - d{name}_fused|        = {max_diff(a, b):.2e}")
    check(max_diff(y0, y1) < 1e-12, "the fused forward equals the primitive one")
    check(all(max_diff(a, b) < 1e-10 for a, b in zip(g0, g1)),
          "the hand-derived backward (dQ, dK, dV) equals the chain rule through 9 primitive ops")

    # What fusing buys: one graph node instead of many, one (T, T) array kept instead of several.
    # The time columns carry their unit: they are measured and vary from run to run; the other
    # columns are the same on every run (and the transcript checks compare them).
    print("\n  float32, primitives vs fused:")
    print("  (B, nh, T, hd)   graph nodes  (T, T) arrays  held for backward    "
          "forward+backward, best of n")
    speedups = {}
    for shape, reps in (((1, 2, 16, 8), 20), ((8, 4, 128, 32), 3 if args.quick else 6)):
        q, k, v = (Tensor(rng.standard_normal(shape).astype(np.float32), requires_grad=True)
                   for _ in range(3))
        g = rng.standard_normal(shape).astype(np.float32)
        stats = {}
        for name, fn in (("primitives", attention_from_primitives), ("fused", F.attention)):
            best = float("inf")
            for _ in range(reps):
                start = time.perf_counter()
                fn(q, k, v).backward(g)
                best = min(best, time.perf_counter() - start)
            stats[name] = graph_facts(fn(q, k, v)) + (best,)
        (n0, b0, t0, s0), (n1, b1, t1, s1) = stats["primitives"], stats["fused"]
        print(f"  {str(shape):<17}{n0:>4} vs {n1:<5}{t0:>4} vs {t1:<5}{b0 / 2**20:7.2f} vs "
              f"{b1 / 2**20:5.2f} MiB  {s0 * 1e3:7.3f} ms vs {s1 * 1e3:6.3f} ms")
        speedups[shape] = s0 / s1
    measured("  fused attention's forward+backward is " + " and ".join(
        f"{ratio:.1f}x faster at {shape}" for shape, ratio in speedups.items()))
    check(stats["fused"][0] == 1, "fused attention is one graph node")
    check(stats["fused"][2] == 1 and stats["primitives"][2] > 1 and b1 < b0 / 2,
          "fused attention keeps one (T, T) array (P) for its backward, under half the memory")
    small, large = speedups.values()
    check(small > 1.5, "at the small size fusing is over 1.5x faster: nine nodes' Python overhead "
                       "dominates", timed=True)
    check(large < small, "at the large size the gain is smaller: NumPy's arithmetic dominates",
          timed=True)


# ---- 2. Heads, the packed Function, and gradcheck ------------------------------------------------

def split_heads_by_hand(qkv, n_head):
    """What PackedCausalAttention does, in separate steps: the reference for the fused version."""
    B, T, C3 = qkv.shape
    C = C3 // 3
    hd = C // n_head
    x = qkv.reshape(B, T, 3, n_head, hd)                 # (B, T, 3, nh, hd)
    x = x.permute(2, 0, 3, 1, 4)                         # (3, B, nh, T, hd)
    q, k, v = x[0], x[1], x[2]                           # (B, nh, T, hd) each
    y = F.attention(q, k, v, causal=True)                # (B, nh, T, hd): heads run in parallel
    return y.permute(0, 2, 1, 3).reshape(B, T, C)        # (B, T, nh, hd) -> (B, T, C)


def part_heads_and_gradcheck(args):
    section("2. Multiple heads, the packed Function, gradcheck in float64")
    rng = np.random.default_rng(2)
    B, nh, T, hd = 2, 3, 5, 4                            # small and odd on purpose: no symmetry
    C = nh * hd
    qkv = Tensor(rng.standard_normal((B, T, 3 * C)), requires_grad=True)
    g = rng.standard_normal((B, T, C))
    y_hand = split_heads_by_hand(qkv, nh)
    nodes_hand = graph_facts(y_hand)[0]                  # counted before backward frees the graph
    y_hand.backward(g)
    grad_hand, qkv.grad = qkv.grad.copy(), None
    y_packed = F.causal_self_attention(qkv, nh)
    nodes_packed = graph_facts(y_packed)[0]
    y_packed.backward(g)
    print(f"  qkv (B, T, 3C) = {qkv.shape} -> heads (B, nh, T, hd) = {(B, nh, T, hd)} -> y (B, T, C) "
          f"= {y_packed.shape}")
    print(f"  graph nodes: split by hand {nodes_hand}, packed {nodes_packed}")
    check(max_diff(y_hand.data, y_packed.data) < 1e-12 and max_diff(grad_hand, qkv.grad) < 1e-12,
          "causal_self_attention(qkv) equals reshape/permute/attention/permute, forward and backward")

    q, k, v = (Tensor(rng.standard_normal((B, nh, T, hd)), requires_grad=True) for _ in range(3))
    try_gradcheck("F.attention, causal, q k v of shape (2, 3, 5, 4)",
                  lambda q, k, v: F.attention(q, k, v, causal=True), q, k, v)
    try_gradcheck("F.attention, not causal", lambda q, k, v: F.attention(q, k, v, causal=False), q, k, v)
    qkv = Tensor(rng.standard_normal((B, T, 3 * C)), requires_grad=True)
    try_gradcheck("F.causal_self_attention, qkv of shape (2, 5, 36), 3 heads",
                  lambda x: F.causal_self_attention(x, nh), qkv)
    if not args.quick:
        q, k, v = (Tensor(rng.standard_normal((1, 2, 9, 3)), requires_grad=True) for _ in range(3))
        try_gradcheck("the primitive-op attention, (1, 2, 9, 3)", attention_from_primitives, q, k, v)


# ---- 3. The causal mask, numerically -------------------------------------------------------------

def part_causality(args):
    section("3. Causality: the future cannot change the past")
    rng = np.random.default_rng(3)
    B, nh, T, hd = 1, 2, 8, 4
    C = nh * hd
    qkv = rng.standard_normal((B, T, 3 * C))
    with ts.no_grad():
        base = F.causal_self_attention(Tensor(qkv), nh).data
    print("  perturb position t+1 of qkv (its query, key and value) and measure how the output moves")
    print("     t   max change at positions <= t   at position t+1")
    past_ok = True
    for t in range(T - 1):
        bumped = qkv.copy()
        bumped[:, t + 1] += rng.standard_normal((B, 3 * C))
        with ts.no_grad():
            y = F.causal_self_attention(Tensor(bumped), nh).data
        past, now = max_diff(y[:, :t + 1], base[:, :t + 1]), max_diff(y[:, t + 1], base[:, t + 1])
        past_ok &= past == 0.0 and now > 0
        print(f"  {t:4d}   {past:28.1e}   {now:14.3f}")
    check(past_ok, "outputs at positions <= t are bit-identical; the one at t+1 moves")

    # Without the mask, every output sees every position.
    q, k, v = (Tensor(a) for a in qkv.reshape(B, T, 3, nh, hd).transpose(2, 0, 3, 1, 4))
    bumped_k = Tensor(k.data.copy())
    bumped_k.data[:, :, T - 1] += 1.0                    # change only the LAST key
    with ts.no_grad():
        moved = max_diff(F.attention(q, bumped_k, v, causal=False).data[:, :, 0],
                         F.attention(q, k, v, causal=False).data[:, :, 0])
    print(f"  causal=False: changing the last key moves the FIRST output by {moved:.3f}")
    check(moved > 0, "without the mask the first position sees the last one")

    # The gradient view: dY_t / d(anything after t) is exactly zero, with no special code:
    # masked entries have P = 0, and dS = P * (...) is zero wherever P is.
    t = 3
    x = Tensor(qkv.copy(), requires_grad=True)
    F.causal_self_attention(x, nh)[:, t].sum().backward()
    grad_norm = np.abs(x.grad[0]).sum(axis=-1)           # (T,): how much each position matters
    print(f"  |dL/dqkv| per position for L = sum(y[:, {t}]): "
          + " ".join(f"{n:.2f}" for n in grad_norm))
    check(np.all(grad_norm[t + 1:] == 0) and np.all(grad_norm[:t + 1] > 0),
          f"the gradient of output {t} is exactly zero at positions > {t}")

    # The same for the whole GPT: change the token at t+1, the logits up to t do not move.
    ts.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=11, n_layer=2, n_head=2, n_embd=16, block_size=8))
    idx = rng.integers(0, 11, size=(2, 8))
    with ts.no_grad():
        logits, _ = model(idx)
        idx2 = idx.copy()
        idx2[:, 5] = (idx2[:, 5] + 1) % 11
        logits2, _ = model(idx2)
    past = max_diff(logits2.data[:, :5], logits.data[:, :5])
    now = max_diff(logits2.data[:, 5:], logits.data[:, 5:])
    print(f"  a 2-layer GPT, token 5 changed: logits at 0..4 move by {past:.1e}, at 5..7 by {now:.3f}")
    check(past == 0.0 and now > 0, "in the GPT, a later token never changes earlier logits")
