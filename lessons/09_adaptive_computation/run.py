"""Chapter 09: adaptive computation. tiny-moe against null experts, top-p routing, Mixture-of-Depths,
early exit and the preset tiny-adaptive, at equal steps; a budget sweep; the compute map.

    python lessons/09_adaptive_computation/run.py            # the whole chapter, 5-15 minutes
    python lessons/09_adaptive_computation/run.py --quick    # small models, seconds
    python lessons/09_adaptive_computation/run.py --out-dir somewhere/

Read lessons/09_adaptive_computation/README.md alongside; it explains tinysparse/adaptive/. Every
claim the script prints is checked, and it exits with status 1 if any check fails. Wall-clock
values carry their unit or are printed with lesson.measured(), so lessons/transcripts.py can
tell them from the results. The runs and their measurements are in runs.py, next to this file.
"""
import argparse
import inspect
import math
import os
import sys
import time

import colorsys
import numba
import numpy as np
from threadpoolctl import threadpool_limits

from tinysparse.adaptive.compute_map import compute_map
from tinysparse.bench.sampling import sampling_speed
from tinysparse.lesson import check, measured, section, summary
from tinysparse.training import bits_per_byte
from tinysparse.training.data import load_corpus

import runs


# ---- 1. Equal steps: every mechanism against tiny-moe -----------------------------------------------

def part_table(args, corpus, ids):
    c = runs.config(args.quick, {})
    section(f"1. tiny-moe and each mechanism: {args.steps} steps each, same batches, same seed")
    print(f"  {corpus!r}; batches of {args.batch} x {c.block_size}; {c.n_layer} blocks of width "
          f"{c.n_embd}, {c.n_expert} experts of width {c.d_expert}, top-{c.top_k}")
    print(f"  sampled: {ids.size} validation bytes decoded one at a time with the KV cache "
          f"(windows of {c.block_size})")
    results = {}
    for name, overrides in runs.RUNS:
        mcfg = runs.config(args.quick, overrides)
        model, rec = runs.train(name, mcfg, corpus, args)
        rec["sampled_ce"], rec["flops"], rec["trace"] = runs.sampled(model, ids)
        rec["model"] = model
        results[name] = rec
        measured(f"  trained {name}: {rec['seconds']:.1f} s")
    moe = results["tiny-moe"]["flops"]
    print(f"\n    {'run':<16}{'val CE':>8}{'sampled CE':>12}{'kFLOP/tok':>11}{'x tiny-moe':>12}"
          f"{'experts':>9}")
    for name, r in results.items():
        experts = "" if r["experts"] is None else f"{r['experts']:.2f}"
        print(f"    {name:<16}{r['ce']:8.3f}{r['sampled_ce']:12.3f}{r['flops'] / 1e3:11.1f}"
              f"{r['flops'] / moe:12.3f}{experts:>9}")
    print("    (val CE: eval-mode cross-entropy, nats, every layer; sampled CE and kFLOP/tok: the "
          "bytes\n     decoded with the KV cache, causal rules and exits on; kFLOP/tok: matmul "
          "FLOPs per token,\n     model.compute_per_token(); experts: real experts a token ran, "
          "mean over MoE layers, eval)")
    print(f"  preset tiny-adaptive's mechanisms: {runs.preset_mechanisms()}")
    for name, r in results.items():
        check(math.isfinite(r["ce"]) and r["ce"] < r["first"] - 0.5,
              f"{name}: val CE fell by more than 0.5 nats ({r['first']:.2f} -> {r['ce']:.2f})")
    dense = results["dense"]["flops"]
    check(abs(moe / dense - 1) < 0.05, f"tiny-moe costs what dense costs per token "
          f"({moe / dense:.3f}x: the router aside)")
    return results


# ---- 2. What each mechanism did -------------------------------------------------------------------

