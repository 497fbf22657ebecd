"""Chapter 08: fine-grained and shared experts, balancing without a loss, expert-choice routing.

    python lessons/08_fine_grained_experts/run.py            # the whole chapter, several minutes
    python lessons/08_fine_grained_experts/run.py --quick    # small models, under a minute
    python lessons/08_fine_grained_experts/run.py --out-dir somewhere/

Read lessons/08_fine_grained_experts/README.md alongside; it explains the options of
tinysparse/moe/layer.py (n_shared, score, balance, router) and tinysparse/moe/router.py.
Every claim the script prints is checked, and it exits with status 1 if any check fails.
Training shows a progress bar on a terminal (stderr); wall-clock values carry their unit, so
lessons/transcripts.py can tell them from the results, which are the same on every run.
"""
import argparse
import math
import os
import sys
import time

import numpy as np
from tqdm import tqdm

import tinysparse as ts
from tinysparse import functional as F
from tinysparse import optim
from tinysparse.training.data import BatchSampler, ByteTokenizer, get_batch, load_corpus
from tinysparse.gpt import GPT, MLP, GPTConfig
from tinysparse.lesson import check, section, summary
from tinysparse.moe import MoE
from tinysparse.moe.router import ExpertChoiceRouter
from tinysparse.engine.tensor import no_grad
from tinysparse.training import bits_per_byte


# ---- 1. Same compute, more combinations ----------------------------------------------------------

LAYOUTS = [  # name, n_expert, top_k, d_expert, n_shared   (n_embd = 128; dense MLP: 4 x 128 = 512)
    ("coarse", 8, 2, 256, 0),
    ("fine-grained", 32, 8, 64, 0),
    ("fine + shared", 32, 6, 64, 2),
]


def part_layouts(args):
    C = 128
    section(f"1. Coarse vs fine-grained vs shared experts (n_embd {C}, dense MLP 4C = {4 * C})")
    dense = 2 * (C * 4 * C) + 4 * C + C                      # c_fc + c_proj with biases
    print(f"  {'layout':<15}{'E':>4}{'k':>3}{'d':>5}{'K_s':>5}{'active d':>10}{'params':>10}"
          f"{'active':>9}{'MFLOP/tok':>11}{'C(E, k)':>15}{'f+b time':>11}")
    T = 256 if args.quick else 2048
    x_np = np.random.default_rng(0).standard_normal((1, T, C)).astype(np.float32)
    ts.manual_seed(0)
    mlp = MLP(GPTConfig(n_embd=C, n_head=1))
    ms = _time_layer(mlp, x_np, repeats=2 if args.quick else 5)
    print(f"  {'dense MLP':<15}{'':>4}{'':>3}{4 * C:>5}{'':>5}{4 * C:>10}{dense:>10,}{dense:>9,}"
          f"{2 * dense / 1e6:>11.3f}{1:>15,}{ms:>8.1f} ms")
    rows = []
    for name, E, k, d, ks in LAYOUTS:
        ts.manual_seed(0)
        layer = MoE(C, n_expert=E, top_k=k, d_expert=d, n_shared=ks)
        active = layer.active_parameters()
        mm_flops = 2 * (k + ks) * (2 * C * d)                # forward matmul FLOPs of a token's experts
        ms = _time_layer(layer, x_np, repeats=2 if args.quick else 5)
        rows.append((name, E, k, d, ks, active, mm_flops))
        print(f"  {name:<15}{E:>4}{k:>3}{d:>5}{ks:>5}{(k + ks) * d:>10}{layer.num_parameters():>10,}"
              f"{active:>9,}{2 * active / 1e6:>11.3f}{math.comb(E, k):>15,}{ms:>8.1f} ms")
    print("  (MFLOP/tok: forward, 2 per active weight; f+b time: forward + backward of "
          f"{T} tokens on this machine,\n   best of {2 if args.quick else 5})")
    check(mlp.num_parameters() == dense, f"the dense MLP has 2 * C * 4C + 4C + C = {dense:,} weights")
    check(len({r[6] for r in rows}) == 1 and rows[0][6] == 2 * 2 * C * 4 * C,
          "every layout multiplies each token by the same expert weights: (k + K_s) * d = 512")
    actives = [r[5] for r in rows]
    check(max(actives) / min(actives) < 1.03,
          "active parameters agree within 3% (the routers and biases differ a little)")
    check(math.comb(32, 8) > 100_000 * math.comb(8, 2),
          f"C(32, 8) = {math.comb(32, 8):,} combinations against C(8, 2) = {math.comb(8, 2)}")
    print(f"  DeepSeekMoE's own example: 16 experts top-2 -> C(16, 2) = {math.comb(16, 2)}; "
          f"split each in 4 -> C(64, 8) = {math.comb(64, 8):,}")


