"""The performance targets of issue 16, each measured by a suite and printed in one table at the
end of `python -m tinysparse bench` (make bench): what was measured, the ratio before the
work (as the issue filed it), the target, and this run's ratio, all side by side.

A suite calls `record(key, ratio, spread)` when it has measured one; `print_targets` prints
every target, measured or not (a suite that did not run, or torch missing, says so). Ratios come
from steps that took turns in one run (common.time_alternating): a shared machine slows both
sides alike, so a ratio means something where an absolute time does not. Where the two sides
took turns round by round, the ratio is the median of the per-round ratios and `spread` their
quartiles (common.paired_ratio); the grouped-matmul rows, whose calls may be timed in separate
blocks, are ratios of medians.
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    key: str
    what: str
    before: str        # the figure before this work
    limit: float       # the target ratio
    at_least: bool     # True: the ratio must reach limit (a rate); False: stay at or below it


TARGETS = (
    Target("step", "dense training step / PyTorch's (headline config)", "1.26-1.31x", 1.0, False),
    Target("moe_step", "tiny-moe training step / dense step (equal active FLOPs)", "1.29x", 1.1,
           False),
    Target("layer_e64", "MoE layer fwd+bwd E64 top-8 dC/2 (numba) / dense FFN", "1.78x", 1.3,
           False),
    Target("layer_scaling", "worst MoE layer of E=8..128 top-2 d2C / dense FFN", "2.23x", 1.5,
           False),
    Target("gmm_fwd", "grouped matmul forward / one dense matmul, equal FLOPs", "~3.3x", 1.3, False),
    Target("gmm_dx", "grouped matmul dX / one dense matmul, equal FLOPs", "~3.3x", 1.3, False),
    Target("gmm_dw", "grouped matmul dW / one dense matmul, equal FLOPs", "~3.4x", 1.3, False),
    Target("decode_short", "cached greedy sampling tok/s / PyTorch twin's, block-1 tokens",
           "0.73x", 1.0, True),
    Target("decode_long", "cached greedy sampling tok/s / PyTorch twin's, 4 x block tokens",
           "0.61x", 1.0, True),
)

_results = {}
_spreads = {}


def reset():
    _results.clear()
    _spreads.clear()


def record(key, ratio, spread=None):
    """Store this run's ratio for target `key` (a KeyError for a key not in TARGETS); `spread`,
    when the ratio is a median of per-round ratios (common.paired_ratio), their quartiles."""
    if key not in {t.key for t in TARGETS}:
        raise KeyError(f"no bench target {key!r}")
    _results[key] = float(ratio)
    _spreads[key] = None if spread is None else (float(spread[0]), float(spread[1]))


def results():
    return dict(_results)


def spreads():
    """{key: (25th, 75th percentile) of the per-round ratios, or None}, as recorded."""
    return dict(_spreads)


def print_targets():
    """The table of every target; the rows a run did not measure say 'not run'."""
    print("\nTargets of issue 16 (ratios of steps that took turns in this run: the median of the "
          "per-round ratios, with their quartiles, where the suite pairs its rounds; 'met' "
          "compares the median with the target)")
    print(f"{'what':<67}{'before':>12}{'target':>9}{'this run':>10}  met  quartiles")
    for i, t in enumerate(TARGETS, 1):
        goal = f"{'>=' if t.at_least else '<='}{t.limit:g}x"
        if t.key not in _results:
            print(f"{i}. {t.what:<64}{t.before:>12}{goal:>9}{'not run':>10}")
            continue
        r = _results[t.key]
        met = r >= t.limit if t.at_least else r <= t.limit
        spread = _spreads.get(t.key)
        quartiles = "" if spread is None else f"{spread[0]:.2f}-{spread[1]:.2f}x"
        print(f"{i}. {t.what:<64}{t.before:>12}{goal:>9}{r:>9.2f}x  {'yes' if met else 'no ':<3}  "
              f"{quartiles}".rstrip())
