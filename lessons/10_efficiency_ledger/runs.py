"""Chapter 10's runs: dense models of several widths (the frontier) and three sparse models, each
trained by the library's loop (tinysparse/training/loop.py, which counts every step's FLOPs with
the ledger and logs the cumulative count at each evaluation), then measured per token.

Each run lives in its own folder under --out-dir, with the loop's checkpoint and log.jsonl and a
result.json (plain JSON: configs, the loss curve against counted training FLOPs, final loss,
per-token costs). A run whose result.json holds the same configs is not trained again: the plots
and tables are redrawn from the JSON. run.py prints; this file holds no claims.
"""
import contextlib
import json
import os
import time

from tinysparse.gpt import GPTConfig
from tinysparse.ledger.compare import token_costs
from tinysparse.training import PRESETS, TrainConfig, train
from tinysparse.training.atomic import save_json
from tinysparse.training.sampling import load_run

SIZES = ("n_layer", "n_head", "n_embd", "block_size", "n_expert", "top_k", "d_expert", "dropout")


def base(quick):
    """Depth, heads and context of every run; the width is the dense models' knob."""
    if quick:
        return dict(n_layer=2, n_head=2, block_size=32, dropout=0.0)
    return dict(n_layer=4, n_head=4, block_size=64, dropout=0.0)


def dense_widths(quick):
    return (16, 32, 48) if quick else (32, 64, 96, 128)


def sparse_width(quick):
    return 32 if quick else 64


def preset_mechanisms():
    """tiny-adaptive's adaptive settings (training/config.py), its sizes left out."""
    return {k: v for k, v in PRESETS["tiny-adaptive"]["model"].items() if k not in SIZES}


def models(quick):
    """[(name, kind, preset it stands for, GPTConfig)]. The sparse models follow the presets'
    recipes at the sparse width C: tiny-moe's 16 experts of width 2C, top-2 (a token's expert
    FLOPs are the dense MLP's 4C); chapter 08's fine + shared layout, 32 experts of width C/2,
    top-6, and 2 shared experts (DeepSeekMoE: 8 x C/2 = 4C again); tiny-adaptive's mechanisms on
    top of tiny-moe."""
    b, C = base(quick), sparse_width(quick)
    out = [(f"dense C={w}", "dense", "tiny" if w == 128 else None, GPTConfig(**b, n_embd=w))
           for w in dense_widths(quick)]
    moe = dict(n_embd=C, n_expert=16, top_k=2, d_expert=2 * C)
    out.append(("tiny-moe", "sparse", "tiny-moe", GPTConfig(**b, **moe)))
    out.append(("fine + shared", "sparse", None,
                GPTConfig(**b, n_embd=C, n_expert=32, top_k=6, d_expert=C // 2, n_shared=2)))
    adaptive = {**moe, **preset_mechanisms()}
    if adaptive.get("mod_capacity") is not None:
        adaptive.setdefault("mod_every", min(2, b["n_layer"]))
    out.append(("tiny-adaptive", "sparse", "tiny-adaptive", GPTConfig(**b, **adaptive)))
    return out


def train_config(quick, steps, out_dir, seed):
    """The same loop settings for every run: same batches (same seed), same schedule."""
    if quick:
        return TrainConfig(data="stdlib", max_bytes=200_000, batch_size=8, max_iters=steps,
                           lr=2e-3, min_lr=1e-4, warmup_iters=max(1, steps // 20),
                           eval_interval=max(1, steps // 4), eval_iters=4, log_interval=10**6,
                           checkpoint_interval=steps, out_dir=out_dir, seed=seed, sample_tokens=0)
    return TrainConfig(data="stdlib", max_bytes=2_000_000, batch_size=16, max_iters=steps,
                       lr=2e-3, min_lr=1e-4, warmup_iters=max(1, steps // 20),
                       eval_interval=max(1, steps // 8), eval_iters=20, log_interval=10**6,
                       checkpoint_interval=steps, out_dir=out_dir, seed=seed, sample_tokens=0)


def folder_name(name):
    return name.replace(" ", "").replace("=", "").replace("+", "-")


def _same(saved, mcfg, tcfg):
    keep = {k: v for k, v in tcfg.to_dict().items() if k != "out_dir"}
    return (saved.get("model") == mcfg.to_dict() and
            {k: v for k, v in saved.get("train", {}).items() if k != "out_dir"} == keep)


def _curve(out_dir):
    """[(step, cumulative counted training FLOPs, val loss)] of the run's evaluations."""
    with open(os.path.join(out_dir, "log.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [(r["step"], r["train_flops"], r["val_loss"]) for r in rows]


def run(name, kind, preset, mcfg, tcfg, val_tokens, batches):
    """Train (or load from result.json) one model and measure it; returns its result dict."""
    path = os.path.join(tcfg.out_dir, "result.json")
    if os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        if _same(saved, mcfg, tcfg):
            saved["cached"] = True
            return _with_int_keys(saved)
    os.makedirs(tcfg.out_dir, exist_ok=True)
    t0 = time.perf_counter()
    with open(os.path.join(tcfg.out_dir, "train.txt"), "w") as log, contextlib.redirect_stdout(log):
        summary = train(mcfg, tcfg)          # the loop's lines go to train.txt, not the chapter
    seconds = time.perf_counter() - t0
    model, _, _ = load_run(tcfg.out_dir)
    result = {"name": name, "kind": kind, "preset": preset, "model": mcfg.to_dict(),
              "train": tcfg.to_dict(), "val_loss": summary["val_loss"],
              "train_flops": summary["train_flops"], "curve": _curve(tcfg.out_dir),
              "tokens": tcfg.max_iters * tcfg.batch_size * mcfg.block_size,
              "seconds": seconds, "costs": token_costs(model, val_tokens, batches)}
    save_json(path, result)
    result["cached"] = False
    return _with_int_keys(result)


def _with_int_keys(result):
    """JSON turns the batch keys into strings; the tables index them by int."""
    c = result["costs"]
    for key in ("weight_bytes", "energy", "experts_read"):
        c[key] = {int(k): v for k, v in c[key].items()}
    return result