def _time_layer(layer, x_np, repeats):
    best = math.inf
    for i in range(repeats + 1):             # the first call compiles and warms up: not timed
        x = ts.Tensor(x_np, requires_grad=True)
        t0 = time.perf_counter()
        out = layer(x)
        (out * out).mean().backward()
        if i:
            best = min(best, time.perf_counter() - t0)
    return 1e3 * best


# ---- 2. Three ways to balance ---------------------------------------------------------------------

BALANCE_RUNS = [  # label, GPTConfig overrides (bias_update_rate: gamma; DeepSeek-V3 used 0.001)
    ("none", dict(balance="none")),
    ("aux, alpha 0.01", dict(balance="aux", aux_coef=0.01)),
    ("aux, alpha 0.01", dict(balance="aux", aux_coef=0.01, score="sigmoid")),
    ("bias, gamma 0.001", dict(balance="bias", score="sigmoid", bias_update_rate=0.001)),
    ("bias, gamma 0.01", dict(balance="bias", score="sigmoid", bias_update_rate=0.01)),
]


def balance_config(quick, **overrides):
    if quick:
        base = dict(n_layer=1, n_head=2, n_embd=32, block_size=32, n_expert=8, top_k=2, d_expert=64)
    else:
        base = dict(n_layer=2, n_head=4, n_embd=64, block_size=64, n_expert=16, top_k=4, d_expert=64)
    return GPTConfig(**base, dropout=0.0, **overrides)


def cross_entropy_eval(model, corpus, block_size, batch_size, n_batches, seed):
    """Validation cross-entropy alone (no balance or z-loss terms), on fixed batches."""
    rng = np.random.default_rng([seed, 7919, 1])
    model.eval()
    with no_grad():
        losses = [float(F.cross_entropy(model(x)[0], y).item())
                  for x, y in (get_batch(corpus.val, batch_size, block_size, rng)
                               for _ in range(n_batches))]
    model.train()
    return float(np.mean(losses))


