"""Chapter 10: the 100x claim, measured. Dense models of four widths draw a loss-vs-training-FLOPs
frontier; tiny-moe, fine-grained + shared experts and tiny-adaptive are set against it at equal
loss: training leverage, FLOPs, bytes and modelled energy per token, then published results and
a verdict on each claim.

    python lessons/10_efficiency_ledger/run.py            # the whole chapter, ~15-30 minutes
    python lessons/10_efficiency_ledger/run.py --quick    # small models, under a minute
    python lessons/10_efficiency_ledger/run.py --out-dir somewhere/

Read lessons/10_efficiency_ledger/README.md alongside. Each run's results are cached as JSON in
its folder under --out-dir: a second run with the same settings redraws the tables and plots
without training. Wall-clock values carry their unit or are printed with lesson.measured().
"""
import argparse
import os
import sys
import time

import numba
import numpy as np
from threadpoolctl import threadpool_limits

from tinysparse.engine.tensor import no_grad
from tinysparse.ledger.leverage import at_loss, dense_frontier, training_leverage
from tinysparse.ledger.measure import EnergyMeter
from tinysparse.lesson import check, measured, section, summary
from tinysparse.training.data import load_corpus
from tinysparse.training.sampling import load_run

import plots
import published as pub
import runs
import verdict

BATCHES = (1, 8, 64, 512)


def _si(v, unit=""):
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"), (1, ""),
                          (1e-3, "m"), (1e-6, "u"), (1e-9, "n")):
        if abs(v) >= scale:
            return f"{v / scale:.3g} {prefix}{unit}".rstrip()
    return f"{v:.3g} {unit}".rstrip()


# ---- 1. The runs -----------------------------------------------------------------------------------

def part_runs(args, corpus):
    section(f"1. The runs: {args.steps} steps each, same batches, same seed, counted FLOPs")
    tc = runs.train_config(args.quick, args.steps, args.out_dir, args.seed)
    print(f"  {corpus!r}; batches of {tc.batch_size} x {runs.base(args.quick)['block_size']}, "
          f"AdamW, warm-up + cosine from {tc.lr:g}; the library's loop (tinysparse/training)")
    results = []
    for name, kind, preset, mcfg in runs.models(args.quick):
        out = os.path.join(args.out_dir, runs.folder_name(name))
        tcfg = runs.train_config(args.quick, args.steps, out, args.seed)
        r = runs.run(name, kind, preset, mcfg, tcfg, corpus.val, BATCHES)
        results.append(r)
        if r["cached"]:                # stderr: a cached run prints the same transcript
            print(f"  ({name}: loaded from {out}/result.json, not trained again)", file=sys.stderr)
        measured(f"  {name}: trained in {r['seconds']:.1f} s")
    print(f"\n    {'model':<15}{'params':>9}{'active':>9}{'train FLOPs':>13}{'first loss':>11}"
          f"{'val loss':>10}")
    for r in results:
        c = r["costs"]
        print(f"    {r['name']:<15}{c['params'] / 1e6:8.3f}M{c['active_params'] / 1e6:8.3f}M"
              f"{_si(r['train_flops']):>13}{r['curve'][0][2]:11.3f}{r['val_loss']:10.4f}")
    print("    (params: all weights; active: those a token uses; train FLOPs: the ledger's count "
          "of every\n     step, forward and backward, matmul and the rest; val loss: nats per "
          "byte, the loop's last evaluation)")
    for r in results:
        check(r["val_loss"] < r["curve"][0][2] - 0.5,
              f"{r['name']}: the validation loss fell by more than 0.5 nats")
    return results


# ---- 2. Training leverage at equal loss ---------------------------------------------------------------

