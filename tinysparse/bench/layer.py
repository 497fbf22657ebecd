"""One feed-forward layer, forward + backward, on T tokens: dense FFN vs MoE, per dispatch backend.

The question: does a MoE layer cost what its ACTIVE parameters say, whatever its total size?
At n_embd C, every layer below does the same multiply-adds per token:

    dense            C -> 4C -> C                 one MLP
    E8 top-2 d2C     8 experts of width 2C, 2 per token    (2 x 2C = 4C hidden units per token)
    E64 top-8 dC/2   64 experts of width C/2, 8 per token  (fine-grained: 8 x C/2 = 4C)

Each MoE runs through every dispatch backend available here (numpy, numba, ...) and as the
PyTorch loop over experts (tinysparse/bench/torch_twins.py), from the same weights. Then the scaling
row: E = 8, 16, ..., 128 experts of width 2C, top-2: the active FLOPs never change, only the
total parameters do (16x). If cost follows active parameters, the time stays flat.

The layer's loss is sum(out * R) for a fixed random R, plus the MoE auxiliary loss: the
backward then reaches every parameter, the router included.
"""
import functools

import numpy as np

from ..engine import random as ts_random
from ..engine.tensor import Tensor
from ..gpt import MLP, GPTConfig
from ..moe import MoE
from ..moe.dispatch import DISPATCH_BACKENDS, LAZY_BACKENDS, get_backend
from ..moe.timing import print_primitives, time_primitives
from .common import import_torch, paired_ratio, threads, time_alternating
from .targets import record as record_target
from .torch_twins import copy_weights, torch_modules

SCALING_EXPERTS = (8, 16, 32, 64, 128)


def _cpu_backends():
    """Dispatch backends that run on NumPy arrays here: numpy, and numba when it loads.
    (cuda appears only under the CUDA simulator, where it is far too slow to time.)"""
    names = []
    for name in [*DISPATCH_BACKENDS, *LAZY_BACKENDS]:
        if name == "cuda" or name in names:
            continue
        try:
            get_backend(name)
        except ValueError:
            continue
        names.append(name)
    return names


def _seeded(build):
    saved = ts_random.get_state()
    ts_random.manual_seed(0)
    try:
        return build()
    finally:
        ts_random.set_state(saved)


def _ts_step(layer, x, R):
    layer.zero_grad()
    xt = Tensor(x, requires_grad=True)
    loss = (layer(xt) * R).sum()
    if getattr(layer, "aux_loss", None) is not None:
        loss = loss + layer.aux_loss
    loss.backward()
    return loss


def _torch_step(twin, x, R):
    twin.zero_grad(set_to_none=True)
    xt = x.clone().requires_grad_(True)
    loss = (twin(xt) * R).sum()
    if getattr(twin, "aux_loss", None) is not None:
        loss = loss + twin.aux_loss
    loss.backward()
    return loss


def _moe_config(C, E, k, d):
    return GPTConfig(n_embd=C, n_head=1, n_expert=E, top_k=k, d_expert=d, dropout=0.0)