def train_one(label, mcfg, corpus, args):
    """A plain training loop (chapter 04's, without checkpoints) that records the load each step;
    a progress bar on stderr while it runs (none when stderr is not a terminal: disable=None)."""
    ts.manual_seed(args.seed)
    model = GPT(mcfg)
    opt = optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    sampler = BatchSampler(corpus, args.batch_size, mcfg.block_size, seed=args.seed)
    warmup = max(1, args.steps // 20)
    loads, idle, t0 = [], [], time.perf_counter()
    bar = tqdm(range(args.steps), desc=f"  {label}, {mcfg.score}", unit="step", leave=False,
               disable=None, dynamic_ncols=True)
    for step in bar:
        x, y = sampler.train_batch()
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        optim.clip_grad_norm(model.parameters(), 1.0)
        opt.lr = optim.cosine_lr(step, args.lr, warmup, args.steps, args.lr / 20)
        opt.step()
        model.update_router_bias()           # DeepSeek-V3's bias step; a no-op unless balance='bias'
        stats = [layer.stats for layer in model.moe_layers()]
        loads.append([s["max_over_mean_load"] for s in stats])
        idle.append(sum(int((s["tokens_per_expert"] == 0).sum()) for s in stats))
        bar.set_postfix(load=f"{np.mean(loads[-1]):.2f}")
    bar.close()
    seconds = time.perf_counter() - t0
    ce = cross_entropy_eval(model, corpus, mcfg.block_size, args.batch_size,
                            4 if args.quick else 20, args.seed)
    return model, np.array(loads), idle[-1], ce, seconds


def part_balancing(args):
    mcfg = balance_config(args.quick)
    section(f"2. Balancing: none vs Switch aux loss vs DeepSeek-V3 bias, {args.steps} steps each")
    corpus = load_corpus("stdlib", mcfg.block_size, args.max_bytes, seed=args.seed)
    print(f"  model: {mcfg.n_layer} layer(s), n_embd {mcfg.n_embd}, E = {mcfg.n_expert}, "
          f"top-{mcfg.top_k}, d_expert {mcfg.d_expert}; batch {args.batch_size} x "
          f"{mcfg.block_size}; {corpus!r}")
    edges = [e for e in (0, 10, 50, 100, 200, 300, 400, 600, 800) if e < args.steps] + [args.steps]
    results = {}
    for label, overrides in BALANCE_RUNS:
        mcfg_run = balance_config(args.quick, **overrides)
        results[label, mcfg_run.score] = train_one(label, mcfg_run, corpus, args)

    print(f"\n  load = tokens on the busiest expert / mean tokens per expert: 1.0 = perfect, "
          f"E/k = {mcfg.n_expert // mcfg.top_k} = one expert\n  takes every token; mean over "
          f"layers, averaged over the training steps in each column")
    print(f"    {'run':<18}{'score':<8}" + "".join(f"{f'{a + 1}-{b}':>8}" for a, b in zip(edges, edges[1:]))
          + f"{'idle':>6}{'val CE':>8}{'bits/B':>8}{'time':>9}")
    for (label, score), (model, loads, idle, ce, seconds) in results.items():
        per_step = loads.mean(axis=1)
        cols = "".join(f"{per_step[a:b].mean():8.2f}" for a, b in zip(edges, edges[1:]))
        print(f"    {label:<18}{score:<8}{cols}{idle:6d}{ce:8.3f}{bits_per_byte(ce):8.3f}"
              f"{seconds:7.1f} s")
    print(f"  (idle: experts that got no token in the last training batch, of "
          f"{mcfg.n_layer} x {mcfg.n_expert};\n   val CE: validation cross-entropy in nats, "
          f"without the aux losses, on {4 if args.quick else 20} fixed batches; time: training;"
          f"\n   alpha: the aux loss coefficient; gamma: the bias step)")

    for (label, score), (model, loads, idle, ce, seconds) in results.items():
        check(math.isfinite(ce) and np.isfinite(loads).all(), f"{label}, {score}: loss and loads are finite")

    model = results["bias, gamma 0.001", "sigmoid"][0]
    router = model.moe_layers()[0].router
    b = router.bias.data
    steps_moved = np.abs(b) / router.bias_update_rate
    print(f"\n  bias run, layer 0: b ranges over [{b.min():+.3f}, {b.max():+.3f}] after "
          f"{args.steps} steps of +-gamma = {router.bias_update_rate}")
    check(bool(np.all(steps_moved <= args.steps + 1e-3)), "each b_e moved by at most gamma per step")
    # the bias chooses, the unbiased scores weigh: check on fresh tokens
    x = ts.Tensor(np.random.default_rng(3).standard_normal((64, mcfg.n_embd)).astype(np.float32))
    model.eval()
    with no_grad():
        r = router(x)
    s = r.scores.data
    picked = np.take_along_axis(s, r.expert_ids, axis=1)
    check(np.array_equal(r.expert_ids, np.argsort(-(s + b), axis=1, kind="stable")[:, :mcfg.top_k]),
          "selection uses score + bias (top-k of s + b)")
    check(np.allclose(r.gates.data, picked / picked.sum(axis=1, keepdims=True)),
          "gates use the unbiased sigmoid scores s, renormalised over the chosen experts")


# ---- 3. Expert choice ---------------------------------------------------------------------------

def part_expert_choice(args):
    section("3. Expert-choice routing: perfectly balanced, and not causal")
    T, E, c, n_embd = 16, 4, 2.0, 8
    ts.manual_seed(0)
    router = ExpertChoiceRouter(n_embd, E, capacity_factor=c)
    x = ts.Tensor(np.random.default_rng(0).standard_normal((T, n_embd)).astype(np.float32))
    r = router(x)
    cap = math.ceil(c * T / E)
    per_expert = np.bincount(r.expert_ids[r.expert_ids >= 0], minlength=E)
    per_token = (r.expert_ids >= 0).sum(axis=1)
    print(f"  T = {T} tokens, E = {E} experts, c = {c}: each expert takes its top "
          f"ceil(c T / E) = {cap} tokens")
    print(f"  tokens per expert: {per_expert.tolist()}")
    print(f"  experts per token: {per_token.tolist()}  (mean {per_token.mean():.1f} = c)")
    check(np.all(per_expert == cap), "every expert gets exactly its capacity: max/mean load = 1.00")
    check(per_token.sum() == E * cap, "the compute is fixed; tokens share it unevenly (0 to E experts)")
    one = router(x[:1])
    print(f"  one token alone (decoding): capacity ceil({c} * 1 / {E}) = 1, so it is taken by "
          f"experts {one.expert_ids[0].tolist()}")
    check(one.expert_ids.shape[1] == E, "decoding token by token, a token would get all E experts")

    # The leak: change the LAST byte of a sequence and look at the outputs of the earlier ones.
    tok = ByteTokenizer()
    text = tok.encode("def mean(xs):\n    return sum(xs) / len(xs)\n")[:32][None, :]   # (1, 32)
    n_try = 32 if args.quick else 256
    print(f"\n  a 1-layer MoE GPT (untrained) reads {tok.decode(text[0])!r};")
    print(f"  we put {n_try} different values in the last byte and compare the logits at the "
          f"31 earlier positions:")
    for kind in ("topk", "expert_choice"):
        ts.manual_seed(1)
        model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=32, n_expert=E, top_k=2,
                              d_expert=32, router=kind)).eval()
        with no_grad():
            base = model(text)[0].data[0, :-1]
            changed, worst = 0, 0.0
            for v in range(n_try):
                other = text.copy()
                other[0, -1] = v
                diff = float(np.abs(model(other)[0].data[0, :-1] - base).max())
                changed += diff > 1e-5           # more than float32 rounding (see the README)
                worst = max(worst, diff)
        print(f"    router {kind:<14} earlier logits changed for {changed:3d} of {n_try} values "
              f"of the last byte (largest change {worst:.1e})")
        if kind == "topk":
            check(worst < 1e-5, "token choice is causal: the future never changes the past "
                  "(beyond rounding)")
        else:
            check(changed > 0, "expert choice leaks: a later token changed an earlier token's output")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small models, few steps (the tests)")
    parser.add_argument("--out-dir", default="out/lesson08", help="where files would go (none yet)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per run "
                        "(default 600, quick 30)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.steps is None:
        args.steps = 30 if args.quick else 600
    args.max_bytes = 200_000 if args.quick else 2_000_000
    args.batch_size = 8 if args.quick else 16
    args.lr = 2e-3
    os.makedirs(args.out_dir, exist_ok=True)

    start = time.perf_counter()
    part_layouts(args)
    part_balancing(args)
    part_expert_choice(args)

    return summary(start)


if __name__ == "__main__":
    sys.exit(main())
