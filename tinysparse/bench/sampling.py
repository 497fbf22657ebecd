"""How much faster is sampling with a KV cache? `python -m tinysparse bench --suite sampling`.

For each model kind (the tiny dense GPT, tiny-moe and tiny-adaptive, at their seed-0
weights: no training) GPT.generate draws the same tokens twice,
with the cache and without it (the whole window recomputed every step), taking turns so that a
burst of someone else's load hits both alike (common.py); the median over --iters rounds is the
headline. Two lengths: block_size - 1 new tokens (the window never slides, every step after the
prefill feeds one token) and 4 x block_size (past block_size the window slides each step and runs
whole: adaptive/kv_cache.py, so those steps cost what uncached ones do).
The two runs must return the same tokens (checked; exit status 1 if not).

Then, for the dense model (the one with a PyTorch twin, torch_twins.py), tinysparse's cached
sampling against the twin decoding with its own KV cache (torch_decode.py), taking turns the same
way, and the window that every step past block_size re-runs, timed three ways (window.py):
where the time of the long run goes; then one block of that window op by op against PyTorch's
ops (window_ops.py). Both decode greedily so their tokens can be compared:
tinysparse's generate with top_k=1 (only the likeliest token survives, so the draw is the argmax;
generate has no argmax switch), the twin with argmax. Both float32 and untrained, so logits are
close to uniform and a near-tie may pick different tokens: the column says where they first part,
and does not fail the run (tests/test_torch_decode.py checks the tokens in float64).
"""
import time

import numpy as np

from ..engine import random as ts_random
from ..gpt import GPTConfig
from .targets import record as record_target
from .common import build_model, import_torch, paired_ratio, threads
from .profile import profile_calls
from .torch_decode import torch_greedy_generate
from .torch_twins import build_torch_twin
from .window import window_times
from .window_ops import block_ops, op_times

MODELS = {"dense": {}, "moe": dict(n_expert=16, top_k=2, d_expert=256),
          # the preset tiny-adaptive's mechanism (training/config.py), untrained
          "adaptive": dict(n_expert=16, top_k=2, d_expert=256, mod_capacity=0.25)}


def _timed_generate(model, n_new, kv_cache, seed=0, top_k=None):
    ts_random.manual_seed(seed)
    t0 = time.perf_counter()
    out = model.generate(np.zeros((1, 1), dtype=np.int64), n_new, top_k=top_k, kv_cache=kv_cache)
    return time.perf_counter() - t0, out


def _timed_torch_generate(twin, n_new):
    t0 = time.perf_counter()
    out = torch_greedy_generate(twin, np.zeros((1, 1), dtype=np.int64), n_new)
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


def torch_sampling_speed(model, twin, n_new, iters, settle=0.0):
    """Greedy cached decoding, tinysparse (top_k=1) and the twin taking turns:
    {'tinysparse': seconds list, 'pytorch': ...}, and both runs' tokens."""
    runs = {"tinysparse": lambda: _timed_generate(model, n_new, True, top_k=1),
            "pytorch": lambda: _timed_torch_generate(twin, n_new)}
    times, tokens = {name: [] for name in runs}, {}
    for _ in range(iters):
        for name, run in runs.items():
            time.sleep(settle)
            seconds, tokens[name] = run()
            times[name].append(seconds)
    return times, tokens


def _first_difference(a, b):
    """'yes' when two (1, 1 + n) token arrays agree, else the first new token (from 0) where they part."""
    differ = np.flatnonzero(a[0, 1:] != b[0, 1:])
    return "yes" if differ.size == 0 else f"from {differ[0]}"


def run_torch_sampling(args, model):
    """The dense model's cached greedy sampling against its PyTorch twin's (one table)."""
    torch = import_torch(args)
    if torch is None:
        return
    twin = build_torch_twin(model).eval()
    print(f"\ngreedy sampling with a KV cache, dense model, batch 1, {args.threads} threads, median "
          f"of {args.iters} rounds (taking turns; a shared machine: compare within a row; ts/pt: "
          f"the median of the per-round ratios)")
    print(f"{'new tokens':>10}{'tinysparse tok/s':>18}{'pytorch tok/s':>15}{'ts/pt':>8}"
          f"{'same tokens':>13}")
    with threads(args.threads, torch):
        for n_new in (model.config.block_size - 1, 4 * model.config.block_size):
            times, tokens = torch_sampling_speed(model, twin, n_new, args.iters, args.settle)
            rate = {k: n_new / float(np.median(v)) for k, v in times.items()}
            ratio, q25, q75 = paired_ratio(times["pytorch"], times["tinysparse"])  # a rate ratio
            record_target("decode_short" if n_new < model.config.block_size else "decode_long",
                          ratio, (q25, q75))
            print(f"{n_new:>10}{rate['tinysparse']:>18.0f}{rate['pytorch']:>15.0f}"
                  f"{ratio:>7.2f}x"
                  f"{_first_difference(tokens['tinysparse'], tokens['pytorch']):>13}")
        print_window_times(model, twin, args.iters, args.settle)
        print_block_ops(model, twin, args.iters, args.settle)


