"""make gpu-check: the CUDA kernels on a real GPU, end to end, in under five minutes.

    python -m tinysparse.bench.gpu_check [--budget 280] [--iters 50]
    python -m tinysparse.bench.gpu_check --full      # (make gpu-check ARGS=--full) the checks of
                                                     # a lent GPU first, then the three stages
    python -m tinysparse.bench.gpu_check --full --dry-run   # list the stages; needs no GPU

--full (gpu_full.py) adds, before the stages below, in about two minutes more: the versions,
one dense (tiny) and one MoE (tiny-moe) training step with the host forbidden to wait for the
device (only the MoE dispatch plan may, once per layer), 30 tiny-moe steps on dispatch 'numpy'
and on 'cuda' (synchronised ms/step, losses side by side), and a resume with dropout compared
bit for bit with an unbroken run.

Three stages; each one reports PASS or FAIL with its reason, and a failure does not stop the next:

  1. tests   pytest tests/test_gpu.py and tests/test_cuda_kernels_*.py (DEVICE_TESTS) with the
             simulator OFF: every kernel on the device, on CuPy arrays (zero-copy) and on NumPy
             arrays (copied)
  2. timing  the MoE layer forward + backward on CuPy arrays, median milliseconds: dispatch
             'numpy' (the reference on CuPy: fancy indexing and cuBLAS matmuls) against the Numba
             kernels with the naive and the tiled grouped matmul; outputs compared as well
  3. train   python -m tinysparse train --preset tiny-moe --device cuda --max-iters 50, once with
             dispatch 'numpy' and once with 'cuda', in a temporary folder: both must train

then a table. Exit status: 0 every stage passed; 1 a stage failed; 2 no GPU here, so nothing was
checked (one line says why). 2 and not 0: a check that could not run must not read as passed.

The simulator is forced off (NUMBA_ENABLE_CUDASIM=0, here and in the child processes) before
numba is imported: a "pass" must come from the device. (Importing this module changes nothing;
main() does it.) The time budget is shared: a stage that
would start with too little time left is reported as SKIP.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXIT_OK, EXIT_FAILED, EXIT_NO_GPU = 0, 1, 2

# (label, tokens, n_embd, n_expert, top_k, d_expert): the tiny-moe preset's layer, and a
# fine-grained one (many small experts, 8 per token) where dispatch is most of the work
LAYERS = [("tiny-moe layer", 1024, 128, 16, 2, 256),
          ("fine-grained layer", 8192, 512, 64, 8, 128)]


def _env():
    return {**os.environ, "NUMBA_ENABLE_CUDASIM": "0", "PYTHONUNBUFFERED": "1"}


def why_no_gpu():
    """None when CuPy and Numba both see a CUDA device, else the reason in a few words."""
    try:
        from tinysparse.engine import backend
        if not backend.cuda_available():
            return "CuPy is not installed or finds no CUDA device (make cuda-install)"
        from numba import cuda
        if not cuda.is_available():
            return "CuPy sees a GPU but Numba's CUDA driver binding does not (make cuda-install)"
        from tinysparse.moe.cuda_dispatch import compile_problem
        if compile_problem() is not None:
            return compile_problem()
    except Exception as exc:                    # a broken CUDA install raises at import
        return f"the CUDA stack does not load ({exc.__class__.__name__}: {exc})"
    return None


def device_line():
    try:
        import numba
        from numba import cuda

        from tinysparse.engine import backend
        cupy = backend.get_xp("cuda")           # the device switch is the one place that imports it
        props = cupy.cuda.runtime.getDeviceProperties(0)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        cc = cuda.get_current_device().compute_capability
        mem = props["totalGlobalMem"] / 2**30
        return (f"{name}, compute capability {cc[0]}.{cc[1]}, {mem:.0f} GiB; CuPy {cupy.__version__}, "
                f"Numba {numba.__version__}")
    except Exception as exc:
        return f"(device details unavailable: {exc})"


def _tail(text, n=3):
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return " | ".join(lines[-n:])[-400:]


# ---- 1. tests ------------------------------------------------------------------------------------

# stage 1's files: test_gpu.py (must skip nothing), the CUDA kernels' tests (tests/cuda_helpers.py)
# and gpu-check's own (its one line without a GPU, the training flags it passes)
DEVICE_TESTS = ["tests/test_gpu.py", "tests/test_cuda_kernels_plan.py",
                "tests/test_cuda_kernels_combine.py", "tests/test_cuda_kernels_matmul.py",
                "tests/test_cuda_kernels_launch.py", "tests/test_cuda_kernels_moe_layer.py",
                "tests/test_gpu_check.py"]


def stage_tests(timeout):
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "--tb=short", "-p", "no:cacheprovider",
           *DEVICE_TESTS]
    r = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout)
    if os.environ.get("GPU_CHECK_LOG"):         # the whole pytest output (tools/gpu_lease.sh sets it)
        with open(os.environ["GPU_CHECK_LOG"], "w") as f:
            f.write(r.stdout + r.stderr)
    summary = _tail(r.stdout, 1)
    if r.returncode != 0:
        failed = [ln for ln in r.stdout.splitlines() if ln.startswith(("FAILED", "ERROR"))]
        return False, f"{summary}; {' | '.join(failed[:3]) or _tail(r.stdout + r.stderr)}"
    # test_cuda_kernels_*.py skip their simulator-only tests on a device; test_gpu.py skips nothing
    skipped = [ln for ln in r.stdout.splitlines() if ln.startswith("SKIPPED") and "test_gpu.py" in ln]
    if skipped:
        return False, f"{summary}; device tests were skipped: {skipped[0][:200]}"
    return True, summary


# ---- 2. timing -----------------------------------------------------------------------------------

def _time_layer(cp, backend_name, shape, deadline, repeats=10):
    """Median ms of one forward + backward of the MoE layer, and the layer's output."""
    import numpy as np
    import tinysparse as ts
    from tinysparse.moe import MoE
    _, T, C, E, k, d = shape
    ts.manual_seed(0)
    layer = MoE(C, E, top_k=k, d_expert=d, dispatch_backend=backend_name).to("cuda")
    rng = np.random.default_rng(0)
    x = ts.Tensor(cp.asarray(rng.standard_normal((1, T, C)), dtype=cp.float32), requires_grad=True)
    R = cp.asarray(rng.standard_normal((1, T, C)), dtype=cp.float32)

    def step():
        layer.zero_grad()
        x.grad = None
        out = layer(x)
        loss = (out * R).sum()
        (loss + layer.aux_loss if layer.aux_loss is not None else loss).backward()
        return out

    out = None
    for _ in range(2):                          # warm-up: Numba compiles the kernels here
        out = step()
    cp.cuda.Device().synchronize()
    times = []
    while len(times) < repeats and (not times or time.perf_counter() < deadline):
        t0 = time.perf_counter()
        step()
        cp.cuda.Device().synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), out.data


