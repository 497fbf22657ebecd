"""Where the time of a tinysparse training step goes, per Function forward and backward
(`python -m tinysparse bench --profile`)."""
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
