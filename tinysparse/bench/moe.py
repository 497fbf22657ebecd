"""Mixture-of-Experts training steps, side by side: dense GPT, tinysparse MoE, PyTorch loop MoE.

Every model has the bench's headline shape (n_layer, n_head, n_embd, block, batch) and differs
only in the feed-forward slot:

    dense            the 4C MLP
    tiny-moe         16 experts of width 256, top-2: the same active FLOPs as dense, 5.4x the
                     parameters (the `tiny-moe` training preset)
    E8 top-2 d128    8 experts of width 128, top-2: half the dense FFN's compute per token

Each MoE shape runs twice: tinysparse (sort-based dispatch, one grouped matmul per segment) and
its PyTorch twin written the common way, a Python loop over the experts with torch.nonzero and
index_add_ (tinysparse/bench/torch_twins.py). Same weights, same batch: the first-step losses must
agree, or the timings compare different work. All steps alternate in one run (see common.py).
"""
import functools

import numpy as np

from .. import optim
from ..gpt import GPTConfig
from ..moe.dispatch import resolve_backend_name
from .common import (LOSS_TOLERANCE, build_model, fixed_batch, import_torch, paired_ratio, step,
                     threads, time_alternating, twin_step)
from .targets import record as record_target
from .profile import profile_steps
from .torch_twins import LR, WEIGHT_DECAY

# (label, n_expert, top_k, d_expert)
MOE_SHAPES = [("tiny-moe", 16, 2, 256), ("E8 top-2 d128", 8, 2, 128)]


def _configs(args):
    base = dict(vocab_size=args.vocab_size, n_layer=args.n_layer, n_head=args.n_head,
                n_embd=args.n_embd, block_size=args.block_size, dropout=0.0,
                dispatch_backend=args.dispatch_backend)
    configs = {"dense": GPTConfig(**base)}
    for label, E, k, d in MOE_SHAPES:
        configs[label] = GPTConfig(**base, n_expert=E, top_k=k, d_expert=d)
    return configs


def _size(n):
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}K"


def run_moe_bench(args):
    """Time the dense and MoE training steps (and the PyTorch twins); print the table and ratios.
    Returns 0, or 1 when a twin's first-step loss disagrees with tinysparse's."""
    torch = import_torch(args)
    configs = _configs(args)
    idx, targets = fixed_batch(configs["dense"], args.batch_size)
    steps, models = {}, {}
    for label, config in configs.items():
        model = models[label] = build_model(config)
        opt = optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
        steps[label] = functools.partial(step, model, opt, idx, targets)
        if torch and config.n_expert:     # the twin is built before any step: same weights
            steps[f"{label} (torch loop)"] = twin_step(model, idx, targets)
    with threads(args.threads, torch):
        runs = time_alternating(steps, args.warmup, args.iters, args.settle)
        status = _report(args, configs, models, runs)
        if args.profile:
            tiny = steps["tiny-moe"]
            profile_steps(models["tiny-moe"], tiny.args[1], idx, targets, steps=args.iters,
                          label="tiny-moe")
    return status


def _report(args, configs, models, runs):
    B, T = args.batch_size, args.block_size
    backend = resolve_backend_name(args.dispatch_backend, np.zeros(1))
    print(f"\nMixture of Experts training steps (same config; the FFN differs), dispatch "
          f"backend {backend}, {args.iters} timed steps each")
    print(f"{'':<26}{'params':>9}{'active':>9}{'median ms':>11}{'min ms':>9}{'tok/s':>9}"
          f"{'GFLOP/s':>9}")
    med = {name: float(np.median(times)) for name, (times, _) in runs.items()}
    for name, (times, _) in runs.items():
        model = models[name.split(" (")[0]]
        flops = model.flops_per_token(T) * B * T            # active FLOPs: what a step executes
        print(f"{name:<26}{_size(model.num_parameters()):>9}{_size(model.num_active_parameters()):>9}"
              f"{med[name]:11.2f}{min(times):9.2f}"
              f"{B * T / (med[name] / 1e3):9.0f}{flops / (med[name] / 1e3) / 1e9:9.2f}")
    ratio, q25, q75 = paired_ratio(runs["tiny-moe"][0], runs["dense"][0])
    print(f"ratio tiny-moe / dense step (equal active FLOPs): {ratio:.2f}x (median of the per-step "
          f"ratios, quartiles {q25:.2f}-{q75:.2f}x), {med['tiny-moe'] / med['dense']:.2f}x (ratio "
          f"of the medians)")
    record_target("moe_step", ratio, (q25, q75))
    status = 0
    for label, *_ in MOE_SHAPES:
        twin = f"{label} (torch loop)"
        if twin not in runs:
            continue
        ours, theirs = runs[label][1][0], runs[twin][1][0]
        ok = abs(ours - theirs) < LOSS_TOLERANCE
        status = status if ok else 1
        print(f"ratio {label} tinysparse / PyTorch loop over experts: {med[label] / med[twin]:.2f}x "
              f"(median); first-step loss {ours:.6f} vs {theirs:.6f} "
              + ("(OK)" if ok else "(MISMATCH: the models differ)"))
    return status