def stage_timing(deadline):
    from tinysparse.engine import backend
    from tinysparse.moe.cuda_dispatch import CudaDispatch
    from tinysparse.moe.dispatch import register_backend
    cp = backend.get_xp("cuda")
    register_backend("cuda naive", CudaDispatch(matmul="naive"))
    register_backend("cuda tiled", CudaDispatch(matmul="tiled"))
    rows, ok = [], True
    for shape in LAYERS:
        label, T, C, E, k, d = shape
        cells, ref = [], None
        for name in ("numpy", "cuda naive", "cuda tiled"):
            if time.perf_counter() > deadline:
                cells.append(f"{name}: SKIP (out of time)")
                continue
            try:
                ms, out = _time_layer(cp, name, shape, deadline)
                if ref is None:
                    ref = out
                err = float(cp.abs(out - ref).max() / max(float(cp.abs(ref).max()), 1e-30))
                if not err < 1e-4:
                    ok = False
                note = f" (rel. err {err:.1e})" if name != "numpy" else ""
                cells.append(f"{name} {ms:.2f} ms{note}")
            except Exception as exc:
                ok = False
                cells.append(f"{name}: FAIL {exc.__class__.__name__}: {str(exc)[:120]}")
        rows.append((f"timing {label} T={T} C={C} E={E} k={k} d={d} (fwd+bwd)", ok, "; ".join(cells)))
    return rows


# ---- 3. training ---------------------------------------------------------------------------------