def part_leverage(results):
    section("2. Training leverage at equal loss (log-log interpolation on the dense frontier)")
    dense = [r for r in results if r["kind"] == "dense"]
    frontier = dense_frontier([(r["train_flops"], r["val_loss"]) for r in dense])
    off = [r["name"] for r in dense if (r["train_flops"], r["val_loss"]) not in frontier]
    print("  dense frontier (final points): " + ", ".join(
        f"{_si(c)} FLOPs -> {l:.4f}" for c, l in frontier))
    if off:
        print(f"  off the frontier (a larger model that did not do better): {', '.join(off)}")
    through = [at_loss([l for _, l in frontier], [c for c, _ in frontier], l)[0] for _, l in frontier]
    check(all(abs(t / c - 1) < 1e-9 for t, (c, _) in zip(through, frontier)),
          "the interpolated frontier passes through its own points")
    leverages = {}
    print(f"\n    {'sparse model':<15}{'val loss':>9}{'its FLOPs':>11}{'dense FLOPs':>13}"
          f"{'leverage':>10}{'saving':>8}  how")
    for r in results:
        if r["kind"] != "sparse":
            continue
        lev = training_leverage(frontier, r["val_loss"], r["train_flops"])
        leverages[r["name"]] = lev
        dense_f = "-" if lev.dense_flops is None else _si(lev.dense_flops)
        lv = "-" if lev.leverage is None else f"{lev.leverage:.2f}x"
        sv = "-" if lev.saving is None else f"{lev.saving:.0%}"
        print(f"    {r['name']:<15}{r['val_loss']:9.4f}{_si(r['train_flops']):>11}{dense_f:>13}"
              f"{lv:>10}{sv:>8}  {lev.kind}")
    print("    (dense FLOPs: what the dense frontier needs for the same loss; leverage = dense "
          "FLOPs / its FLOPs;\n     saving = 1 - 1/leverage; extrapolated: the loss lies outside "
          "the dense losses, read off the nearest segment)")
    return frontier, leverages


# ---- 3. Inference at equal loss -------------------------------------------------------------------------

def equal_loss_dense(results, loss):
    """{figure: (value, kind)} of the dense model of `loss`, each figure interpolated (log-log)
    from the dense models' own costs."""
    dense = [r for r in results if r["kind"] == "dense"]
    losses = [r["val_loss"] for r in dense]

    def at(values):
        return at_loss(losses, values, loss)
    out = {"flops": at([r["costs"]["flops"] for r in dense]),
           "total_bytes": at([r["costs"]["total_bytes"] for r in dense])}
    for B in BATCHES:
        out[("bytes", B)] = at([r["costs"]["weight_bytes"][B] for r in dense])
        for i, end in enumerate(("low", "high")):
            out[("energy", B, end)] = at([r["costs"]["energy"][B][i] for r in dense])
    return out


def part_inference(results, leverages, quick):
    section("3. Inference per token at equal loss: FLOPs, weight bytes, modelled energy")
    print(f"    {'model':<15}{'FLOP/tok':>10}{'B/tok @1':>10}{'B/tok @64':>10}{'experts @1/@64':>16}"
          f"{'energy @1 (modelled)':>22}{'energy @64':>20}")
    for r in results:
        c = r["costs"]
        ex = c["experts_read"]
        e1, e64 = c["energy"][1], c["energy"][64]
        experts = f"{ex[1]:.2f}/{ex[64]:.2f}" if ex else "-"
        print(f"    {r['name']:<15}{_si(c['flops']):>10}{_si(c['weight_bytes'][1], 'B'):>10}"
              f"{_si(c['weight_bytes'][64], 'B'):>10}{experts:>16}"
              f"{_si(e1[0], 'J') + ' - ' + _si(e1[1], 'J'):>22}"
              f"{_si(e64[0], 'J') + ' - ' + _si(e64[1], 'J'):>20}")
    print("    (FLOP/tok: counted, eval-mode forward; B/tok @B: weight bytes read per token when "
          "B tokens are\n     decoded together, experts from measured routing; energy: "
          "horowitz-45nm, FLOPs at fp32 + those bytes\n     from DRAM, MODELLED, activations "
          "left out; experts: distinct experts read per MoE layer)")
    print("\n  against the dense model of the same loss (its figures interpolated log-log "
          "between the dense runs):")
    ratios = {}
    for r in results:
        if r["kind"] != "sparse":
            continue
        d, c = equal_loss_dense(results, r["val_loss"]), r["costs"]
        kind = d["flops"][1]
        if d["flops"][0] is None:
            print(f"    {r['name']}: its loss {r['val_loss']:.4f} is {kind} on the dense models")
            continue
        e = {B: (d[("energy", B, "low")][0] / c["energy"][B][0] +
                 d[("energy", B, "high")][0] / c["energy"][B][1]) / 2 for B in (1, 64)}
        ratios[r["name"]] = dict(flops=d["flops"][0] / c["flops"],
                                 bytes1=d[("bytes", 1)][0] / c["weight_bytes"][1],
                                 bytes64=d[("bytes", 64)][0] / c["weight_bytes"][64],
                                 energy1=e[1], energy64=e[64],
                                 stored=c["total_bytes"] / d["total_bytes"][0], kind=kind)
        q = ratios[r["name"]]
        print(f"    {r['name']:<15} dense FLOP/tok {_si(d['flops'][0])} ({kind}): "
              f"{q['flops']:.2f}x fewer; weight bytes {q['bytes1']:.2f}x fewer at batch 1, "
              f"{q['bytes64']:.2f}x at 64;\n    {'':<15} energy (modelled) {q['energy1']:.2f}x "
              f"less at batch 1, {q['energy64']:.2f}x at 64; stores {q['stored']:.2f}x the bytes")
    print("    (above 1: the sparse model is cheaper; 'stores': its total parameter bytes over the "
          "dense model's)")
    moe = next(r for r in results if r["name"] == "tiny-moe")["costs"]
    same = next(r for r in results if r["name"] == f"dense C={runs.sparse_width(quick)}")["costs"]
    check(abs(moe["flops"] / same["flops"] - 1) < 0.1, f"tiny-moe's FLOPs per token are within 10% "
          f"of the dense model of its width ({moe['flops'] / same['flops']:.3f}x: the router aside)")
    check(moe["experts_read"][1] <= moe["experts_read"][64],
          "a batch of 64 tokens reads at least as many experts as a single token")
    return ratios


