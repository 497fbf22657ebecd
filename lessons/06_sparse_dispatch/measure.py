"""Chapter 06 helpers: timing, the work each dispatch stage does, one MoE layer step."""
import time

import numpy as np

import tinysparse as ts
from tinysparse.moe import MoE

from strategies import matmul_flops


def same_plan(a, b):
    """Two DispatchPlans hold the same integers, field by field."""
    return all(np.array_equal(getattr(a, f), getattr(b, f))
               for f in ("token_index", "slot_position", "offsets", "counts", "rank"))


def best_ms(fn, repeats):
    """Fastest of `repeats` calls, in ms, after one untimed call."""
    fn()                                                     # warm-up: compile, caches, pages
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return 1e3 * best


def stage_work(T, C, E, k, d):
    """(MFLOP, MB of float rows read + written) of each row of timing.ROWS at one shape."""
    S, f = T * k, 4 / 1e6
    mm = matmul_flops(S, C, d) / 1e6
    return {"plan": (0, 8 * 4 * S / 1e6), "gather": (0, 2 * S * C * f),
            "scatter": (0, (S + T) * C * f), "grouped_mm": (mm, (2 * S * (C + d) + 2 * E * C * d) * f),
            "grouped_mm_dx": (mm, (2 * S * (C + d) + 2 * E * C * d) * f),
            "grouped_mm_dw": (mm, (2 * S * (C + d) + 2 * E * C * d) * f),
            "combine": (0, (S + T) * C * f), "combine_backward": (0, (T + 2 * S) * C * f)}


def time_layer(backend, T, C, E, k, d, repeats):
    """Best ms of one MoE layer forward + backward on T tokens, dispatch_backend=backend."""
    ts.manual_seed(0)
    layer = MoE(C, E, k, d, dispatch_backend=backend)
    x = np.random.default_rng(0).standard_normal((1, T, C)).astype(np.float32)

    def step():
        xt = ts.Tensor(x, requires_grad=True)
        out = layer(xt)
        (out * out).mean().backward()
    return best_ms(step, repeats)


def layer_step(backend, T=512, C=64, E=16, k=4, d=64):
    """Output, input gradient and every parameter gradient of one forward + backward."""
    ts.manual_seed(0)
    layer = MoE(C, E, k, d, dispatch_backend=backend)
    xt = ts.Tensor(np.random.default_rng(3).standard_normal((1, T, C)).astype(np.float32),
                   requires_grad=True)
    out = layer(xt)
    ((out * out).mean() + layer.aux_loss).backward()
    return [out.data, xt.grad] + [p.grad for p in layer.parameters()]