def train_command(out_dir, dispatch, iters, device="cuda"):
    return [sys.executable, "-m", "tinysparse", "train", "--preset", "tiny-moe", "--device", device,
            "--dispatch-backend", dispatch, "--max-iters", str(iters), "--out-dir", out_dir,
            "--max-bytes", "1000000", "--warmup-iters", "10",
            "--eval-interval", str(max(1, iters // 2)), "--eval-iters", "5",
            "--log-interval", "10", "--checkpoint-interval", str(iters),
            "--sample-tokens", "64"]


def stage_train(dispatch, iters, timeout, device="cuda"):
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        out_dir = os.path.join(tmp, f"tiny-moe-{dispatch}")
        t0 = time.perf_counter()
        r = subprocess.run(train_command(out_dir, dispatch, iters, device), cwd=REPO, env=_env(),
                           capture_output=True, text=True, timeout=timeout)
        seconds = time.perf_counter() - t0
        if r.returncode != 0:
            return False, f"exit {r.returncode}: {_tail(r.stderr or r.stdout)}"
        with open(os.path.join(out_dir, "log.jsonl")) as f:
            log = [json.loads(line) for line in f if line.strip()]
    first, last = log[0], log[-1]
    rate = last.get("tokens_per_s")
    detail = (f"val loss {first['val_loss']:.3f} -> {last['val_loss']:.3f} at step {last['step']}, "
              f"{rate:,.0f} tokens/s, {seconds:.0f} s in all" if rate else f"{seconds:.0f} s")
    learned = last["step"] == iters and last["val_loss"] < first["val_loss"]
    return learned, detail if learned else f"did not learn: {detail}"


# ---- the run -------------------------------------------------------------------------------------

def _run(rows, label, fn, *args):
    t0 = time.perf_counter()
    try:
        ok, detail = fn(*args)
    except subprocess.TimeoutExpired as exc:
        ok, detail = False, f"timed out after {exc.timeout:.0f} s"
    except Exception as exc:
        ok, detail = False, f"{exc.__class__.__name__}: {exc}"
    rows.append((label, ok, f"{detail} [{time.perf_counter() - t0:.0f} s]"))
    result = "SKIP" if ok is None else "PASS" if ok else "FAIL"
    print(f"  {result}  {label}: {rows[-1][2]}", flush=True)   # now: a later crash loses nothing


def print_table(rows, header):
    print("\n" + header)
    width = max(len(r[0]) for r in rows)
    print(f"{'stage'.ljust(width)}  result  detail")
    for label, ok, detail in rows:
        result = "SKIP" if ok is None else "PASS" if ok else "FAIL"
        print(f"{label.ljust(width)}  {result:<6}  {detail}")


FULL_STAGES = [  # (label, gpu_full function name, arguments)
    ("versions", "versions", ()),
    ("small preset step vs the PyTorch twin, same GPU", "vs_torch", ("small",)),
    ("tiny-moe step vs the PyTorch twin, same GPU", "vs_torch", ("tiny-moe",)),
    ("sync-free step, tiny (dense)", "sync_free", ("tiny",)),
    ("sync-free step, tiny-moe, dispatch numpy", "sync_free", ("tiny-moe", "numpy")),
    ("sync-free step, tiny-moe, dispatch auto (cuda)", "sync_free", ("tiny-moe", "auto")),
    ("30 tiny-moe steps, dispatch numpy then cuda", "two_backends", ()),
    ("resume with dropout, bit for bit", "resume", ()),
]
STAGES = ["tests on the device (pytest)", "timing (MoE layer, numpy / cuda naive / cuda tiled)",
          "train tiny-moe, dispatch numpy", "train tiny-moe, dispatch cuda"]


def run_full(rows):
    """The stages of a lent GPU (gpu_full.py), each into rows."""
    from . import gpu_full
    for label, name, args in FULL_STAGES:
        _run(rows, label, getattr(gpu_full, name), *args)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m tinysparse.bench.gpu_check",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", type=float, default=280,
                   help="seconds for the three stages (default 280; --full's come before, ~2 min)")
    p.add_argument("--iters", type=int, default=50, help="training steps per run (default 50)")
    p.add_argument("--full", action="store_true",
                   help="first the checks to run when a GPU is lent (gpu_full.py)")
    p.add_argument("--dry-run", action="store_true", help="list the stages, run none (no GPU needed)")
    args = p.parse_args(argv)
    if args.dry_run:
        for label in [f"{label} (--full)" for label, _, _ in FULL_STAGES] * args.full + STAGES:
            print(f"would run: {label}")
        return EXIT_OK
    os.environ["NUMBA_ENABLE_CUDASIM"] = "0"   # before anything here imports numba (nothing has)
    reason = why_no_gpu()
    if reason is not None:
        print(f"gpu-check: no CUDA GPU here: {reason}. Nothing was checked (exit {EXIT_NO_GPU}).")
        return EXIT_NO_GPU
    header = f"gpu-check on {device_line()}"
    print(header, flush=True)
    rows, began = [], time.perf_counter()
    if args.full:
        run_full(rows)
    deadline = time.perf_counter() + args.budget

    def left(reserve):
        return deadline - time.perf_counter() - reserve

    # the time each stage may take, keeping a reserve for the ones after it
    _run(rows, "tests on the device (pytest)", stage_tests, max(30, min(150, left(110))))
    t0 = time.perf_counter()
    try:
        rows.extend(stage_timing(min(deadline - 95, time.perf_counter() + 60)))
    except Exception as exc:
        rows.append(("timing", False, f"{exc.__class__.__name__}: {exc}"))
    print(f"  timing done [{time.perf_counter() - t0:.0f} s]", flush=True)
    for dispatch in ("numpy", "cuda"):
        label = f"train tiny-moe {args.iters} steps, dispatch {dispatch}"
        budget = left(5) if dispatch == "cuda" else left(5) / 2
        if budget < 20:
            rows.append((label, None, "out of time"))
            continue
        _run(rows, label, stage_train, dispatch, args.iters, budget)

    print_table(rows, f"{header}; {time.perf_counter() - began:.0f} s")
    failed = [r for r in rows if r[1] is False]
    return EXIT_FAILED if failed else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
