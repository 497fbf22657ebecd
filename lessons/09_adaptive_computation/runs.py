"""Chapter 09's experiments: the runs (tiny-moe and each adaptive mechanism, at equal steps on the
same batches), their training loop, and the two ways a run is measured.

    val CE      the validation cross-entropy of an eval-mode forward over fixed batches: the
                whole sequence at once, every layer (no exits); a Mixture-of-Depths block uses
                its causal rule sigmoid(r) > 0.5 in eval mode (mod.py)
    sampled     the text decoded one token at a time with the KV cache, as GPT.generate runs it
                (tinysparse/adaptive/trace.py, teacher-forced): the causal rules, the early exits,
                and per token its matmul FLOPs (model.compute_per_token()) and its surprisal

run.py prints them; this file holds no claims.
"""
import math
import time

import numpy as np
from tqdm import tqdm

import tinysparse as ts
from tinysparse import optim
from tinysparse.adaptive import mod_stats, set_rule
from tinysparse.adaptive.trace import trace
from tinysparse.engine.tensor import no_grad
from tinysparse.gpt import GPT, GPTConfig
from tinysparse.training import PRESETS
from tinysparse.training.data import BatchSampler, get_batch

SIZES = ("n_layer", "n_head", "n_embd", "block_size", "n_expert", "top_k", "d_expert", "dropout")


def base(quick):
    """tiny-moe's recipe, shrunk to fit the chapter's budget: 8 experts of width 128, 2 per token
    (a token's FFN compute is the dense MLP's 4 x 64), 4 blocks of width 64."""
    if quick:
        return dict(n_layer=2, n_head=2, n_embd=32, block_size=32, dropout=0.0,
                    n_expert=4, top_k=2, d_expert=64)
    return dict(n_layer=4, n_head=4, n_embd=64, block_size=64, dropout=0.0,
                n_expert=8, top_k=2, d_expert=128)


def preset_mechanisms():
    """The adaptive settings of the library's preset tiny-adaptive (training/config.py), its sizes
    left out: the chapter measures the preset the library ships."""
    return {k: v for k, v in PRESETS["tiny-adaptive"]["model"].items() if k not in SIZES}


# name, GPTConfig overrides on top of base(); "dense" drops the experts
RUNS = [
    ("dense", dict(n_expert=0, top_k=2, d_expert=0)),
    ("tiny-moe", {}),
    ("null, tau 0.75", dict(n_null=4, null_tau=0.75)),
    ("top-p 0.4", dict(top_p=0.4, max_k=4)),
    ("MoD 0.5", dict(mod_capacity=0.5)),
    ("MoD 0.5 random", dict(mod_capacity=0.5, mod_router="random")),
    ("early exit", dict(exit_scale=1.0, exit_threshold=0.9)),
    ("tiny-adaptive", None),                       # the preset's mechanisms (filled in by config())
]

# one budget knob per mechanism: (series, knob, [(value, name, overrides)])
SWEEPS = [
    ("null experts", "target experts", [(t, f"null, target {t}", dict(n_null=4, target_experts=t))
                                        for t in (1.0, 1.5)]),
    ("top-p", "p", [(p, f"top-p {p}", dict(top_p=p, max_k=4)) for p in (0.25, 0.4, 0.6)]),
    ("MoD", "capacity", [(c, f"MoD {c}", dict(mod_capacity=c)) for c in (0.125, 0.25, 0.5)]),
]
EXIT_THRESHOLDS = (0.3, 0.5, 0.7, 0.9)             # early exit: no retraining, a sampling knob


def config(quick, overrides):
    c = base(quick)
    c.update(preset_mechanisms() if overrides is None else overrides)
    if c.get("mod_capacity") is not None:
        c.setdefault("mod_every", min(2, c["n_layer"]))
    return GPTConfig(**c)


def val_ce(model, corpus, block_size, batch, n_batches, seed):
    """Mean eval-mode cross-entropy over fixed validation batches, and the mean real experts per
    token the MoE layers ran (None for a dense model)."""
    rng = np.random.default_rng([seed, 7919, 1])
    model.eval()
    ce, experts = [], []
    with no_grad():
        for _ in range(n_batches):
            x, y = get_batch(corpus.val, batch, block_size, rng)
            _, loss = model(x, y)
            ce.append(float(loss.item()))
            stats = model.moe_stats()
            if stats:
                experts.append(stats["experts_per_token"])
    model.train()
    return float(np.mean(ce)), (float(np.mean(experts)) if experts else None)


def train(name, mcfg, corpus, args):
    """Chapter 05's loop (AdamW, warm-up + cosine, clipping) on the BatchSampler's batches: the
    same seed gives every run the same batches in the same order. After each step the routers'
    bias steps (the null experts' budget controller). Returns the model and a record."""
    ts.manual_seed(args.seed)
    model = GPT(mcfg)
    opt = optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    sampler = BatchSampler(corpus, args.batch, mcfg.block_size, seed=args.seed)
    first = val_ce(model, corpus, mcfg.block_size, args.batch, args.val_batches, args.seed)[0]
    experts, t0 = [], time.perf_counter()
    bar = tqdm(range(args.steps), desc=f"  {name}", unit="step", leave=False, disable=None,
               dynamic_ncols=True)
    for step in bar:
        x, y = sampler.train_batch()
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        optim.clip_grad_norm(model.parameters(), 1.0)
        opt.lr = optim.cosine_lr(step, args.lr, max(1, args.steps // 20), args.steps, args.lr / 20)
        opt.step()
        model.update_router_bias()
        stats = model.moe_stats()
        experts.append(stats["experts_per_token"] if stats else math.nan)
    bar.close()
    seconds = time.perf_counter() - t0
    ce, val_experts = val_ce(model, corpus, mcfg.block_size, args.batch, args.val_batches, args.seed)
    return model, dict(first=first, ce=ce, experts=val_experts, train_experts=np.array(experts),
                       seconds=seconds)


def sampled(model, ids, threshold="config"):
    """Decode ids (N,) one token at a time with the KV cache (trace.py): mean surprisal (nats, the
    sampled cross-entropy), mean matmul FLOPs per token, and the trace itself. threshold: the
    early-exit threshold to decode with ('config': the model's own)."""
    keep = model.config.exit_threshold
    if threshold != "config":
        model.config.exit_threshold = threshold
    try:
        t = trace(model, ids)
    finally:
        model.config.exit_threshold = keep
    s = t["surprisal"]
    return float(np.nanmean(s)), float(t["flops"].mean()), t


def mod_report(model, corpus, block_size, batch, n_batches, seed):
    """Mixture-of-Depths: eval CE under top-k (training's rule, not causal) and under the causal
    rule, the predictor's agreement with top-k, the fraction the causal rule processes."""
    set_rule(model, "topk")
    ce_topk = val_ce(model, corpus, block_size, batch, n_batches, seed)[0]
    model.eval()
    with no_grad():
        model(get_batch(corpus.val, batch, block_size, np.random.default_rng([seed, 7919, 1]))[0])
    accuracy = mod_stats(model)["predictor_accuracy"]
    set_rule(model, "causal")
    ce_causal = val_ce(model, corpus, block_size, batch, n_batches, seed)[0]
    with no_grad():
        model.eval()
        model(get_batch(corpus.val, batch, block_size, np.random.default_rng([seed, 7919, 1]))[0])
        model.train()
    return dict(ce_topk=ce_topk, ce_causal=ce_causal, accuracy=accuracy,
                processed=mod_stats(model)["processed_fraction"])
