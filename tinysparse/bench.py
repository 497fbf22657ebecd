"""How fast is a tinysparse training step, next to PyTorch on the same CPU threads?

`python -m tinysparse bench` times one full training step (zero_grad, forward, backward, AdamW
step) of the tinysparse GPT and, where torch is installed, of its PyTorch twin: the same
architecture, written the way a PyTorch user would (fused qkv Linear, scaled_dot_product_attention,
tied head), started from tinysparse's very weights and fed the same batch. Both run float32 on the
same number of threads (torch.set_num_threads and threadpoolctl for NumPy's BLAS).

Fairness on a busy machine: the two frameworks take turns, one step each, so a burst of someone
else's load hits both alike; the median is the headline and the min shows the quiet-machine speed.
Before each step a short untimed pause (--settle) lets the other framework's idle worker threads
go to sleep: OpenBLAS's spin for about 0.1 s after a call, and on 2 cores that alone made torch's
steps 2.4x slower when they followed a tinysparse step (measured; with the pause, each framework
runs as fast as it does alone).

MFU: the training FLOPs of a step (PaLM appendix B: 6N + 12 L T C per token) divided by the step
time, over a float32 matmul peak measured here, now, on the same threads.
"""
import cProfile
import contextlib
import functools
import gc
import math
import pstats
import time

import numpy as np

from . import optim
from . import random as ts_random
from .bench_torch import LR, WEIGHT_DECAY, build_torch_twin, torch_adamw
from .gpt import GPT, GPTConfig
from .tensor import Function, Tensor

SUITES = ("step", "moe", "layer")
LOSS_TOLERANCE = 1e-4               # first-step losses must agree this well: same model, same numbers


def add_bench_arguments(parser):
    g = parser.add_argument_group("bench")
    g.add_argument("--iters", type=int, default=20, help="timed training steps per framework")
    g.add_argument("--warmup", type=int, default=3, help="untimed steps first (allocator, caches)")
    g.add_argument("--batch-size", type=int, default=16)
    g.add_argument("--n-layer", type=int, default=4)
    g.add_argument("--n-head", type=int, default=4)
    g.add_argument("--n-embd", type=int, default=128)
    g.add_argument("--block-size", type=int, default=64, help="sequence length T of every sample")
    g.add_argument("--vocab-size", type=int, default=96)
    g.add_argument("--threads", type=int, default=2, help="BLAS / torch threads for both frameworks")
    g.add_argument("--no-torch", action="store_true", help="time tinysparse alone")
    g.add_argument("--settle", type=float, default=0.15,
                   help="seconds to pause (untimed) before each step while alternating frameworks")
    g.add_argument("--suite", choices=SUITES, nargs="+", default=list(SUITES),
                   help="which benchmarks: step (dense GPT vs PyTorch), moe (MoE training steps), "
                        "layer (MoE layer forward+backward per dispatch backend); default all")
    g.add_argument("--dispatch-backend", default="auto",
                   help="MoE dispatch backend of the moe suite (auto, numpy, numba, ...)")
    g.add_argument("--layer-tokens", type=int, default=1024,
                   help="tokens T of the layer suite's forward+backward")
    g.add_argument("--profile", action="store_true",
                   help="also profile tinysparse steps: where the time goes, per Function")
    return parser


# ---- one training step: the same code for both frameworks (zero_grad sets grads to None) --------

def step(model, opt, idx, targets):
    opt.zero_grad()
    _, loss = model(idx, targets)
    loss.backward()
    opt.step()
    return loss


@contextlib.contextmanager
def threads(n, torch):
    """Both frameworks on n threads: torch's own setting, and NumPy's BLAS via threadpoolctl."""
    try:
        from threadpoolctl import threadpool_limits
        blas = threadpool_limits(n)
    except ImportError:
        print("note: threadpoolctl is not installed, so NumPy's BLAS threads are not limited "
              "(pip install threadpoolctl)")
        blas = contextlib.nullcontext()
    previous = torch.get_num_threads() if torch else None
    try:
        with blas:
            if torch:
                torch.set_num_threads(n)
            yield
    finally:
        if torch:
            torch.set_num_threads(previous)


def matmul_gflops(m, k, n, min_seconds=0.25):
    """Best-of float32 NumPy (m, k) @ (k, n) in GFLOP/s: the peak a step's GEMMs could reach."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((m, k), dtype=np.float32), rng.standard_normal((k, n), dtype=np.float32)
    out = np.empty((m, n), dtype=np.float32)
    np.matmul(a, b, out=out)                                   # warm up (threads, pages)
    best, reps, start = math.inf, 0, time.perf_counter()
    while reps < 3 or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        np.matmul(a, b, out=out)
        best, reps = min(best, time.perf_counter() - t0), reps + 1
    return 2.0 * m * k * n / best / 1e9


# ---- where the time goes ---------------------------------------------------------------------------

def _key(fn):
    """pstats' key (file, first line, name) for a function, method, staticmethod or classmethod."""
    code = getattr(getattr(fn, "__func__", fn), "__code__", None)
    return None if code is None else (code.co_filename, code.co_firstlineno, code.co_name)


