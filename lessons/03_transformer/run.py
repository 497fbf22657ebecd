"""Chapter 03: attention and the transformer. Fused attention, its backward, the GPT, a learned lookup.

    python lessons/03_transformer/run.py            # the whole chapter, well under a minute
    python lessons/03_transformer/run.py --quick    # fewer training steps (the tests use it)
    python lessons/03_transformer/run.py --out-dir somewhere/   # where attention.png goes

Read lessons/03_transformer/README.md alongside; it explains tinysparse/engine/attention.py
(Attention, PackedCausalAttention), engine/normalization.py (LayerNorm), engine/functional.py
(GELU) and tinysparse/gpt.py. Every claim the script prints is checked, and it exits with
status 1 if any check fails.
"""
import argparse
import math
import os
import sys
import time

import numpy as np
from threadpoolctl import threadpool_limits

import tinysparse as ts
from tinysparse import functional as F
from tinysparse import optim
from tinysparse.gpt import GPT, GPTConfig
from tinysparse.lesson import check, measured, section, summary
from tinysparse.engine.autograd import _topological_order
from tinysparse.engine.tensor import Tensor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from recall import (N_PAIR, N_VAL, SEQ, VOCAB, ascii_heatmaps, attention_probs,  # noqa: E402
                    make_batch, save_png, token_name)



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


# ---- 4. The GPT: parameter count, init, the residual stream, gradcheck ---------------------------

def gpt_parameter_formula(c):
    """Exact count for tinysparse.gpt.GPT with biases. Per block: ln_1 2C, c_attn 3C^2 + 3C,
    attn c_proj C^2 + C, ln_2 2C, c_fc 4C^2 + 4C, mlp c_proj 4C^2 + C = 12C^2 + 13C."""
    V, T, C, L = c.vocab_size, c.block_size, c.n_embd, c.n_layer
    return L * (12 * C * C + 13 * C) + V * C + T * C + 2 * C   # + ln_f; the head is tied: + 0


def part_gpt(args):
    section("4. The GPT: parameter count, GPT-2 init, the residual stream, gradcheck")
    cfg = GPTConfig()                                    # the library's default tiny GPT
    ts.manual_seed(0)
    model = GPT(cfg)
    V, T, C, L = cfg.vocab_size, cfg.block_size, cfg.n_embd, cfg.n_layer
    n_all = model.num_parameters(non_embedding=False)
    approx = 12 * L * C * C + V * C + T * C
    exact = gpt_parameter_formula(cfg)
    print(f"  GPTConfig(): V={V}, T={T}, C={C}, L={L}, n_head={cfg.n_head}")
    print(f"  12 L C^2 + V C + T C          = {approx:>9,d}  ({12 * L * C * C:,d} + {V * C:,d} + {T * C:,d})")
    print(f"  L(12C^2 + 13C) + VC + TC + 2C = {exact:>9,d}  (biases and layer norms added)")
    print(f"  GPT.num_parameters(False)     = {n_all:>9,d}   "
          f"(num_parameters() = {model.num_parameters():,d}: without wpe, as nanoGPT reports)")
    check(n_all == exact, "the exact formula matches GPT.num_parameters")
    check(abs(approx - n_all) / n_all < 0.02, "12 L C^2 + V C + T C is within 2%")
    gpt2 = GPTConfig(vocab_size=50257, n_layer=12, n_head=12, n_embd=768, block_size=1024)
    print(f"  the same formula for GPT-2 small (V=50257, T=1024, C=768, L=12): "
          f"{gpt_parameter_formula(gpt2) / 1e6:.1f} M  (the '124M' model)")
    names = [n for n, _ in model.named_parameters()]
    check(not any("head" in n for n in names), "no separate LM-head matrix: logits = x @ wte.weight.T")

    # GPT-2 init: N(0, 0.02), the two projections into the residual stream 1/sqrt(2L) smaller
    w = dict(model.named_parameters())
    s_attn = float(w["h.0.attn.c_attn.weight"].data.std())
    s_proj = float(w["h.0.mlp.c_proj.weight"].data.std())
    target = 0.02 / math.sqrt(2 * L)
    print(f"  init std: c_attn {s_attn:.4f} (0.02), c_proj {s_proj:.4f} (0.02/sqrt(2L) = {target:.4f})")
    check(abs(s_attn - 0.02) < 0.002 and abs(s_proj - target) < 0.1 * target, "GPT-2 init std")

    # Why residual connections: the gradient reaching the bottom of a deep stack.
    print("\n  |dL/dx| at the input of a stack of L blocks (L = sum(w * ln_f(x_L)), same w):")
    print("       L   x = x + f(x) (residual)   x = f(x) (no residual)")
    rng = np.random.default_rng(4)
    norms = {}
    for depth in (2, 8, 24):
        ts.manual_seed(0)
        m = GPT(GPTConfig(vocab_size=11, n_layer=depth, n_head=2, n_embd=32, block_size=8))
        x0 = Tensor(rng.standard_normal((4, 8, 32)).astype(np.float32), requires_grad=True)
        w_out = rng.standard_normal((4, 8, 32)).astype(np.float32)
        for residual in (True, False):
            x0.grad, x = None, x0
            for blk in m.h:
                if residual:
                    x = blk(x)                          # x + attn(ln_1(x)), then x + mlp(ln_2(x))
                else:
                    x = blk.mlp(blk.ln_2(blk.attn(blk.ln_1(x))))
            (m.ln_f(x) * w_out).sum().backward()
            norms[depth, residual] = float(np.linalg.norm(x0.grad))
        print(f"  {depth:6d}   {norms[depth, True]:23.3g}   {norms[depth, False]:22.3g}")
    check(norms[24, True] > 0.5 * norms[2, True] and norms[24, False] < 1e-3 * norms[2, False],
          "with residuals the gradient survives 24 blocks; without, it all but vanishes")

    # A whole 1-layer GPT, gradchecked through embeddings, layer norms, attention, MLP, tied head.
    ts.manual_seed(0)
    tiny = GPT(GPTConfig(vocab_size=11, n_layer=1, n_head=2, n_embd=8, block_size=4))
    tiny.astype(np.float64)
    idx, targets = rng.integers(0, 11, size=(2, 4)), rng.integers(0, 11, size=(2, 4))
    p = dict(tiny.named_parameters())
    print()
    for name in ["wte.weight", "h.0.attn.c_attn.weight"] + ([] if args.quick else ["h.0.ln_1.weight",
                                                                                "h.0.mlp.c_fc.bias"]):
        try_gradcheck(f"the loss of a 1-layer GPT w.r.t. {name} {p[name].shape}",
                      lambda _: tiny(idx, targets)[1], p[name])


