"""The checks to run when a GPU is lent: `make gpu-check ARGS=--full` (gpu_check.py calls these).

Each function is one stage: it returns (ok, detail) and prints nothing, so gpu_check can put it
in its table. What they check, on the device, that the CPU (with tests/fake_cupy/, the strict
CuPy stand-in) can only model:

  versions      Python, NumPy, CuPy (which wheel), Numba, numba-cuda, the driver's and the
                runtime's CUDA versions, the GPU
  sync_free     one training step of a preset with the host forbidden to wait for the device
                (CuPy's cupyx.allow_synchronize(False)); the dispatch plan alone may wait, once
                per MoE layer (the dropless buffer's size): the count is reported
  two_backends  N tiny-moe steps with dispatch 'numpy' (the reference on CuPy) and 'cuda' (the
                Numba kernels): synchronised ms/step after a warm-up, and the losses side by side
  vs_torch      a preset's training step against its PyTorch twin on the same GPU, tokens/s
                (gpu_vs_torch.py; SKIP where torch is missing or has no CUDA)
  resume        a dense model with dropout: 3 steps + resume + 3 steps against 6 straight, every
                parameter compared bit for bit (the device stream of engine/random.py restored)
"""
import contextlib
import importlib.metadata
import io
import math
import os
import platform
import tempfile
import time

import numpy as np

SMALL = dict(max_bytes=300_000, eval_iters=2, sample_tokens=0)


def versions():
    """(True, one line of versions) or (False, why)."""
    from ..engine import backend
    cp = backend.get_xp("cuda")
    dists = {d.metadata["Name"].lower(): d.version for d in importlib.metadata.distributions()
             if d.metadata["Name"]}
    wheels = ", ".join(f"{n} {v}" for n, v in sorted(dists.items())
                       if n.startswith(("cupy", "numba", "nvidia-cuda-runtime")))
    props = cp.cuda.runtime.getDeviceProperties(0)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]

    def cuda(v):
        return f"{v // 1000}.{(v % 1000) // 10}"
    return True, (f"{name}; driver CUDA {cuda(cp.cuda.runtime.driverGetVersion())}, runtime "
                  f"{cuda(cp.cuda.runtime.runtimeGetVersion())}; Python {platform.python_version()}, "
                  f"NumPy {np.__version__}; {wheels}")


def _run(preset, out_dir, **changes):
    """A TrainingRun of `preset` on the GPU in out_dir, quiet, with model fields `changes`."""
    from ..gpt import GPTConfig
    from ..training.config import PRESETS, TrainConfig
    from ..training.loop import TrainingRun
    model = {**PRESETS[preset]["model"], **changes}
    train = {**PRESETS[preset]["train"], **SMALL, "out_dir": out_dir, "device": "cuda",
             "max_iters": 10_000, "log_interval": 10_000, "eval_interval": 10_000,
             "checkpoint_interval": 10_000}
    with contextlib.redirect_stdout(io.StringIO()):
        return TrainingRun(GPTConfig(**model), TrainConfig(**train))


@contextlib.contextmanager
def _plan_may_wait(dispatch):
    """Within: the dispatch backend's plan may wait for the device (counted in the yielded
    list); nothing else may (backend.allow_synchronize(False))."""
    from ..engine import backend
    from ..moe.dispatch import get_backend
    be, calls = get_backend(dispatch), []
    plan = be.plan

    def waiting_plan(*args, **kwargs):
        calls.append(1)
        with backend.allow_synchronize(True):
            return plan(*args, **kwargs)
    be.plan = waiting_plan
    try:
        with backend.allow_synchronize(False):
            yield calls
    finally:
        del be.plan                              # the class's method again


