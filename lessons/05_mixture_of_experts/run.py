"""Chapter 05: Mixture of Experts. Routing by hand, the balance loss, dispatch, tiny vs tiny-moe.

    python lessons/05_mixture_of_experts/run.py            # the whole chapter, several minutes
    python lessons/05_mixture_of_experts/run.py --quick    # small models, under a minute
    python lessons/05_mixture_of_experts/run.py --out-dir somewhere/

Read lessons/05_mixture_of_experts/README.md alongside; it explains tinysparse/moe/. Every claim
the script prints is checked, and it exits with status 1 if any check fails. Training shows a
progress bar on a terminal (stderr); wall-clock values carry their unit or are printed with
lesson.measured(), so lessons/transcripts.py can tell them from the results.
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
from tinysparse.training.data import BatchSampler, get_batch, load_corpus
from tinysparse.gpt import GPT, GPTConfig
from tinysparse.lesson import check, measured, section, summary
from tinysparse.moe import MoE, NumpyDispatch, capacity
from tinysparse.moe.router import RoutingResult, TopKRouter
from tinysparse.engine.tensor import no_grad
from tinysparse.training import PRESETS, bits_per_byte


def _indent(a):
    return "    " + str(np.asarray(a)).replace("\n", "\n    ")


# ---- 1. Routing six tokens by hand ---------------------------------------------------------------

def part_routing():
    section("1. A router picks 2 of 4 experts for each of 6 tokens")
    ts.manual_seed(0)
    router = TopKRouter(n_embd=8, n_expert=4, top_k=2)
    x = ts.Tensor(np.random.default_rng(0).standard_normal((6, 8)).astype(np.float32))
    r = router(x)
    np.set_printoptions(precision=3, suppress=True)
    print(f"  router probabilities p = softmax(x W_r) (6 tokens x 4 experts):\n{_indent(r.probs.data)}")
    print(f"  chosen experts (the top-2 p of each token):\n{_indent(r.expert_ids)}")
    print(f"  gates (the two chosen p, renormalised to sum to 1):\n{_indent(r.gates.data)}")
    top2 = np.argsort(-r.probs.data, axis=1, kind="stable")[:, :2]
    check(np.array_equal(r.expert_ids, top2), "each token's experts are its two largest p")
    chosen = np.take_along_axis(r.probs.data, r.expert_ids, axis=1)
    check(np.allclose(r.gates.data, chosen / chosen.sum(axis=1, keepdims=True)),
          "gate = p_e / (sum of the token's chosen p), so each token's gates sum to 1")
    return r


# ---- 2. The dispatch plan ------------------------------------------------------------------------

def part_plan(r):
    section("2. The dispatch plan: stable sort, histogram, exclusive scan, rank")
    T, k = r.expert_ids.shape
    flat = r.expert_ids.reshape(-1)
    plan = NumpyDispatch().plan(r.expert_ids, 4, None)
    order = np.argsort(flat, kind="stable")
    print(f"  slot s = t*k + j:                   {list(range(T * k))}")
    print(f"  expert of each slot:                {flat.tolist()}")
    print(f"  1. slots stably sorted by expert:   {order.tolist()}")
    print(f"     their experts:                   {flat[order].tolist()}")
    print(f"  2. tokens per expert (histogram):   {plan.counts.tolist()}")
    print(f"     segment offsets (exclusive scan): {plan.offsets.tolist()}"
          f"  -> expert e owns buffer rows [off[e], off[e+1])")
    print(f"  3. buffer row i holds token:        {plan.token_index.tolist()}  (= sorted slot // k)")
    print(f"  4. rank of each slot in its expert's queue (T x k):\n{_indent(plan.rank)}")
    check(np.array_equal(plan.token_index, order // k),
          "dropless: the buffer is the stably sorted slots, one row per (token, expert)")
    check(plan.offsets[-1] == T * k and np.array_equal(np.diff(plan.offsets), plan.counts),
          f"{T} tokens x {k} slots = {T * k} buffer rows; segment sizes = counts")
    sorted_rank = np.arange(T * k) - plan.offsets[flat[order]]
    check(np.array_equal(plan.rank.reshape(-1)[order], sorted_rank),
          "rank = position in sorted order - offset of the expert's segment")

    C = capacity(0.75, T * k, 4)
    capped = NumpyDispatch().plan(r.expert_ids, 4, C)
    print(f"\n  with capacity factor 0.75: C = ceil(0.75 * {T * k} / 4) = {C} rows per expert")
    print(f"  kept per expert {np.diff(capped.offsets).tolist()} of {capped.counts.tolist()}, "
          f"dropped {capped.n_dropped} slot(s); buffer row of each slot (-1 = dropped):\n"
          f"{_indent(capped.slot_position)}")
    check(capped.n_dropped == int(np.maximum(plan.counts - C, 0).sum()),
          "exactly the slots ranked C or later are dropped")
    check(np.array_equal(capped.slot_position < 0, capped.rank >= C),
          "a slot is dropped if and only if its rank is >= C (the latest tokens lose)")


# ---- 3. The load-balance loss ---------------------------------------------------------------------

def part_balance_loss():
    section("3. The Switch load-balance loss: alpha * E * sum_e f_e P_e")
    E, T, alpha = 4, 8, 0.01
    router = TopKRouter(n_embd=2, n_expert=E, top_k=1)

    def routed(ids, probs, grad=False):
        p = ts.Tensor(np.asarray(probs, np.float64), requires_grad=grad)
        return RoutingResult(np.asarray(ids)[:, None], None, p, None, None), p

    def loss(ids, probs):
        return alpha * float(router.load_balance_loss(routed(ids, probs)[0]).data)

    uniform = loss(np.arange(T) % E, np.full((T, E), 1 / E))
    collapsed = loss(np.zeros(T, int), np.tile([0.97, 0.01, 0.01, 0.01], (T, 1)))
    print(f"  alpha = {alpha}, E = {E}, T = {T} tokens, top-1")
    print(f"  perfectly uniform routing (f = P = 1/E):  {uniform:.4f}")
    print(f"  every token on expert 0 (p_0 = 0.97):     {collapsed:.4f}   (limit alpha * E = {alpha * E})")
    check(abs(uniform - alpha) < 1e-15, "uniform routing gives exactly alpha")
    check(collapsed > 3.5 * uniform, "a collapsed router pays almost E times more")

    # Where does the gradient go? f is a count (a constant); P_e = mean_t p_te carries it:
    # dL/dp_te = alpha * E * f_e / T, the same for every token, largest for the busiest expert.
    ids = np.array([0, 0, 0, 0, 0, 1, 1, 2])                # 5 tokens on expert 0, none on 3
    probs = np.tile([0.55, 0.2, 0.15, 0.1], (T, 1))
    r, p = routed(ids, probs, grad=True)
    (router.load_balance_loss(r) * alpha).backward()
    f = np.bincount(ids, minlength=E) / T
    print(f"  skewed routing: f = {f.tolist()}; dL/dp (one token's row) = {p.grad[0].round(6).tolist()}")
    check(np.allclose(p.grad, alpha * E * f / T), "dL/dp_te = alpha * E * f_e / T: proportional to load")
    print("  the softmax turns that into logit gradients: busy experts are pushed down, idle ones up")

    big = ts.Tensor(np.array([[10.0, 0.0, 0.0, 0.0]]))
    small = ts.Tensor(np.array([[1.0, 0.0, 0.0, 0.0]]))
    z = [float(router.z_loss(RoutingResult(None, None, None, None, lg)).data) for lg in (small, big)]
    print(f"  router z-loss (logsumexp of the logits)^2: {z[0]:.2f} for logits (1,0,0,0), "
          f"{z[1]:.1f} for (10,0,0,0)")


# ---- 4. Dispatch = a loop over tokens -------------------------------------------------------------

def part_dispatch_equals_loop():
    section("4. Sort-based dispatch computes what a loop over tokens computes")
    ts.manual_seed(1)
    layer = MoE(16, n_expert=4, top_k=2, d_expert=12, dispatch_backend="numpy")
    x = ts.Tensor(np.random.default_rng(1).standard_normal((1, 10, 16)).astype(np.float32))
    out = layer(x).data[0]
    r = layer.router(x.reshape(-1, 16))
    ex = layer.experts
    loop = np.zeros_like(out)
    for t in range(10):                      # the naive way: every token, every chosen expert
        for j, e in enumerate(r.expert_ids[t]):
            h = x.data[0, t] @ ex.w1.data[e] + ex.b1.data[e]
            h = F.gelu(h).data                # the library's GELU, on a plain array
            loop[t] += r.gates.data[t, j] * (h @ ex.w2.data[e] + ex.b2.data[e])
    print(f"  largest difference over 10 tokens: {np.abs(out - loop).max():.2e}")
    check(np.allclose(out, loop, atol=1e-5), "the MoE layer equals the per-token loop")


# ---- 5. tiny vs tiny-moe at equal steps -------------------------------------------------------------

BATCH, LR, MIN_LR = 16, 2e-3, 1e-4


def configs(quick):
    dense, moe = dict(PRESETS["tiny"]["model"]), dict(PRESETS["tiny-moe"]["model"])
    if quick:                                # the same recipe, shrunk: 1 block, width 32
        shrink = dict(n_layer=1, n_head=2, n_embd=32, block_size=32)
        dense.update(shrink)
        moe.update(shrink, n_expert=8, d_expert=64)
    return GPTConfig(**dense), GPTConfig(**moe)


def val_loss(model, corpus, block_size, n_batches, seed):
    """Mean validation cross-entropy and MoE auxiliary loss over fixed batches (the batches
    training/evaluation.py's evaluate uses). In eval mode the loss GPT.forward returns is the
    cross-entropy alone; the balance and z-losses of its MoE layers join it only in training.
    Each MoE layer still computes them (layer.aux_loss), and they are summed here to show what
    training adds on the same text."""
    rng = np.random.default_rng([seed, 7919, 1])
    ce, aux = [], []
    model.eval()
    with no_grad():
        for _ in range(n_batches):
            x, y = get_batch(corpus.val, BATCH, block_size, rng)
            _, loss = model(x, y)                      # eval mode: the cross-entropy alone
            ce.append(float(loss.item()))
            aux.append(sum(float(m.aux_loss.item()) for m in model.moe_layers()
                           if m.aux_loss is not None))
    model.train()
    return float(np.mean(ce)), float(np.mean(aux))


def train_model(name, mcfg, corpus, args):
    """Chapter 04's loop (AdamW, warm-up + cosine, clipping) on the BatchSampler's batches:
    the same seed gives both models the same batches, in the same order. A progress bar on
    stderr while it runs (none when stderr is not a terminal: disable=None)."""
    ts.manual_seed(args.seed)
    model = GPT(mcfg)
    opt = optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.95), weight_decay=0.1)
    sampler = BatchSampler(corpus, BATCH, mcfg.block_size, seed=args.seed)
    n_val, every = (4 if args.quick else 20), max(1, args.steps // 4)
    history = [(0, *val_loss(model, corpus, mcfg.block_size, n_val, args.seed), None)]
    seconds, loads = 0.0, []
    bar = tqdm(range(args.steps), desc=f"  {name}", unit="step", leave=False, disable=None,
               dynamic_ncols=True)
    for step in bar:
        t0 = time.perf_counter()
        x, y = sampler.train_batch()
        _, loss = model(x, y)                   # cross-entropy + the MoE layers' aux losses
        opt.zero_grad()
        loss.backward()
        optim.clip_grad_norm(model.parameters(), 1.0)
        opt.lr = optim.cosine_lr(step, LR, max(1, args.steps // 20), args.steps, MIN_LR)
        opt.step()
        seconds += time.perf_counter() - t0
        moe = model.moe_stats()                 # None for the dense model
        loads.append(moe["max_over_mean_load"] if moe else math.nan)
        if (step + 1) % every == 0 or step + 1 == args.steps:
            # the load column: mean over the training steps since the last evaluation
            load = float(np.mean(loads[-(step + 1 - history[-1][0]):]))
            history.append((step + 1, *val_loss(model, corpus, mcfg.block_size, n_val, args.seed),
                            load))
            bar.set_postfix(val_ce=f"{history[-1][1]:.3f}")
    bar.close()
    return model, history, seconds


def part_training(args):
    dense_cfg, moe_cfg = configs(args.quick)
    section(f"5. tiny vs tiny-moe: {args.steps} steps each, same batches, same seed")
    corpus = load_corpus("stdlib", dense_cfg.block_size, args.max_bytes, seed=args.seed)
    print(f"  {corpus!r}, batches of {BATCH} x {dense_cfg.block_size} tokens, lr {LR} -> {MIN_LR}")
    results = {}
    for name, mcfg in (("tiny", dense_cfg), ("tiny-moe", moe_cfg)):
        model, history, seconds = train_model(name, mcfg, corpus, args)
        results[name] = dict(model=model, history=history, ms=1e3 * seconds / args.steps,
                             flops=model.flops_per_token(), params=model.num_parameters(),
                             active=model.num_active_parameters())
        print(f"  trained {name}: {seconds:.1f} s")

    print(f"\n  {'':<10}{'params':>9}{'active':>9}{'MFLOP/tok':>11}{'time/step':>11}"
          f"{'val CE':>8}{'bits/byte':>11}{'+ aux':>8}")
    for name, res in results.items():
        ce, aux = res["history"][-1][1:3]
        print(f"  {name:<10}{res['params'] / 1e6:8.2f}M{res['active'] / 1e6:8.2f}M"
              f"{res['flops'] / 1e6:11.2f}{res['ms']:8.1f} ms{ce:8.3f}{bits_per_byte(ce):11.3f}"
              f"{aux:8.3f}")
    print("  (MFLOP/tok: training, 6 per active parameter + attention; time/step: wall clock, "
          "mean over the\n   steps; val CE: validation cross-entropy, nats; + aux: the balance "
          "and z-losses the MoE\n   would add to its loss on the same batches in training, not "
          "part of CE)")
    d, m = results["tiny"], results["tiny-moe"]
    print("\n  val cross-entropy (nats) during training:")
    print("    step      " + "".join(f"{h[0]:>8}" for h in d["history"]))
    for name, res in results.items():
        print(f"    {name:<10}" + "".join(f"{h[1]:8.3f}" for h in res["history"]))
    print(f"    {'moe load':<10}{'':>8}" + "".join(f"{h[3]:8.2f}" for h in m["history"][1:]))
    print("    (moe load: tiny-moe's max/mean tokens per expert in training, mean over layers and "
          "over the\n     steps since the column before; 1.0 is perfect balance)")
    gap = m["history"][-1][1] - d["history"][-1][1]
    print(f"\n  tiny-moe - tiny at step {args.steps}: {gap:+.3f} nats ({bits_per_byte(gap):+.3f} "
          f"bits/byte), with {m['params'] / d['params']:.1f}x the parameters and "
          f"{m['flops'] / d['flops']:.3f}x the FLOPs per token")
    measured(f"  tiny-moe's step took {m['ms'] / d['ms']:.2f}x tiny's wall time")
    check(abs(m["flops"] / d["flops"] - 1) < 0.03, "equal active FLOPs per token (router aside)")
    for name, res in results.items():
        first, last = res["history"][0][1], res["history"][-1][1]
        check(math.isfinite(last), f"{name}: the final val loss is finite")
        check(last < first - 0.5, f"{name}: validation cross-entropy fell by more than 0.5 nats")
    return m["model"], moe_cfg, corpus


# ---- 6. Where the tokens went -------------------------------------------------------------------------

def part_expert_load(args, model, moe_cfg, corpus):
    section("6. Tokens per expert, per layer, on validation text")
    x, y = get_batch(corpus.val, 32, moe_cfg.block_size, np.random.default_rng(0))
    model.eval()
    with no_grad():
        model(x, y)
    layers = model.moe_layers()
    load = np.stack([layer.stats["tokens_per_expert"] for layer in layers])   # (layers, experts)
    slots = x.size * moe_cfg.top_k
    print(f"  {x.shape[0]} x {x.shape[1]} validation tokens, top-{moe_cfg.top_k}: {slots} slots "
          f"per layer, {slots / moe_cfg.n_expert:.0f} per expert if perfectly balanced")
    print("    expert  " + "".join(f"{e:>5}" for e in range(moe_cfg.n_expert))
          + "   max/mean  dropped  entropy")
    for i, (row, layer) in enumerate(zip(load, layers)):
        s = layer.stats
        print(f"    layer {i} " + "".join(f"{v:5d}" for v in row)
              + f"   {s['max_over_mean_load']:8.2f}  {s['dropped_fraction']:7.1%}"
              f"  {s['router_entropy']:7.2f}")
    print(f"  (entropy: mean over tokens of the router's distribution, nats; uniform "
          f"= ln {moe_cfg.n_expert} = {math.log(moe_cfg.n_expert):.2f})")
    check(np.array_equal(load.sum(axis=1), np.full(len(layers), slots)),
          "every layer routes all its token-slots")
    check(all(layer.stats["dropped_fraction"] == 0.0 for layer in layers),
          "dropless routing (no capacity factor) drops nothing")
    idle = int((load == 0).sum())
    print(f"  experts that got no token: {idle} of {load.size}")
    _heatmap(load / load.sum(axis=1, keepdims=True), os.path.join(args.out_dir, "expert_load.png"))


def _heatmap(share, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("  (matplotlib is not installed: no heatmap; pip install matplotlib)")
        return
    fig, ax = plt.subplots(figsize=(1.5 + 0.45 * share.shape[1], 1.2 + 0.5 * share.shape[0]))
    im = ax.imshow(share, cmap="viridis", vmin=0, aspect="auto")
    ax.set_xlabel("expert")
    ax.set_ylabel("layer")
    ax.set_xticks(range(share.shape[1]))
    ax.set_yticks(range(share.shape[0]))
    ax.set_title(f"share of token-slots per expert (uniform = {1 / share.shape[1]:.3f})")
    fig.colorbar(im, ax=ax, fraction=0.03)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"  heatmap written to {path}")
    check(os.path.getsize(path) > 0, "the heatmap PNG is not empty")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small models, few steps (the tests)")
    parser.add_argument("--out-dir", default="out/lesson05", help="where the heatmap goes")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default 800, quick 30)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.steps is None:
        args.steps = 30 if args.quick else 800
    args.max_bytes = 200_000 if args.quick else 2_000_000
    os.makedirs(args.out_dir, exist_ok=True)

    start = time.perf_counter()
    r = part_routing()
    part_plan(r)
    part_balance_loss()
    part_dispatch_equals_loop()
    model, moe_cfg, corpus = part_training(args)
    part_expert_load(args, model, moe_cfg, corpus)

    return summary(start)


if __name__ == "__main__":
    sys.exit(main())