def _subclasses(cls):
    return [d for sub in cls.__subclasses__() for d in [sub, *_subclasses(sub)]]


def profile_steps(model, opt, idx, targets, steps, top=15):
    """Run `steps` tinysparse steps under cProfile; print the time per Function forward/backward.

    Cumulative time is used, not tottime: a Function's forward calls NumPy methods (.sum,
    .reshape) that cProfile lists as entries of their own, and they are that Function's cost.
    """
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(steps):
        step(model, opt, idx, targets)
    prof.disable()
    stats = pstats.Stats(prof).stats   # {(file, line, name): (calls, ncalls, tottime, cumtime, callers)}
    cum = lambda fn: stats.get(_key(fn), (0, 0, 0, 0.0))[3]  # noqa: E731
    total = cum(step)
    phases = {_key(vars(cls)[phase]): f"{cls.__name__}.{phase}" for cls in _subclasses(Function)
              for phase in ("forward", "backward") if phase in vars(cls)}
    # A fused Function may call another's forward/backward (PackedCausalAttention -> Attention):
    # count only the calls from outside any Function, so the time goes to the outermost one.
    rows = {}
    for key, name in phases.items():
        callers = stats.get(key, (0, 0, 0, 0, {}))[4]
        t = sum(c[3] for caller, c in callers.items() if caller not in phases)
        if t > 0:
            rows[name] = t
    fwd = sum(t for name, t in rows.items() if name.endswith("forward"))
    bwd = sum(t for name, t in rows.items() if name.endswith("backward"))
    # the engine: graph recording around each forward, and the backward walk around each backward
    engine = max(0.0, cum(vars(Function).get("apply")) - fwd) + max(0.0, cum(Tensor.backward) - bwd)
    optimizer = cum(type(opt).step) + cum(type(opt).zero_grad)
    rest = total - fwd - bwd - engine - optimizer
    print(f"\nprofile: {steps} tinysparse steps under cProfile, {total / steps * 1e3:.1f} ms/step "
          f"(the profiler's overhead inflates the Python-heavy parts)")
    print(f"  Functions: forward {fwd / total:.0%}, backward {bwd / total:.0%} of the step")
    print(f"  {'where the time goes':<38}{'ms/step':>9}{'share':>8}")
    line = lambda name, t: print(f"  {name:<38}{t / steps * 1e3:9.2f}{t / total:8.1%}")  # noqa: E731
    ranked = sorted(rows.items(), key=lambda kv: -kv[1])
    for name, t in ranked[:top]:
        line(name, t)
    if len(ranked) > top:
        line(f"({len(ranked) - top} more Function entries)", sum(t for _, t in ranked[top:]))
    line("engine (tensor.py backward/apply)", engine)
    line(f"optimizer ({type(opt).__name__} step, zero_grad)", optimizer)
    line("model code (nn/gpt Python, the rest)", rest)


def time_alternating(steps, warmup, iters, settle):
    """{name: step()} -> {name: (milliseconds, losses)}: the steps take turns, one each per round,
    so a burst of someone else's load hits them all alike; `settle` seconds (untimed) before each
    step let the previous one's idle BLAS threads stop spinning. The first `warmup` rounds are
    not timed (their losses are kept: the first loss checks that twins compute the same)."""
    runs = {name: ([], []) for name in steps}
    gc.collect()
    for i in range(warmup + iters):
        for name, step in steps.items():
            if len(steps) > 1:
                time.sleep(settle)
            t0 = time.perf_counter()
            loss = step()
            elapsed = (time.perf_counter() - t0) * 1e3
            runs[name][1].append(float(loss.item()))
            if i >= warmup:
                runs[name][0].append(elapsed)
    return runs


# ---- the benchmark -----------------------------------------------------------------------------