def print_window_times(model, twin, iters, settle):
    """The window that every step past block_size re-runs (window.py): tinysparse, the same
    Function bodies without the engine around them, and the twin; each block's time over the
    twin's in the same round, median and quartiles."""
    idx = np.random.default_rng(0).integers(0, model.config.vocab_size,
                                            (1, model.config.block_size))
    calls = 40
    times = window_times(model, twin, idx, blocks=max(3, iters // 2), calls=calls, settle=settle)
    print(f"\nthe {model.config.block_size}-token window each step past block_size re-runs, "
          f"batch 1 (blocks of {calls} forwards taking turns; / pytorch: time over PyTorch's, "
          f"lower is faster, the median of the per-block ratios)")
    print(f"{'forward':<14}{'ms':>8}{'/ pytorch':>11}{'quartiles':>14}")
    for name, seconds in times.items():
        ratio, q25, q75 = paired_ratio(seconds, times["pytorch"])
        print(f"{name:<14}{np.median(seconds) * 1e3:>8.3f}{ratio:>10.2f}x"
              f"{q25:>8.2f}-{q75:.2f}x")


def print_block_ops(model, twin, iters, settle):
    """One block of that window op by op (window_ops.py): tinysparse's Function body against
    PyTorch's op on the same input, µs per call, time over PyTorch's (median of per-block ratios)."""
    ops = block_ops(model, twin, model.config.block_size)
    times = op_times(ops, blocks=max(3, iters // 5), calls=100, settle=settle)
    print(f"\none block of that window op by op, each side on the same input (bodies only: no "
          f"engine; us: each side's median; / pytorch: the median of the per-block ratios, the sum "
          f"row's the ratio of the sums; layer norm and residual add run twice in a block, once "
          f"here)")
    print(f"{'op':<14}{'tinysparse us':>14}{'pytorch us':>12}{'/ pytorch':>11}")
    total = {"tinysparse": 0.0, "pytorch": 0.0}
    for name, sides in times.items():
        ratio = paired_ratio(sides["tinysparse"], sides["pytorch"])[0]
        us = {side: float(np.median(s)) * 1e6 for side, s in sides.items()}
        total = {side: total[side] + us[side] for side in total}
        print(f"{name:<14}{us['tinysparse']:>14.1f}{us['pytorch']:>12.1f}{ratio:>10.2f}x")
    print(f"{'sum':<14}{total['tinysparse']:>14.1f}{total['pytorch']:>12.1f}"
          f"{total['tinysparse'] / total['pytorch']:>10.2f}x")


def _config(args, **extra):
    return GPTConfig(vocab_size=args.vocab_size, n_layer=args.n_layer, n_head=args.n_head,
                     n_embd=args.n_embd, block_size=args.block_size, **extra)


def run_decode_bench(args):
    """--suite decode: only the dense model's cached greedy sampling against its PyTorch twin."""
    model = build_model(_config(args)).eval()
    run_torch_sampling(args, model)
    if args.profile:
        profile_calls(lambda: _timed_generate(model, model.config.block_size - 1, True, top_k=1),
                      steps=max(1, args.iters // 4), what="cached greedy generate calls",
                      per=f"{model.config.block_size - 1} tokens")
    return 0


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
            config = _config(args, **extra)
            model = build_model(config).eval()
            for n_new in (config.block_size - 1, 4 * config.block_size):
                times, same = sampling_speed(model, n_new, args.iters, args.settle)
                rate = {k: n_new / float(np.median(v)) for k, v in times.items()}
                print(f"{name:<9}{n_new:>11}{rate['cached']:>14.0f}{rate['uncached']:>16.0f}"
                      f"{rate['cached'] / rate['uncached']:>9.2f}x{'yes' if same else 'NO':>13}")
                status |= 0 if same else 1
            if name == "dense":
                dense = model
    run_torch_sampling(args, dense)
    return status