def sync_free(preset, dispatch="auto"):
    """One step of `preset` under allow_synchronize(False), after a warm-up step."""
    from ..engine import backend
    with tempfile.TemporaryDirectory(prefix="gpu-full-") as tmp:
        run = _run(preset, tmp, dispatch_backend=dispatch)
        resolved = dispatch
        progress = {}
        run.step(progress)                       # warm-up: kernels compile, caches fill
        backend.synchronize()
        moe = run.model.moe_layers()
        if moe:
            from ..moe.dispatch import resolve_backend_name
            resolved = resolve_backend_name(dispatch, run.model.wte.weight.data)
        try:
            with _plan_may_wait(resolved) as calls:
                run.step(progress)
        except Exception as exc:                 # cupyx's DeviceSynchronized names the line
            return False, f"{exc.__class__.__name__}: {str(exc)[:300]}"
        backend.synchronize()
        ok = len(calls) == len(moe)
        return ok, (f"no wait outside the plan; the plan ran {len(calls)} times for "
                    f"{len(moe)} MoE layers (dispatch {resolved})")


def two_backends(steps=30, warmup=3):
    """tiny-moe, `steps` steps on dispatch 'numpy' then 'cuda': ms/step and the losses."""
    from ..engine import backend
    results = {}
    for dispatch in ("numpy", "cuda"):
        with tempfile.TemporaryDirectory(prefix="gpu-full-") as tmp:
            run = _run("tiny-moe", tmp, dispatch_backend=dispatch)
            progress = {}
            for _ in range(warmup):
                run.step(progress)
            run.read_pending()
            backend.synchronize()
            t0 = time.perf_counter()
            for _ in range(steps):
                run.step(progress)
            run.read_pending()
            backend.synchronize()
            ms = (time.perf_counter() - t0) / steps * 1e3
            results[dispatch] = (ms, run.st["history"][warmup:])
    (ms_np, h_np), (ms_cu, h_cu) = results["numpy"], results["cuda"]
    diff = max(abs(a - b) for a, b in zip(h_np, h_cu))
    ok = len(h_np) == len(h_cu) == steps and diff < 1e-2 and all(map(math.isfinite, h_cu))
    return ok, (f"{steps} steps (after {warmup} warm-up): numpy {ms_np:.1f} ms/step, cuda "
                f"{ms_cu:.1f} ms/step (synchronised); loss {h_np[0]:.4f} -> {h_np[-1]:.4f} vs "
                f"{h_cu[0]:.4f} -> {h_cu[-1]:.4f}, largest difference {diff:.2e}")


def resume(preset="tiny", dropout=0.1, device="cuda", **changes):
    """3 steps + resume + 3 steps == 6 steps, bit for bit, with dropout on the device; `changes`
    are model fields (the tests shrink the model)."""
    from ..gpt import GPTConfig
    from ..training import train
    from ..training.checkpoint import load_checkpoint
    from ..training.config import PRESETS, TrainConfig
    model = GPTConfig(**{**PRESETS[preset]["model"], "dropout": dropout, **changes})

    def config(out_dir, iters):
        return TrainConfig(**{**PRESETS[preset]["train"], **SMALL, "out_dir": out_dir,
                              "device": device, "max_iters": iters, "eval_interval": 3,
                              "checkpoint_interval": 3, "log_interval": 3, "warmup_iters": 2})
    with tempfile.TemporaryDirectory(prefix="gpu-full-") as tmp, \
            contextlib.redirect_stdout(io.StringIO()):
        straight, parts = os.path.join(tmp, "straight"), os.path.join(tmp, "parts")
        train(model, config(straight, 6))
        train(model, config(parts, 3))
        train(model, config(parts, 6), resume=True)
        a, b = load_checkpoint(straight), load_checkpoint(parts)
    same = [n for n in a["model"] if np.array_equal(a["model"][n], b["model"][n])]
    drawn = (a["rng_cupy"] or {}).get("counter", 0) if device == "cuda" else None
    ok = len(same) == len(a["model"]) and a["rng_cupy"] == b["rng_cupy"] and drawn != 0
    return ok, (f"{len(same)}/{len(a['model'])} parameters bit-identical after 3 + resume + 3 "
                f"steps vs 6; device stream {a['rng_cupy']} vs {b['rng_cupy']}")


def vs_torch(preset):
    """gpu_vs_torch.stage on `preset`; (None, why) when torch is missing or has no CUDA
    (gpu_check shows SKIP)."""
    from .gpu_vs_torch import stage
    return stage(preset)
