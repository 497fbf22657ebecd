"""The roofline (Williams, Waterman, Patterson, CACM 2009): this machine's two ceilings, measured
in the same run, and each op placed by its arithmetic intensity.

    ceilings = measure_ceilings()                  # peak float32 matmul FLOP/s, copy bytes/s
    rows = place(led.by_op(), ceilings)            # attainable FLOP/s and the bound of each op
    plot(rows, ceilings, "roofline.png")           # where matplotlib is installed

attainable(I) = min(peak, bandwidth * I), I = FLOPs / bytes (the ledger's bytes_rw: no cache
reuse, so I is a lower bound and the op sits at or left of where it really runs). An op left of
the ridge I* = peak / bandwidth is memory-bound, right of it compute-bound.

The ceilings are measured, not looked up: the peak is the best of a few float32 matmuls of
n x n (NumPy's BLAS, all the threads it was given), the bandwidth the best of a few copies of an
array larger than the last-level cache (each copy reads and writes it: 2 x nbytes). On a shared
machine both are lower than on a quiet one: say so beside any number quoted.
"""
import glob
import math
import os
import time
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Ceilings:
    peak_flops: float          # float32 matmul, FLOP/s
    bandwidth: float           # bytes/s, a copy larger than the last-level cache
    matmul_n: int
    copy_bytes: int

    @property
    def ridge(self):
        """The intensity (FLOP/byte) where the two roofs meet."""
        return self.peak_flops / self.bandwidth


def last_level_cache_bytes(default=32 << 20):
    """The largest CPU cache Linux reports (sysfs), or `default` where none is readable."""
    sizes = []
    for path in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*/size"):
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
        if text and text[-1] in units and text[:-1].isdigit():
            sizes.append(int(text[:-1]) * units[text[-1]])
        elif text.isdigit():
            sizes.append(int(text))
    return max(sizes) if sizes else default


def _best_seconds(fn, repeats):
    fn()                                   # warm up: first-touch page faults, BLAS threads
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def measure_ceilings(matmul_n=1024, repeats=5, copy_bytes=None):
    """Ceilings of this machine, measured now (about a second on 2 cores)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((matmul_n, matmul_n), dtype=np.float32)
    b = rng.standard_normal((matmul_n, matmul_n), dtype=np.float32)
    out = np.empty_like(a)
    seconds = _best_seconds(lambda: np.matmul(a, b, out=out), repeats)
    peak = 2.0 * matmul_n ** 3 / seconds
    nbytes = copy_bytes or max(4 * last_level_cache_bytes(), 64 << 20)
    src = np.ones(nbytes // 4, dtype=np.float32)
    dst = np.empty_like(src)
    seconds = _best_seconds(lambda: np.copyto(dst, src), repeats)
    return Ceilings(peak_flops=peak, bandwidth=2.0 * src.nbytes / seconds, matmul_n=matmul_n,
                    copy_bytes=int(src.nbytes))


@dataclass(frozen=True)
class Placement:
    name: str
    flops: float
    bytes_rw: float
    intensity: float           # FLOP/byte
    attainable: float          # FLOP/s the roofline allows at this intensity
    bound: str                 # 'memory' or 'compute'


def attainable(intensity, ceilings):
    return min(ceilings.peak_flops, ceilings.bandwidth * intensity)


def place(table, ceilings):
    """[(name, Figures)] (led.by_op() or led.by_module()) -> [Placement] of the rows that do
    any FLOPs; an op that only moves data has intensity 0 and no place on a log-log plot."""
    rows = []
    for name, f in table:
        if f.flops <= 0 or f.bytes_rw <= 0:
            continue
        intensity = f.flops / f.bytes_rw
        rows.append(Placement(name, f.flops, f.bytes_rw, intensity,
                              attainable(intensity, ceilings),
                              "memory" if intensity < ceilings.ridge else "compute"))
    return rows


def plot(rows, ceilings, path, title="roofline"):
    """A log-log roofline PNG at `path`: the two roofs and one point per row. Returns path, or
    None where matplotlib is not installed (the `plot` extra)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    intensities = [r.intensity for r in rows] or [ceilings.ridge]
    lo, hi = min(intensities + [ceilings.ridge]) / 4, max(intensities + [ceilings.ridge]) * 4
    xs = np.geomspace(lo, hi, 200)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.loglog(xs, [attainable(x, ceilings) / 1e9 for x in xs], "k-", lw=1.5,
              label=f"roofline: {ceilings.peak_flops / 1e9:.1f} GFLOP/s, "
                    f"{ceilings.bandwidth / 1e9:.1f} GB/s (measured, this run)")
    for r in rows:
        ax.loglog([r.intensity], [r.attainable / 1e9], "o", ms=5)
        ax.annotate(r.name, (r.intensity, r.attainable / 1e9), fontsize=7,
                    xytext=(3, -9), textcoords="offset points")
    ax.set_xlabel("arithmetic intensity (FLOP / byte, no cache reuse)")
    ax.set_ylabel("attainable GFLOP/s")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
