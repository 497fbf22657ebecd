"""Where the time goes (`python -m tinysparse bench --profile`): per Function forward and
backward for a training step (profile_steps) or any other call, such as a sampling run
(profile_calls); the MoE layer's per-primitive table is moe/timing.py's.

The clock, not a profiler: for the profiled calls, every Function subclass's forward and backward,
Function.apply, Tensor.backward and the optimizer's step and zero_grad are wrapped in
perf_counter timers, and put back afterwards. A wrapper costs about a microsecond a call (a
reviewer measured 1.1 us), most of it counted in the engine's row: a few ms in a step of some
1,600 Function calls. cProfile, used here before, timed every Python call and inflated the
Python-heavy parts (a 150 ms MoE step read 195 ms); the rows now add up to the step's time.
A fused Function that calls another's forward or backward (PackedCausalAttention -> Attention)
is counted once, in the outermost: the time goes to the Function the engine called.
"""
import contextlib
import time
from collections import defaultdict

from ..engine.tensor import Function, Tensor
from .common import step


def _subclasses(cls):
    return [d for sub in cls.__subclasses__() for d in [sub, *_subclasses(sub)]]


class _Clock:
    """Seconds per bucket; `open` counts the timed calls running now, per kind ('phase': a
    Function's forward or backward; 'engine': Function.apply or Tensor.backward), so that a call
    inside another of its kind adds nothing of its own."""

    def __init__(self, sync=None):
        self.seconds, self.open = defaultdict(float), defaultdict(int)
        self.sync = sync or (lambda: None)   # on a GPU: wait for the device around each timed call

    def wrap(self, fn, bucket, kind):
        clock = self

        def timed(*args, **kwargs):
            outermost = clock.open[kind] == 0
            inside_engine = clock.open["engine"] > 0     # a phase the engine called
            clock.open[kind] += 1
            if outermost:
                clock.sync()
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                clock.open[kind] -= 1
                if outermost:
                    clock.sync()
                    dt = time.perf_counter() - t0
                    clock.seconds[bucket] += dt
                    if kind == "phase" and inside_engine:
                        clock.seconds["phases in the engine"] += dt
        return timed


@contextlib.contextmanager
def _timers(clock, optimizer=None):
    """Install the timers (see the module docstring); put every original back on the way out."""
    saved = []

    def install(owner, name, bucket, kind):
        raw = vars(owner)[name]                                    # staticmethod, classmethod, function
        fn = getattr(raw, "__func__", raw)
        timed = clock.wrap(fn, bucket, kind)
        saved.append((owner, name, raw))
        setattr(owner, name, type(raw)(timed) if isinstance(raw, (staticmethod, classmethod))
                else timed)

    try:
        for cls in _subclasses(Function):
            for phase in ("forward", "backward"):
                if phase in vars(cls):
                    install(cls, phase, f"{cls.__name__}.{phase}", "phase")
        install(Function, "apply", "engine: apply", "engine")
        install(Tensor, "backward", "engine: backward walk", "engine")
        if optimizer is not None:
            for name in ("step", "zero_grad"):                   # where the class defines it
                owner = next(c for c in type(optimizer).__mro__ if name in vars(c))
                install(owner, name, "optimizer", "optimizer")
        yield clock
    finally:
        for owner, name, raw in reversed(saved):
            setattr(owner, name, raw)


def clocked(run, steps, optimizer=None, sync=None):
    """(seconds of `steps` calls of run(), {bucket: seconds}) with the timers installed; `sync`
    (backend.synchronize on a GPU) is called around every timed call and before each clock read."""
    with _timers(_Clock(sync), optimizer) as clock:
        clock.sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            run()
        clock.sync()
        total = time.perf_counter() - t0
    return total, dict(clock.seconds)


def function_rows(seconds):
    """{'Class.forward' | 'Class.backward': seconds} of the Function phases alone."""
    return {name: t for name, t in seconds.items() if name.endswith((".forward", ".backward"))}


def engine_own(seconds):
    """The engine's own seconds: apply and Tensor.backward, less the phases they called (a phase
    called from model code directly, such as the KV cache's attention, is not the engine's)."""
    return (seconds.get("engine: apply", 0.0) + seconds.get("engine: backward walk", 0.0)
            - seconds.get("phases in the engine", 0.0))


def _print_rows(rows, extra, total, steps, top, unit):
    print(f"  {'where the time goes':<38}{unit:>9}{'share':>8}")
    line = lambda name, t: print(f"  {name:<38}{t / steps * 1e3:9.2f}{t / total:8.1%}")  # noqa: E731
    ranked = sorted(rows.items(), key=lambda kv: -kv[1])
    for name, t in ranked[:top]:
        line(name, t)
    if len(ranked) > top:
        line(f"({len(ranked) - top} more Function entries)", sum(t for _, t in ranked[top:]))
    for name, t in extra:
        line(name, t)


def step_rows(total, seconds, opt):
    """A training step's profile, every second in exactly one row: ({'Class.phase': seconds} of
    the Functions, [(bucket, seconds)] of the engine's own, the optimizer's (opt's class named)
    and the rest, the model code). `total` and `seconds` as clocked() returns them."""
    rows = function_rows(seconds)
    engine = engine_own(seconds)
    optimizer = seconds.get("optimizer", 0.0)
    rest = total - engine - sum(rows.values()) - optimizer
    return rows, [("engine (tensor.py backward/apply)", max(0.0, engine)),
                  (f"optimizer ({type(opt).__name__} step, zero_grad)", optimizer),
                  ("model code (nn/gpt Python, the rest)", max(0.0, rest))]


def profile_steps(model, opt, idx, targets, steps, top=15, label="tinysparse", sync=None):
    """Run `steps` training steps with the timers in; print the time per Function forward and
    backward, the engine's own (graph recording in apply, the backward walk), the optimizer's
    and the rest (model code: nn modules, gpt, the MoE's routing plan). On a GPU pass
    sync=backend.synchronize: each timed call then waits for its kernels, so its row holds
    their device time (and the step loses the overlap of host and device: it runs slower)."""
    total, seconds = clocked(lambda: step(model, opt, idx, targets), steps, opt, sync)
    rows, buckets = step_rows(total, seconds, opt)
    fwd = sum(t for name, t in rows.items() if name.endswith("forward"))
    bwd = sum(t for name, t in rows.items() if name.endswith("backward"))
    print(f"\nprofile: {steps} {label} steps, timed per Function (perf_counter around each "
          f"forward and backward), {total / steps * 1e3:.1f} ms/step"
          + ("; the device synchronised around each, so slower than unprofiled" if sync else ""))
    print(f"  Functions: forward {fwd / total:.0%}, backward {bwd / total:.0%} of the step")
    _print_rows(rows, buckets, total, steps, top, "ms/step")


def profile_calls(run, steps, what, per, top=12):
    """Run `steps` calls of run() (a sampling run, say) with the timers in; print the time per
    Function, the engine's graph bookkeeping, and the rest (model and sampling-loop Python)."""
    total, seconds = clocked(run, steps)
    rows = function_rows(seconds)
    engine = engine_own(seconds)
    rest = total - sum(rows.values()) - max(0.0, engine)
    print(f"\nprofile: {steps} {what}, timed per Function, {total / steps * 1e3:.1f} ms per call "
          f"({per})")
    _print_rows(rows, [("engine (Function.apply around forwards)", max(0.0, engine)),
                       ("the rest (model, checks, sampling loop)", max(0.0, rest))], total, steps,
                top, "ms/call")