# ---- 5. A tiny attention model learns a lookup ---------------------------------------------------

def plateau_phase_change(losses):
    """Where the loss (one value per step) sits near ln 8 (the answer is one of the 8 values,
    but which one is unknown) and how fast it then falls: the first step below ln 8 + 0.1, the
    first below ln 8 - 0.2 (the plateau is left: the batch-to-batch noise is about 0.05), and
    the first below 0.1."""
    ln8 = math.log(N_VAL)
    first = [int(np.argmax(losses < bound)) if (losses < bound).any() else None
             for bound in (ln8 + 0.1, ln8 - 0.2, 0.1)]
    if None in first:
        check(False, "the loss passes the ln 8 plateau and falls below 0.1")
        return
    on, off, solved = first
    print(f"  the loss first falls below ln 8 + 0.1 = {ln8 + 0.1:.3f} at step {on}, below "
          f"ln 8 - 0.2 = {ln8 - 0.2:.3f} at step {off}, below 0.1 at step {solved}")
    check(off - on >= 100 and solved - off <= 100,
          "a plateau of over 100 steps, then a collapse within 100: query-key matching forms")


def part_training(args):
    section("5. A tiny attention model learns a lookup (associative recall)")
    rng = np.random.default_rng(args.seed)
    ts.manual_seed(args.seed)
    cfg = GPTConfig(vocab_size=VOCAB, n_layer=1, n_head=2, n_embd=64, block_size=SEQ)
    model = GPT(cfg)
    opt = optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    example, example_targets, _ = make_batch(1, rng)
    print("  a sequence: " + " ".join(token_name(i) for i in example[0]) + "   targets at the "
          "queries: " + " ".join(token_name(i) for i in example_targets[0, N_PAIR:]))
    print(f"  model: 1-layer GPT, n_head 2, n_embd 64, vocab {VOCAB}, T {SEQ}: "
          f"{model.num_parameters(False):,d} parameters; chance accuracy {1 / N_VAL:.1%}")
    start, log_every, losses = time.perf_counter(), max(1, args.steps // 6), []
    for step in range(args.steps + 1):
        idx, targets, _ = make_batch(32, rng)
        logits, _ = model(idx)
        loss = F.cross_entropy(logits, targets, ignore_index=-1)      # only the query positions count
        losses.append(loss.item())
        if step % log_every == 0 or step == args.steps:
            print(f"  step {step:5d}   loss {losses[-1]:.4f}")
        if step == args.steps:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    print(f"  {args.steps} steps in {time.perf_counter() - start:.1f} s")
    plateau_phase_change(np.array(losses))

    idx, targets, where = make_batch(1000, np.random.default_rng(args.seed + 1))   # fresh sequences
    with ts.no_grad():
        logits, _ = model(idx)
    accuracy = float((logits.data[:, N_PAIR:].argmax(-1) == targets[:, N_PAIR:]).mean())
    p, recompute_err = attention_probs(model, idx)                    # (B, nh, T, T)
    check(recompute_err < 1e-5, f"P recomputed from q, k reproduces the block's attention output "
                                f"(max diff {recompute_err:.1e})")
    pq = p[:, :, N_PAIR:, :N_PAIR]                                    # queries' attention to the pairs
    hits = pq.argmax(-1) == where[:, None, :]                         # (B, nh, N_QUERY)
    mass = np.take_along_axis(pq, where[:, None, :, None], -1)[..., 0]
    for h in range(cfg.n_head):
        print(f"  head {h}: a query's largest attention weight is on its key's pair in "
              f"{hits[:, h].mean():6.1%} of queries (mean weight there {mass[:, h].mean():.2f})")
    best = int(hits.mean(axis=(0, 2)).argmax())
    print(f"  answer accuracy on 1000 fresh sequences: {accuracy:.1%}")
    check(accuracy > (0.99 if not args.quick else 0.9), f"the model looks values up ({accuracy:.1%} correct)")
    check(hits[:, best].mean() > 0.95,
          f"head {best} attends to the matching key ({hits[:, best].mean():.1%})")

    labels = [token_name(i) for i in idx[0]]
    print(f"\n  attention of sequence 0 (rows: query position, columns: key position; "
          f"' .:-=+*#%@' = 0..1, · = masked)")
    ascii_heatmaps(p[0], labels, cfg.n_head)
    print("  answers: " + ", ".join(f"{labels[N_PAIR + j]} -> {token_name(int(a))}"
                                    for j, a in enumerate(logits.data[0, N_PAIR:].argmax(-1))))
    save_png(p[0], labels, where[0], args)


# ---- 6. The compiled twins of the fused Functions -------------------------------------------------

def part_compiled_twins(args):
    """GELU, layer norm and attention at the headline shape, each forward+backward twice: with
    its @njit loops (the default on the CPU) and with its NumPy array code. Same bits, checked;
    the times are measured."""
    section("6. Compiled twins: the same bits in fewer passes")
    from tinysparse.engine.attention import Attention
    from tinysparse.engine.normalization import LayerNorm
    rng = np.random.default_rng(6)
    B, T, C, nh = 16, 64, 128, 4
    x = rng.standard_normal((B, T, C)).astype(np.float32)
    w = (1 + 0.1 * rng.standard_normal(C)).astype(np.float32)
    h = rng.standard_normal((B, T, 4 * C)).astype(np.float32)
    qkv = rng.standard_normal((B, T, 3 * C)).astype(np.float32)
    cases = (("GELU", F.GELU, F.gelu, (h,), h.shape),
             ("layer norm", LayerNorm, F.layer_norm, (x, w), x.shape),
             ("attention", Attention, lambda t: F.causal_self_attention(t, nh), (qkv,), x.shape))
    print(f"  float32, (B, T, C) = {(B, T, C)}, forward+backward, best of 5:")
    for name, fn_class, fn, arrays, out_shape in cases:
        g = rng.standard_normal(out_shape).astype(np.float32)
        bits, best = {}, {}
        for compiled in (True, False):
            fn_class.compiled = compiled
            times = []
            for _ in range(5):
                inputs = [Tensor(a, requires_grad=True) for a in arrays]
                start = time.perf_counter()
                y = fn(*inputs)
                y.backward(g)
                times.append(time.perf_counter() - start)
            best[compiled] = min(times)
            bits[compiled] = [y.data.tobytes()] + [t.grad.tobytes() for t in inputs]
        fn_class.compiled = True
        measured(f"  {name:<11} loops {best[True] * 1e3:6.2f} ms, array code "
                 f"{best[False] * 1e3:6.2f} ms")
        check(bits[True] == bits[False],
              f"{name}: output and input gradients are the array code's, bit for bit")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps (used by the tests)")
    parser.add_argument("--out-dir", default="out/lesson03", help="where attention.png goes")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default 1500, quick 700)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.steps is None:
        args.steps = 700 if args.quick else 1500
    # One BLAS thread: the thread count decides the order in which a matrix product's terms are
    # summed, and training amplifies a last-bit difference. With one thread the numbers are the
    # same whatever the machine's core count.
    threadpool_limits(1, user_api="blas")

    start = time.perf_counter()
    part_primitives(args)
    part_heads_and_gradcheck(args)
    part_causality(args)
    part_gpt(args)
    part_training(args)
    part_compiled_twins(args)

    return summary(start)


if __name__ == "__main__":
    sys.exit(main())
