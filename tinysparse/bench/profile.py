"""Where the time goes (`python -m tinysparse bench --profile`): per Function forward and
backward for a training step (profile_steps) or any other call, such as a sampling run
(profile_calls); the MoE layer's per-primitive table is moe/timing.py's."""
import cProfile
import pstats

from ..engine.tensor import Function, Tensor
from .common import step


def _key(fn):
    """pstats' key (file, first line, name) for a function, method, staticmethod or classmethod."""
    code = getattr(getattr(fn, "__func__", fn), "__code__", None)
    return None if code is None else (code.co_filename, code.co_firstlineno, code.co_name)


def _subclasses(cls):
    return [d for sub in cls.__subclasses__() for d in [sub, *_subclasses(sub)]]


def _profiled(run, steps):
    """pstats' table {(file, line, name): (calls, ncalls, tottime, cumtime, callers)} of `steps`
    calls of run(), and a function cum(fn) -> fn's cumulative seconds in it."""
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(steps):
        run()
    prof.disable()
    stats = pstats.Stats(prof).stats
    return stats, lambda fn: stats.get(_key(fn), (0, 0, 0, 0.0))[3]


def _function_rows(stats):
    """{'Class.forward' | 'Class.backward': seconds}. Cumulative time is used, not tottime: a
    Function's forward calls NumPy methods (.sum, .reshape) that cProfile lists as entries of
    their own, and they are that Function's cost. A fused Function may call another's forward
    or backward (PackedCausalAttention -> Attention): only the calls from outside any Function
    count, so the time goes to the outermost one."""
    phases = {_key(vars(cls)[phase]): f"{cls.__name__}.{phase}" for cls in _subclasses(Function)
              for phase in ("forward", "backward") if phase in vars(cls)}
    rows = {}
    for key, name in phases.items():
        callers = stats.get(key, (0, 0, 0, 0, {}))[4]
        t = sum(c[3] for caller, c in callers.items() if caller not in phases)
        if t > 0:
            rows[name] = t
    return rows


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


def profile_steps(model, opt, idx, targets, steps, top=15, label="tinysparse"):
    """Run `steps` training steps under cProfile; print the time per Function forward/backward,
    the engine's own, the optimizer's and the rest."""
    stats, cum = _profiled(lambda: step(model, opt, idx, targets), steps)
    total = cum(step)
    rows = _function_rows(stats)
    fwd = sum(t for name, t in rows.items() if name.endswith("forward"))
    bwd = sum(t for name, t in rows.items() if name.endswith("backward"))
    # the engine: graph recording around each forward, and the backward walk around each backward
    engine = max(0.0, cum(vars(Function).get("apply")) - fwd) + max(0.0, cum(Tensor.backward) - bwd)
    optimizer = cum(type(opt).step) + cum(type(opt).zero_grad)
    rest = total - fwd - bwd - engine - optimizer
    print(f"\nprofile: {steps} {label} steps under cProfile, {total / steps * 1e3:.1f} ms/step "
          f"(the profiler's overhead inflates the Python-heavy parts)")
    print(f"  Functions: forward {fwd / total:.0%}, backward {bwd / total:.0%} of the step")
    _print_rows(rows, [("engine (tensor.py backward/apply)", engine),
                       (f"optimizer ({type(opt).__name__} step, zero_grad)", optimizer),
                       ("model code (nn/gpt Python, the rest)", rest)], total, steps, top,
                "ms/step")


def profile_calls(run, steps, what, per, top=12):
    """Run `steps` calls of run() under cProfile (a sampling run, say); print the time per
    Function, the engine's graph bookkeeping, and the rest (model and sampling-loop Python)."""
    stats, cum = _profiled(run, steps)
    total = sum(v[2] for v in stats.values())                       # every function's own time
    rows = _function_rows(stats)
    engine = max(0.0, cum(vars(Function).get("apply")) - sum(rows.values()))
    rest = total - sum(rows.values()) - engine
    print(f"\nprofile: {steps} {what} under cProfile, {total / steps * 1e3:.1f} ms per call "
          f"({per}; the profiler's overhead inflates the Python-heavy parts)")
    _print_rows(rows, [("engine (Function.apply around forwards)", engine),
                       ("the rest (model, checks, sampling loop)", rest)], total, steps, top,
                "ms/call")