def run_layer_bench(args):
    torch = import_torch(args)
    T, C = args.layer_tokens, args.n_embd
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, T, C)).astype(np.float32)          # (B=1, T, C)
    R = rng.standard_normal((1, T, C)).astype(np.float32)
    backends = _cpu_backends()
    shapes = [("E8 top-2 d2C", 8, 2, 2 * C), ("E64 top-8 dC/2", 64, 8, max(1, C // 2))]
    steps = {}

    dense = _seeded(lambda: MLP(GPTConfig(n_embd=C, n_head=1, dropout=0.0)))
    steps["dense FFN"] = functools.partial(_ts_step, dense, x, R)
    if torch:
        tdense = copy_weights(dense, torch_modules()["MLP"](GPTConfig(n_embd=C, n_head=1)))
        steps["dense FFN (torch)"] = functools.partial(
            _torch_step, tdense, torch.from_numpy(x), torch.from_numpy(R))
    for label, E, k, d in shapes:
        for name in backends:
            layer = _seeded(lambda: MoE(C, E, k, d, dispatch_backend=name))
            steps[f"{label} {name}"] = functools.partial(_ts_step, layer, x, R)
        if torch:
            twin = copy_weights(layer, torch_modules()["LoopMoE"](_moe_config(C, E, k, d)))
            steps[f"{label} torch loop"] = functools.partial(
                _torch_step, twin, torch.from_numpy(x), torch.from_numpy(R))
    with threads(args.threads, torch):
        runs = time_alternating(steps, args.warmup, args.iters, args.settle)
    med = {name: float(np.median(times)) for name, (times, _) in runs.items()}
    print(f"\nFeed-forward layer forward+backward, T={T} tokens, n_embd {C}, {args.threads} threads, "
          f"{args.iters} timed runs each (all active FLOPs equal)")
    print(f"{'':<28}{'median ms':>11}{'min ms':>9}{'vs dense':>10}")
    for name, (times, _) in runs.items():
        print(f"{name:<28}{med[name]:11.2f}{min(times):9.2f}{med[name] / med['dense FFN']:9.2f}x")
    if "E64 top-8 dC/2 numba" in med:
        ratio, q25, q75 = paired_ratio(runs["E64 top-8 dC/2 numba"][0], runs["dense FFN"][0])
        record_target("layer_e64", ratio, (q25, q75))
    for label, *_ in shapes:
        for name in backends:
            if torch:
                print(f"{label} {name}: {med[f'{label} torch loop'] / med[f'{label} {name}']:.2f}x "
                      f"faster than the PyTorch loop over experts")
    _scaling(args, x, R, backends, torch, dense)
    if args.profile:
        _profile_primitives(args, backends)
    return 0


def _profile_primitives(args, backends):
    """Where the fine-grained layer's dispatch time goes: every primitive, the reference (numpy)
    and the kernels (numba; backends a caller registered are left out)."""
    C = args.n_embd
    backends = [name for name in backends if name in ("numpy", "numba")]
    print(f"\nprofile: dispatch primitives of E64 top-8 dC/2, T={args.layer_tokens}, n_embd {C}, "
          f"{args.threads} threads, median ms (grouped_mm, _dx, _dw: both of an expert's matmuls)")
    print_primitives(time_primitives(backends, T=args.layer_tokens, n_embd=C, n_expert=64,
                                     top_k=8, d_expert=max(1, C // 2), iters=args.iters,
                                     warmup=args.warmup, blas_threads=args.threads))


def _scaling(args, x, R, backends, torch, dense):
    """E = 8..128 experts at fixed active FLOPs (top-2, width 2C): time relative to E = 8 and to
    the dense FFN, which takes its turns in the same run."""
    C = args.n_embd
    steps = {"dense": functools.partial(_ts_step, dense, x, R)}
    for E in SCALING_EXPERTS:
        for name in backends:
            layer = _seeded(lambda: MoE(C, E, 2, 2 * C, dispatch_backend=name))
            steps[(E, name)] = functools.partial(_ts_step, layer, x, R)
    with threads(args.threads, torch):
        runs = time_alternating(steps, args.warmup, args.iters, args.settle)
    med = {key: float(np.median(times)) for key, (times, _) in runs.items()}
    print(f"\nScaling at fixed active FLOPs: E experts of width {2 * C}, top-2 "
          f"(total FFN parameters grow {SCALING_EXPERTS[-1] // SCALING_EXPERTS[0]}x), median ms")
    print(f"{'E':>6}" + "".join(f"{name:>12}{'vs E=8':>9}{'vs dense':>10}" for name in backends))
    for E in SCALING_EXPERTS:
        print(f"{E:>6}" + "".join(f"{med[(E, name)]:12.2f}{med[(E, name)] / med[(8, name)]:8.2f}x"
                                  f"{med[(E, name)] / med['dense']:9.2f}x" for name in backends))
    print(f"dense FFN in the same run: {med['dense']:.2f} ms")
    if "numba" in backends:                    # the worst E, by its median per-round ratio
        paired = [paired_ratio(runs[(E, "numba")][0], runs["dense"][0]) for E in SCALING_EXPERTS]
        ratio, q25, q75 = max(paired)
        record_target("layer_scaling", ratio, (q25, q75))
