"""A preset's training step on the GPU: tinysparse (CuPy) against its PyTorch twin on the same GPU.

    python -m tinysparse.bench.gpu_vs_torch                        # small, then tiny-moe
    python -m tinysparse.bench.gpu_vs_torch --preset small --iters 20
    python -m tinysparse.bench.gpu_vs_torch --device cpu     # a smoke run without a GPU
                                                             # (make bench: the CPU's comparison)

One full training step (zero_grad, forward, backward, AdamW step) of the preset's model, float32,
both frameworks from tinysparse's seed-0 weights and fed the same batch, taking turns one step
each (common.time_alternating: a step's time includes reading its loss, so on a GPU it waits for
the step to finish). The preset's dropout is set to 0 (the twin has none) and the vocabulary to
96 (the headline config's; the preset's own comes from its corpus). Neither framework is told to
use TF32: both run true float32 matmuls on cuBLAS (CuPy's default, and PyTorch's
float32_matmul_precision 'highest').

Reported per framework: median ms per step, tokens/s (B * T / median), and the ratio
tinysparse / PyTorch. The first step's losses must agree within 1e-3 (GPU reductions run in
another order than the CPU's, so the CPU suite's 1e-4 is not asked), else the two forwards
compute different things and the timings compare different work; the last step's within 1e-2,
else the backwards or the optimizers differ. gpu_check --full runs this for the
small and tiny-moe presets (issue 16's "tokens/s of the small preset on the GPU against the
PyTorch twin on the same GPU").
"""
import argparse
import math
import sys

import numpy as np

GPU_LOSS_TOLERANCE = 1e-3   # first-step losses on one GPU (float32, another reduction order)
LAST_LOSS_TOLERANCE = 1e-2  # after warmup + iters steps: the updates agree too
PRESETS_COMPARED = ("small", "tiny-moe")
TWINNABLE = ("small", "tiny", "tiny-moe")   # presets the twin implements (not tiny-adaptive's MoD)


def step_vs_torch(preset="small", iters=20, warmup=3, device="cuda", vocab_size=96, profile=False):
    """Time `preset`'s training step in both frameworks on `device`.

    Returns a dict: preset, device, batch (B, T), params, ms {framework: median ms}, tok_s
    {framework: tokens/s}, ratio (tinysparse / pytorch, medians), losses {framework: first-step
    loss}, loss_diff, last_diff (the last step's), ok (losses finite, loss_diff within
    GPU_LOSS_TOLERANCE, last_diff within LAST_LOSS_TOLERANCE). Raises ImportError when
    torch is not installed, KeyError for an unknown preset, ValueError when the preset is not
    twinnable (torch_twins.check_twinnable). profile=True prints, after the timing, where
    tinysparse's step spends its time per Function (profile.profile_steps, synchronised).
    """
    import functools

    from .. import optim
    from ..engine import backend
    from ..gpt import GPTConfig
    from ..training.config import PRESETS
    from .common import build_model, fixed_batch, step, time_alternating, twin_step
    from .torch_twins import LR, WEIGHT_DECAY

    config = GPTConfig(**{**PRESETS[preset]["model"], "dropout": 0.0, "vocab_size": vocab_size})
    B = PRESETS[preset]["train"]["batch_size"]
    idx, targets = fixed_batch(config, B)                    # (B, T) each, NumPy int64
    model = build_model(config)                              # seed-0 weights, on the CPU
    torch_step = twin_step(model, idx, targets, device)      # copies them before any step
    model.to(device)
    ts_idx, ts_targets = backend.to_device(idx, device), backend.to_device(targets, device)
    ts_opt = optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    steps = {"tinysparse": functools.partial(step, model, ts_opt, ts_idx, ts_targets),
             "pytorch": torch_step}
    runs = time_alternating(steps, warmup, iters, settle=0.0)
    if profile:
        from .profile import profile_steps
        profile_steps(model, ts_opt, ts_idx, ts_targets, steps=iters, label=f"{preset} on {device}",
                      sync=lambda: backend.synchronize(device))
    ms = {name: float(np.median(times)) for name, (times, _) in runs.items()}
    losses = {name: run_losses[0] for name, (_, run_losses) in runs.items()}
    last = {name: run_losses[-1] for name, (_, run_losses) in runs.items()}
    diff = abs(losses["tinysparse"] - losses["pytorch"])
    last_diff = abs(last["tinysparse"] - last["pytorch"])
    return {"preset": preset, "device": device, "batch": (B, config.block_size),
            "params": model.num_parameters(), "ms": ms,
            "tok_s": {name: B * config.block_size / (m / 1e3) for name, m in ms.items()},
            "ratio": ms["tinysparse"] / ms["pytorch"], "losses": losses, "loss_diff": diff,
            "last_diff": last_diff,
            "ok": (all(map(math.isfinite, [*losses.values(), *last.values()]))
                   and diff < GPU_LOSS_TOLERANCE and last_diff < LAST_LOSS_TOLERANCE)}


def describe(r):
    """One line of step_vs_torch's result."""
    (B, T), ms, tok = r["batch"], r["ms"], r["tok_s"]
    return (f"{r['preset']} ({r['params'] / 1e6:.2f}M params, B={B}, T={T}) on {r['device']}: "
            f"tinysparse {ms['tinysparse']:.2f} ms/step ({tok['tinysparse']:,.0f} tok/s), pytorch "
            f"{ms['pytorch']:.2f} ms/step ({tok['pytorch']:,.0f} tok/s), ratio "
            f"{r['ratio']:.2f}x; first loss {r['losses']['tinysparse']:.5f} vs "
            f"{r['losses']['pytorch']:.5f} (|diff| {r['loss_diff']:.1e}), last |diff| "
            f"{r['last_diff']:.1e}" + ("" if r["ok"] else
                                      f" (MISMATCH: over {GPU_LOSS_TOLERANCE:g} first or "
                                      f"{LAST_LOSS_TOLERANCE:g} last)"))


def why_not(device):
    """None when both frameworks can run on `device`, else why, in one line with the fix."""
    try:
        import torch
    except ImportError:
        return "PyTorch is not installed: pip install -e '.[bench]'"
    if device == "cuda":
        from ..engine import backend
        if not torch.cuda.is_available():
            return (f"this PyTorch ({torch.__version__}) has no CUDA device: install a CUDA build "
                    f"of torch, or use --device cpu")
        if not backend.cuda_available():
            return "CuPy finds no CUDA device: make cuda-install, or use --device cpu"
    return None


def stage(preset="small", iters=20, warmup=3):
    """gpu_check --full's stage: (ok, one line), or (None, why) when torch cannot run on the GPU."""
    why = why_not("cuda")
    if why is not None:
        return None, why
    r = step_vs_torch(preset, iters, warmup)
    return r["ok"], describe(r)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m tinysparse.bench.gpu_vs_torch",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", action="append", choices=TWINNABLE,
                   help=f"a preset (repeatable; default {' and '.join(PRESETS_COMPARED)})")
    p.add_argument("--iters", type=int, default=20, help="timed steps per framework (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="default cuda")
    p.add_argument("--profile", action="store_true",
                   help="then tinysparse's step per Function, each waiting for its kernels")
    args = p.parse_args(argv)
    why = why_not(args.device)
    if why is not None:
        print(f"error: {why}", file=sys.stderr)
        return 2
    status = 0
    for preset in args.preset or PRESETS_COMPARED:
        r = step_vs_torch(preset, args.iters, args.warmup, args.device, profile=args.profile)
        print(describe(r), flush=True)
        status |= not r["ok"]
    return status


if __name__ == "__main__":
    sys.exit(main())
