"""How fast is a tinysparse training step, next to PyTorch on the same CPU threads?

`python -m tinysparse bench --suite step` times one full training step (zero_grad, forward,
backward, AdamW step) of the tinysparse GPT and, where torch is installed, of its PyTorch twin:
the same architecture, written the way a PyTorch user would (fused qkv Linear,
scaled_dot_product_attention, tied head), started from tinysparse's very weights and fed the same
batch. Both run float32 on the same number of threads (torch.set_num_threads and threadpoolctl for
NumPy's BLAS), alternating one step each (common.py says why).

After the table, with --threads above 1, the same steps on 1 thread and on --threads, taking
turns (scaling.py: NumPy threads only its matmuls, PyTorch its elementwise kernels too, so the
ratio to PyTorch can grow with the threads; --profile adds the split per Function).

MFU: the training FLOPs of a step (PaLM appendix B: 6N + 12 L T C per token) divided by the step
time, over a float32 matmul peak measured here, now, on the same threads.
"""
import functools

import numpy as np

from .. import optim
from ..gpt import GPTConfig
from .common import (LOSS_TOLERANCE, array_code, build_model, fixed_batch, import_torch, matmul_gflops,
                     paired_ratio, step, threads, time_alternating, twin_step)
from .targets import record as record_target
from .profile import profile_steps
from .scaling import print_thread_scaling, profile_thread_scaling, time_thread_scaling
from .torch_twins import LR, WEIGHT_DECAY


ARRAY_CODE = "ts array code"   # the row of tinysparse with its @njit loops off: the "before"


def array_code_step(model, opt, idx, targets):
    """One step with the compiled loops off: the array code of GELU, layer norm, attention's
    softmax and the embedding backward, and AdamW's when opt was made with fused=False. Timed beside the default step: what the loops buy."""
    with array_code():
        return step(model, opt, idx, targets)


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
    if ARRAY_CODE in runs:
        print(f"@njit loops (GELU, layer norm, softmax, embedding backward, AdamW): a step takes "
              f"{med['tinysparse'] / med[ARRAY_CODE]:.2f}x the array code's time (median)")
    if "pytorch" in runs:
        (ts_times, ts_loss), (pt_times, pt_loss) = runs["tinysparse"], runs["pytorch"]
        ratio, q25, q75 = paired_ratio(ts_times, pt_times)
        record_target("step", ratio, (q25, q75))
        print(f"ratio tinysparse/pytorch: {ratio:.2f}x (median of the per-step ratios, quartiles "
              f"{q25:.2f}-{q75:.2f}x), {med['tinysparse'] / med['pytorch']:.2f}x (ratio of the "
              f"medians), {min(ts_times) / min(pt_times):.2f}x (min)")
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


def run_dense_bench(args):
    config = GPTConfig(vocab_size=args.vocab_size, n_layer=args.n_layer, n_head=args.n_head,
                       n_embd=args.n_embd, block_size=args.block_size, dropout=0.0)
    B, T = args.batch_size, args.block_size
    model = build_model(config)
    idx, targets = fixed_batch(config, B)
    steps = {"tinysparse": functools.partial(
        step, model, optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY), idx, targets)}
    baseline = build_model(config)
    steps[ARRAY_CODE] = functools.partial(
        array_code_step, baseline,
        optim.AdamW(baseline.parameters(), lr=LR, weight_decay=WEIGHT_DECAY, fused=False), idx, targets)
    torch = import_torch(args)
    if torch:                                      # built before any step: the weights are still equal
        steps["pytorch"] = twin_step(model, idx, targets)

    with threads(args.threads, torch):
        runs = time_alternating(steps, args.warmup, args.iters, args.settle)
        peak = matmul_gflops(1024, 1024, 1024)
        gemm = matmul_gflops(B * T, config.n_embd, 4 * config.n_embd)
        status = _report(config, args, runs, peak, gemm, model.flops_per_token(T) * B * T,
                         model.num_parameters())
        if args.profile:
            profile_steps(model, steps["tinysparse"].args[1], idx, targets, steps=args.iters)
    if args.threads == 1:
        print("\nthread scaling: not measured (--threads 1: no other thread count to compare)")
        return status
    # why the ratio can depend on the thread count (bench/scaling.py)
    names = ["tinysparse"] + (["pytorch"] if torch else [])
    timed = time_thread_scaling({name: steps[name] for name in names}, args.threads, args.warmup,
                                args.iters, args.settle, torch)
    print_thread_scaling(timed, names, args.threads)
    if args.profile:
        profile_thread_scaling(model, steps["tinysparse"].args[1], idx, targets, args.iters,
                               args.threads)
    return status