def _report(config, args, runs, peak, gemm, flops_step, params):
    """Print the table; return 0, or 1 when the two models' first-step losses disagree."""
    B, T, C = args.batch_size, config.block_size, config.n_embd
    size = f"{params / 1e6:.2f}M" if params >= 1e5 else f"{params / 1e3:.1f}K"
    print(f"\nconfig: vocab {config.vocab_size}, n_layer {config.n_layer}, n_head {config.n_head}, "
          f"n_embd {C}, block {T}, batch {B}, threads {args.threads} "
          f"(params {size}), float32, {args.iters} timed steps each")
    print(f"{'':<14}{'median ms':>11}{'min ms':>10}{'tok/s':>10}{'GFLOP/s':>10}{'MFU':>8}")
    med = {}
    for name, (times, _) in runs.items():
        med[name] = float(np.median(times))
        achieved = flops_step / (med[name] / 1e3) / 1e9
        print(f"{name:<14}{med[name]:11.2f}{min(times):10.2f}{B * T / (med[name] / 1e3):10.0f}"
              f"{achieved:10.2f}{achieved / peak:8.1%}")
    status = 0
    if "pytorch" in runs:
        (ts_times, ts_loss), (pt_times, pt_loss) = runs["tinysparse"], runs["pytorch"]
        print(f"ratio tinysparse/pytorch: {med['tinysparse'] / med['pytorch']:.2f}x (median), "
              f"{min(ts_times) / min(pt_times):.2f}x (min)")
        diff = abs(ts_loss[0] - pt_loss[0])
        ok = diff < LOSS_TOLERANCE
        print(f"loss check: first step tinysparse {ts_loss[0]:.6f}, pytorch {pt_loss[0]:.6f}, "
              f"|diff| {diff:.1e} " + ("(OK, < 1e-4)" if ok else
                                       "(MISMATCH: the models differ, so the timings compare different work)")
              + f"; after {len(ts_loss)} steps {ts_loss[-1]:.6f} vs {pt_loss[-1]:.6f}")
        status = 0 if ok else 1
    print(f"matmul peak (NumPy float32, {args.threads} threads): 1024^3 {peak:.1f} GFLOP/s; "
          f"model GEMM ({B * T}x{C} @ {C}x{4 * C}) {gemm:.1f} GFLOP/s")
    print(f"FLOPs/step (6N + 12*L*T*C per token, x {B * T} tokens) {flops_step / 1e9:.4g} GFLOP; "
          f"MFU = GFLOP/s at the median / the 1024^3 peak")
    return status


def build_model(config):
    """A tinysparse GPT with seed-0 weights, built without disturbing the caller's generator."""
    saved = ts_random.get_state()
    ts_random.manual_seed(0)
    try:
        return GPT(config).to("cpu")
    finally:
        ts_random.set_state(saved)


def fixed_batch(config, batch_size):
    """(idx, targets), each (B, T): the same random tokens for every model and framework."""
    T = config.block_size
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, size=(batch_size, T + 1))
    return np.ascontiguousarray(tokens[:, :-1]), np.ascontiguousarray(tokens[:, 1:])


def import_torch(args):
    """The torch module, or None (with a printed reason) under --no-torch or when not installed."""
    if args.no_torch:
        print("PyTorch comparison skipped (--no-torch)")
        return None
    try:
        import torch
    except ImportError:
        print("torch is not installed, so the PyTorch comparison is skipped (pip install torch==2.13.0)")
        return None
    return torch


def run_dense_bench(args):
    config = GPTConfig(vocab_size=args.vocab_size, n_layer=args.n_layer, n_head=args.n_head,
                       n_embd=args.n_embd, block_size=args.block_size, dropout=0.0)
    B, T = args.batch_size, args.block_size
    model = build_model(config)
    idx, targets = fixed_batch(config, B)
    steps = {"tinysparse": functools.partial(
        step, model, optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY), idx, targets)}
    torch = import_torch(args)
    if torch:                                      # built before any step: the weights are still equal
        twin = build_torch_twin(model)
        steps["pytorch"] = functools.partial(step, twin, torch_adamw(twin),
                                             torch.from_numpy(idx), torch.from_numpy(targets))

    with threads(args.threads, torch):
        runs = time_alternating(steps, args.warmup, args.iters, args.settle)
        peak = matmul_gflops(1024, 1024, 1024)
        gemm = matmul_gflops(B * T, config.n_embd, 4 * config.n_embd)
        status = _report(config, args, runs, peak, gemm, model.flops_per_token(T) * B * T,
                         model.num_parameters())
        if args.profile:
            profile_steps(model, steps["tinysparse"].args[1], idx, targets, steps=args.iters)
    return status


def run_bench(args):
    """Run the chosen suites (default: all); 0 when every twin agreed, 1 otherwise, 2 on bad flags."""
    if args.iters < 1 or args.warmup < 0:
        print(f"bench: --iters must be at least 1 and --warmup at least 0, got {args.iters}, {args.warmup}")
        return 2
    suites = getattr(args, "suite", ["step"])
    status = 0
    if "step" in suites:
        status |= run_dense_bench(args)
    if "moe" in suites:
        from .bench_moe import run_moe_bench
        status |= run_moe_bench(args)
    if "layer" in suites:
        from .bench_layer import run_layer_bench
        status |= run_layer_bench(args)
    return status


def main(argv=None):
    import argparse
    parser = argparse.ArgumentParser(prog="python -m tinysparse.bench", description=__doc__.split("\n")[0])
    return run_bench(add_bench_arguments(parser).parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