def part_mechanisms(args, results, corpus, ids):
    section("2. What each mechanism did with its budget")
    c = runs.config(args.quick, {})
    moe = results["tiny-moe"]
    null = results["null, tau 0.75"]
    print(f"  null experts (4 zero experts beside {c.n_expert}, MoE++ tau = 0.75, no budget): "
          f"{null['experts']:.2f} real experts per token of {c.top_k}, "
          f"{1 - null['experts'] / c.top_k:.1%} fewer expert FLOPs")
    topp = results["top-p 0.4"]
    print(f"  top-p 0.4 (max_k 4): {topp['experts']:.2f} experts per token; val CE "
          f"{topp['ce'] - moe['ce']:+.3f} nats against tiny-moe's top-2")

    mod = runs.mod_report(results["MoD 0.5"]["model"], corpus, c.block_size, args.batch,
                          args.val_batches, args.seed)
    rand = results["MoD 0.5 random"]
    print(f"  MoD 0.5: val CE {mod['ce_topk']:.3f} with top-k (training's rule, not causal), "
          f"{mod['ce_causal']:.3f} with the causal rule")
    print(f"    the causal rule sigmoid(r) > 0.5 agrees with top-k on {mod['accuracy']:.1%} of "
          f"tokens and processes {mod['processed']:.1%} of them")
    print(f"    random routing at the same capacity: val CE {rand['ce']:.3f} "
          f"({rand['ce'] - mod['ce_causal']:+.3f} against the learned router)")
    check(mod["accuracy"] > 0.5, "the causal predictor agrees with top-k more often than not")

    ex = results["early exit"]
    model = ex["model"]
    full_ce, full_flops, _ = runs.sampled(model, ids, threshold=None)
    layers = (ex["trace"]["work"] > 0).sum(axis=0)                    # (N,) layers each token ran
    hist = np.bincount(layers, minlength=c.n_layer + 1)[1:]
    print(f"  early exit, threshold {model.config.exit_threshold}: tokens by the number of "
          f"layers they ran (1..{c.n_layer}): {hist.tolist()}")
    print(f"    sampled CE {ex['sampled_ce']:.3f} at {ex['flops'] / 1e3:.1f} kFLOP/tok; without "
          f"exits {full_ce:.3f} at {full_flops / 1e3:.1f}")
    check(full_flops == results["tiny-moe"]["flops"], "without exits it costs what tiny-moe costs "
          "(the exit loss trains the shared head; it adds no weights)")
    return dict(mod=mod, exit_full=(full_ce, full_flops), exit_hist=hist)


# ---- 3. One budget knob per mechanism -------------------------------------------------------------

