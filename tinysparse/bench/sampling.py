"""How much faster is sampling with a KV cache? `python -m tinysparse bench --suite sampling`.

For each model kind (the tiny dense GPT, tiny-moe and tiny-adaptive, at their seed-0
weights: no training) GPT.generate draws the same tokens twice,
with the cache and without it (the whole window recomputed every step), taking turns so that a
burst of someone else's load hits both alike (common.py); the median over --iters rounds is the
headline. Two lengths: block_size - 1 new tokens (the window never slides, every step after the
prefill feeds one token) and 4 x block_size (past block_size the window slides each step and the
cache is rebuilt from it: adaptive/kv_cache.py, so those steps cost what uncached ones do).
The two runs must return the same tokens (checked; exit status 1 if not).
"""
import time

import numpy as np

from ..engine import random as ts_random
from ..gpt import GPTConfig
from .common import build_model, threads

MODELS = {"dense": {}, "moe": dict(n_expert=16, top_k=2, d_expert=256),
          # the preset tiny-adaptive's mechanism (training/config.py), untrained
          "adaptive": dict(n_expert=16, top_k=2, d_expert=256, mod_capacity=0.25)}


def _timed_generate(model, n_new, kv_cache, seed=0):
    ts_random.manual_seed(seed)
    t0 = time.perf_counter()
    out = model.generate(np.zeros((1, 1), dtype=np.int64), n_new, top_k=None, kv_cache=kv_cache)
    return time.perf_counter() - t0, out


def sampling_speed(model, n_new, iters, settle=0.0):
    """{'cached': seconds list, 'uncached': ...}, and whether both drew the same tokens."""
    times, tokens = {"cached": [], "uncached": []}, {}
    for _ in range(iters):
        for name, flag in (("cached", True), ("uncached", False)):
            time.sleep(settle)
            seconds, tokens[name] = _timed_generate(model, n_new, flag)
            times[name].append(seconds)
    return times, np.array_equal(tokens["cached"], tokens["uncached"])


def run_sampling_bench(args):
    status = 0
    print(f"\nsampling, batch 1, top_k None, {args.threads} threads, median of {args.iters} "
          f"rounds (cached and uncached take turns; a shared machine: compare within a row)")
    print(f"{'model':<9}{'new tokens':>11}{'cached tok/s':>14}{'uncached tok/s':>16}"
          f"{'speed-up':>10}{'same tokens':>13}")
    with threads(args.threads, None):
        for name, extra in MODELS.items():
            if "mod_capacity" in extra:              # every other block; the only one of a 1-layer model
                extra = {**extra, "mod_every": min(2, args.n_layer)}
            config = GPTConfig(vocab_size=args.vocab_size, n_layer=args.n_layer, n_head=args.n_head,
                               n_embd=args.n_embd, block_size=args.block_size, **extra)
            model = build_model(config).eval()
            for n_new in (config.block_size - 1, 4 * config.block_size):
                times, same = sampling_speed(model, n_new, args.iters, args.settle)
                rate = {k: n_new / float(np.median(v)) for k, v in times.items()}
                print(f"{name:<9}{n_new:>11}{rate['cached']:>14.0f}{rate['uncached']:>16.0f}"
                      f"{rate['cached'] / rate['uncached']:>9.2f}x{'yes' if same else 'NO':>13}")
                status |= 0 if same else 1
    return status