def part_measured(results, corpus, out_dir):
    section("4. Measured energy (a hardware counter, where this machine has one)")
    meter_line = None
    for r in results:
        if r["kind"] == "sparse" or r["name"] == results[0]["name"]:
            model, _, _ = load_run(os.path.join(out_dir, runs.folder_name(r["name"])))
            T = model.config.block_size
            x = np.asarray(corpus.val[:8 * T], dtype=np.int64).reshape(8, T)
            meter = EnergyMeter()
            with no_grad(), meter:
                model(x)
            if meter.joules is None:
                meter_line = meter.why
                break
            measured(f"  {r['name']}: {meter.joules / x.size * 1e6:.2f} uJ per token, MEASURED "
                     f"({meter.source}; the whole device, idle power included)")
    if meter_line:
        print(f"  {meter_line}: every energy figure in this chapter is modelled")


# ---- 5. Plots ------------------------------------------------------------------------------------------

def batch_curves(results, best):
    """Cost per token against batch for the dense models and the best sparse one."""
    pick = [r for r in results if r["kind"] == "dense" or r["name"] == best]
    return {r["name"]: {"batches": list(BATCHES),
                        "flops": [r["costs"]["flops"]] * len(BATCHES),
                        "bytes": [r["costs"]["weight_bytes"][B] for B in BATCHES],
                        "energy": [tuple(r["costs"]["energy"][B]) for B in BATCHES]}
            for r in pick}


def part_plots(args, results, frontier, leverages, best, factor_rows):
    section("5. Plots")
    paths = [plots.loss_vs_training_flops(results, frontier, leverages,
                                          os.path.join(args.out_dir, "loss_vs_training_flops.png")),
             plots.cost_vs_batch(batch_curves(results, best),
                                 os.path.join(args.out_dir, "cost_vs_batch.png")),
             plots.claim_decomposed(factor_rows, pub.PATTERSON_COMBINED,
                                    os.path.join(args.out_dir, "claim_decomposed.png"))]
    if paths[0] is None:
        print("  matplotlib is not installed (pip install -e '.[plot]'): the three plots were "
              "skipped; every figure is printed above and below")
        return
    for path in paths:
        print(f"  plot written to {path}")
        check(os.path.getsize(path) > 0, f"{os.path.basename(path)} is not empty")


# ---- 6. Beyond tiny scale ------------------------------------------------------------------------------