def part_sweep(args, results, corpus, ids):
    section("3. One budget knob per mechanism: sampled CE against FLOPs per token")
    moe = results["tiny-moe"]
    curves = {}
    for series, knob, points in runs.SWEEPS:
        curve = []
        for value, name, overrides in points:
            mcfg = runs.config(args.quick, overrides)
            same = [r for r in results.values() if r["model"].config == mcfg]   # trained in part 1
            if same:
                r = same[0]
            else:
                model, r = runs.train(name, mcfg, corpus, args)
                r["model"] = model
                r["sampled_ce"], r["flops"], _ = runs.sampled(model, ids)
                measured(f"  trained {name}: {r['seconds']:.1f} s")
            curve.append((value, r["flops"], r["sampled_ce"], r["experts"], r["train_experts"], r["ce"]))
        curves[series] = (knob, curve)
    ex = results["early exit"]["model"]
    curves["early exit"] = ("threshold", [
        (t, *reversed(runs.sampled(ex, ids, threshold=t)[:2]), None, None, None)
        for t in runs.EXIT_THRESHOLDS])
    print(f"\n    {'mechanism':<14}{'knob':<16}{'kFLOP/tok':>11}{'x tiny-moe':>12}{'sampled CE':>12}"
          f"{'val CE':>8}{'experts':>9}")
    print(f"    {'tiny-moe':<14}{'':<16}{moe['flops'] / 1e3:11.1f}{1:12.3f}{moe['sampled_ce']:12.3f}"
          f"{moe['ce']:8.3f}{moe['experts']:9.2f}")
    for series, (knob, curve) in curves.items():
        for value, flops, ce, experts, _, val in curve:
            e = "" if experts is None else f"{experts:.2f}"
            v = "" if val is None else f"{val:.3f}"
            print(f"    {series:<14}{f'{knob} {value}':<16}{flops / 1e3:11.1f}"
                  f"{flops / moe['flops']:12.3f}{ce:12.3f}{v:>8}{e:>9}")
    print("    (early exit: one trained model decoded at each threshold; its val CE runs every layer)")
    for value, _, _, _, train_experts, _ in curves["null experts"][1]:
        held = float(np.mean(train_experts[-max(1, args.steps // 10):]))
        print(f"  budget controller: target {value} real experts per token, held {held:.3f} "
              f"over the last tenth of training")
        if not args.quick:              # 30 steps are too few for the controller to settle
            check(abs(held - value) <= 0.1 * value, f"target {value}: held within 10%")
    flops = [f for _, f, *_ in curves["MoD"][1]]
    check(all(a <= b for a, b in zip(flops, flops[1:])),
          "MoD: a larger capacity costs more FLOPs per token")
    _plot(curves, moe, os.path.join(args.out_dir, "loss_vs_flops.png"))
    return curves


def _plot(curves, moe, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("  (matplotlib is not installed: no plot; pip install matplotlib)")
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for series, (knob, curve) in curves.items():
        xs, ys = [p[1] / 1e3 for p in curve], [p[2] for p in curve]
        ax.plot(xs, ys, "o-", label=f"{series} ({knob})")
        for value, x, y in zip([p[0] for p in curve], xs, ys):
            ax.annotate(f"{value}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.plot([moe["flops"] / 1e3], [moe["sampled_ce"]], "k*", markersize=12, label="tiny-moe")
    ax.set_xlabel("matmul kFLOP per token, sampled with the KV cache")
    ax.set_ylabel("sampled cross-entropy (nats)")
    ax.set_title("adaptive computation: loss against compute per token")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"  plot written to {path}")
    check(os.path.getsize(path) > 0, "the plot PNG is not empty")


# ---- 4. The compute map ---------------------------------------------------------------------------

def part_map(args, results):
    section("4. The compute map of a Python source file")
    model, dense = results["tiny-adaptive"]["model"], results["dense"]["model"]
    source = open(inspect.getsourcefile(colorsys), "rb").read()[:args.map_bytes]
    png = os.path.join(args.out_dir, "compute_map.png")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        png = None
    m = compute_map(model, source, png, dense=dense, title="colorsys.py")
    print(f"  tiny-adaptive on the first {m['tokens']} bytes of colorsys.py: mean "
          f"{m['mean_flops'] / 1e3:.1f} kFLOP per token (min {m['flops'].min() / 1e3:.1f}, "
          f"max {m['flops'].max() / 1e3:.1f})")
    print(f"  Spearman rho of FLOPs and the dense model's surprisal: {m['spearman']:.3f}")
    for name, (mean, n) in m["class_means"].items():
        print(f"    {name:<12}{n:>5} bytes  {mean / 1e3:8.1f} kFLOP per token")
    if png:
        print(f"  map written to {png}")
        check(os.path.getsize(png) > 0, "the compute map PNG is not empty")
    check(m["flops"].min() < m["flops"].max(), "tokens of one text took different compute")


# ---- 5. Sampling with and without the KV cache ------------------------------------------------------

def part_sampling(args, results):
    section("5. Sampling speed with and without the KV cache")
    n_new = results["dense"]["model"].config.block_size - 1
    print(f"  {n_new} new tokens from one, batch 1, median of {args.rounds} rounds (cached and "
          f"uncached take turns)")
    rows = [("dense", results["dense"]["model"], None), ("tiny-moe", results["tiny-moe"]["model"], None),
            ("tiny-adaptive", results["tiny-adaptive"]["model"], None),
            ("early exit", results["early exit"]["model"], None),
            ("early exit", results["early exit"]["model"], "exits")]
    for name, model, exits in rows:
        keep = model.config.exit_threshold
        if not exits:
            model.config.exit_threshold = None
        try:
            times, same = sampling_speed(model, n_new, args.rounds)
        finally:
            model.config.exit_threshold = keep
        rate = {k: n_new / float(np.median(v)) for k, v in times.items()}
        label = f"{name}{', exits on' if exits else ''}"
        measured(f"    {label:<26} cached {rate['cached']:7.0f} tok/s   uncached "
                 f"{rate['uncached']:7.0f} tok/s   ({rate['cached'] / rate['uncached']:.2f}x)")
        if not exits:
            check(same, f"{name}: cached sampling returns the uncached tokens, seed for seed")
        check(rate["cached"] > rate["uncached"], f"{label}: the cache samples faster", timed=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small models, few steps (the tests)")
    parser.add_argument("--out-dir", default="out/lesson09", help="where the plots go")
    parser.add_argument("--steps", type=int, default=None, help="training steps per run "
                        "(default 250, quick 30)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.steps is None:
        args.steps = 30 if args.quick else 250
    args.batch, args.lr = 8, 2e-3
    args.val_batches = 2 if args.quick else 10
    args.map_bytes = 96 if args.quick else 1024
    args.rounds = 1 if args.quick else 3
    os.makedirs(args.out_dir, exist_ok=True)

    start = time.perf_counter()
    c = runs.config(args.quick, {})
    corpus = load_corpus("stdlib", c.block_size, 200_000 if args.quick else 2_000_000, seed=args.seed)
    ids = np.asarray(corpus.val[:(2 if args.quick else 4) * c.block_size], dtype=np.int64)
    # one thread for NumPy's BLAS and Numba: on a shared 2-core machine two threads per process
    # fight the other processes' (measured: 7x slower steps); the numbers do not depend on it
    threadpool_limits(1)
    numba.set_num_threads(1)
    results = part_table(args, corpus, ids)
    part_mechanisms(args, results, corpus, ids)
    part_sweep(args, results, corpus, ids)
    part_map(args, results)
    part_sampling(args, results)
    print(f"\n  (bits/byte = nats / ln 2: tiny-moe's val CE is {bits_per_byte(results['tiny-moe']['ce']):.3f} bits/byte)")
    return summary(start)


if __name__ == "__main__":
    sys.exit(main())
