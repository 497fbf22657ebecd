"""Chapter 03: attention and the transformer. Fused attention, its backward, the GPT, a learned lookup.

    python lessons/03_transformer/run.py            # the whole chapter, well under a minute
    python lessons/03_transformer/run.py --quick    # fewer training steps (the tests use it)
    python lessons/03_transformer/run.py --out-dir somewhere/   # where attention.png goes

Read lessons/03_transformer/README.md alongside; it explains tinysparse/engine/attention.py
(Attention, PackedCausalAttention), engine/normalization.py (LayerNorm), engine/functional.py
(GELU) and tinysparse/gpt.py. Parts 1-3 (attention checked three ways) are in
attention_checks.py beside this file, part 5's task and pictures in recall.py. Every claim the
script prints is checked, and it exits with status 1 if any check fails.
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
from tinysparse.engine.tensor import Tensor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from attention_checks import (part_causality, part_heads_and_gradcheck,  # noqa: E402
                              part_primitives, try_gradcheck)
from recall import (N_PAIR, N_VAL, SEQ, VOCAB, ascii_heatmaps, attention_probs,  # noqa: E402
                    make_batch, save_png, token_name)


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