def part_beyond(best, costs, factor_rows):
    section("6. Beyond tiny scale: EXTRAPOLATION and PUBLISHED results (not measured here)")
    print("  published scaling laws for MoE (what was found of each):")
    for law in pub.SCALING_LAWS:
        print(f"    {law['law']}\n      form: {law['form']}")
        print(f"      coefficients: {law['coefficients'] or 'not found'}\n      note: {law['note']}")
    print("  => no projection to 1B-1T parameters is computed: no law above comes with "
          "coefficients\n     that could be used as found. What the laws' authors report in "
          "words: the MoE advantage\n     grows with scale (Krajewski et al. 2024, abstract).")
    print("\n  published measurements, quoted:")
    for r in pub.RESULTS:
        print(f"    {r['work']}: {r['figure']} [{r['source']}]")
    print("\n  the claim decomposed (energy factors; the plot claim_decomposed.png):")
    for label, value, note in factor_rows:
        v = "-" if value is None else f"{value:.2f}x"
        print(f"    {label.replace(chr(10), ' '):<44}{v:>9}  {note}")
    print(f"    (Patterson et al. 2022: up to {pub.PATTERSON_COMBINED:.0f}x training energy from "
          f"the four practices combined)")
    print(f"\n  memory: what has to be stored (total parameters), against a "
          f"{pub.CONSUMER_GPU_BYTES / 1e9:.0f} GB consumer card and {pub.H100_BYTES / 1e9:.0f} GB "
          f"H100s:")
    print(f"    {'model':<18}{'precision':>10}{'GB':>9}{'fits 24 GB':>12}{'H100s':>7}"
          f"{'tok/s bound, offloaded':>24}")
    for name, label, gb, fits, h100, bound in verdict.memory_rows():
        b = "-" if bound is None else f"{bound:.1f}"
        print(f"    {name:<18}{label:>10}{gb:9.0f}{'yes' if fits else 'no':>12}{h100:7.0f}{b:>24}")
    print(f"    (tok/s bound: PCIe 4.0 x16, {pub.PCIE4_X16 / 1e9:.1f} GB/s one way, divided by the "
          f"active weights' bytes,\n     the most a decoder can do at batch 1 when every token's "
          f"experts are fetched from host memory)")
    print(f"  this chapter's {best}: {costs['total_bytes'] / 1e6:.2f} MB of float32 weights, of "
          f"which a token uses {costs['active_params'] * 4 / 1e6:.2f} MB")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small models, few steps (the tests)")
    parser.add_argument("--out-dir", default="out/lesson10", help="run folders, JSON and plots")
    parser.add_argument("--steps", type=int, default=None, help="training steps per run "
                        "(default 1000, quick 40)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.steps is None:
        args.steps = 40 if args.quick else 1000
    os.makedirs(args.out_dir, exist_ok=True)
    start = time.perf_counter()
    # one thread for NumPy's BLAS and Numba: same numbers on every machine, and on a shared
    # 2-core machine two threads per process fight the other processes' (chapter 09)
    threadpool_limits(1)
    numba.set_num_threads(1)
    tc = runs.train_config(args.quick, args.steps, args.out_dir, args.seed)
    corpus = load_corpus("stdlib", runs.base(args.quick)["block_size"], tc.max_bytes, seed=tc.seed)

    results = part_runs(args, corpus)
    frontier, leverages = part_leverage(results)
    ratios = part_inference(results, leverages, args.quick)
    part_measured(results, corpus, args.out_dir)
    ranked = sorted((n for n in leverages if leverages[n].leverage is not None and n in ratios),
                    key=lambda n: -leverages[n].leverage)
    if not ranked:
        print("  no sparse model's loss could be placed on the dense frontier: no verdict")
        return summary(start)
    best = ranked[0]
    best_r = next(r for r in results if r["name"] == best)
    print(f"\n  best sparse model by training leverage: {best} (its preset in the library: "
          f"{best_r['preset'] or 'none'})")
    factor_rows = verdict.factors(best, leverages[best], ratios[best], best_r["costs"])
    part_plots(args, results, frontier, leverages, best, factor_rows)
    part_beyond(best, best_r["costs"], factor_rows)
    section("7. The verdict (every 'measured' figure from this run, at equal validation loss)")
    verdict.print_table(verdict.verdict_rows(best, leverages[best], ratios[best], factor_rows))
    return summary(start)


if __name__ == "__main__":
    sys.exit(main())
