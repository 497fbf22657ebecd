"""Chapter 07, part 3: the grouped matmul, naive then tiled, against the float64 NumPy reference.

Forward, dX and dW of cuda_kernels/matmul_naive.py and matmul_tiled.py on a case whose sizes are
no multiple of the tile and with an empty expert; their wall times beside NumPy's (and cuBLAS's
through CuPy, on a GPU); the global-memory loads per output element, counted in the simulator.
rel_err and TOL, how a float32 kernel is held to a float64 reference, are defined here and
run.py's parts 4 and 5 use them too.

run.py imports this AFTER choosing the mode: importing it imports numba, which reads
NUMBA_ENABLE_CUDASIM once, at its first import.
"""
import math

import numpy as np
from numba import cuda

import toy_kernels as toy
from cuda_kernels import host, matmul_naive, matmul_tiled
from tinysparse.lesson import check, measured, section
from tinysparse.moe.dispatch import NumpyDispatch

SIM = host.SIMULATED          # the mode run.py chose: numba read it when it was first imported
REF = NumpyDispatch()
TOL = 1e-5 if SIM else 1e-4   # float32 vs float64, relative to the largest value; GPU: long sums


def rel_err(got, ref):
    """max |got - ref| relative to max |ref| (one number per array)."""
    diff = np.abs(np.asarray(got, np.float64) - ref).max(initial=0)
    return float(diff / max(np.abs(ref).max(initial=0), 1e-30))


# ---- 3. Grouped matmul: naive, then tiled --------------------------------------------------------

def matmul_case(args):
    """(counts per expert, d_in, d_out, tile): no size a multiple of the tile; an empty expert."""
    if SIM:
        return ([5, 0, 9, 3], 13, 6, 4) if args.quick else ([13, 0, 7, 21, 2], 19, 10, 8)
    rng = np.random.default_rng(0)
    E, S = (8, 2048) if args.quick else (16, 16384)
    p = rng.dirichlet(np.ones(E))
    p[1] = 0                                               # an empty expert
    return rng.multinomial(S, p / p.sum()).tolist(), 509, 1021, 16


@host.simulator_paced
def part_grouped_matmul(args):
    counts, d_in, d_out, tile = matmul_case(args)
    section(f"3. Grouped matmul, naive and tiled (tile {tile}): forward, dX, dW")
    E, S = len(counts), sum(counts)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    rng = np.random.default_rng(1)
    x, g = (rng.standard_normal(s).astype(np.float32) for s in ((S, d_in), (S, d_out)))
    w, b = (rng.standard_normal(s).astype(np.float32) for s in ((E, d_in, d_out), (E, d_out)))
    x64, g64, w64, b64 = (a.astype(np.float64) for a in (x, g, w, b))
    refs = {"forward": REF.grouped_mm(x64, w64, b64, offsets),
            "dX": REF.grouped_mm_dx(g64, w64, offsets),
            "dW": REF.grouped_mm_dw(x64, g64, offsets, with_bias=False)[0]}
    print(f"  E = {E} experts with {counts if E <= 8 else str(counts[:8])[:-1] + ', ...]'} rows, "
          f"S = {S}, d_in = {d_in}, d_out = {d_out}, float32")
    n_tiles = sum(math.ceil(c / tile) for c in counts)
    grid_t = (math.ceil(d_out / tile), math.ceil(S / tile) + E)
    grid_n, block_n = host.launch_2d(S, d_out, tile)
    print(f"  naive forward: grid {grid_n} of {block_n} threads, one per output element; tiled: grid "
          f"{grid_t}, {n_tiles} real row tiles (sum of ceil(n_e/{tile})), {grid_t[1] - n_tiles} spare "
          "rows of blocks return at once")
    d = {name: cuda.to_device(a) for name, a in dict(x=x, g=g, w=w, b=b, off=offsets).items()}
    zero = host.zero_of(np.float32)
    outs = {name: cuda.device_array(shape, np.float32) for name, shape in
            dict(forward=(S, d_out), dX=(S, d_in), dW=(E, d_in, d_out)).items()}
    runs = {"forward": lambda m: m.grouped_mm(d["x"], d["w"], d["b"], d["off"], zero, outs["forward"],
                                              tile=tile),
            "dX": lambda m: m.grouped_mm_dx(d["g"], d["w"], d["off"], zero, outs["dX"], tile=tile),
            "dW": lambda m: m.grouped_mm_dw(d["x"], d["g"], d["off"], zero, outs["dW"], tile=tile)}
    results, times = {}, {}
    for mname, module in (("naive", matmul_naive), ("tiled", matmul_tiled)):
        for op, run in runs.items():
            times[mname, op] = toy.median_ms(lambda: run(module), 1 if SIM else 10)
            results[mname, op] = outs[op].copy_to_host()
            err = rel_err(results[mname, op], refs[op])
            check(err < TOL, f"{mname:<5} {op:<7} = the float64 NumPy reference (max error {err:.1e} "
                  "of the largest value)")
    check(not results["tiled", "dW"][1].any(), "dW of the empty expert is zeros")
    np_ms = {op: toy.median_ms(fn, 1 if SIM else 3) for op, fn in [
        ("forward", lambda: REF.grouped_mm(x, w, b, offsets)),
        ("dX", lambda: REF.grouped_mm_dx(g, w, offsets)),
        ("dW", lambda: REF.grouped_mm_dw(x, g, offsets, with_bias=False))]}
    cp_ms = {} if SIM else toy.cupy_reference_ms(REF, x, g, w, b, offsets)
    flops = 2 * S * d_in * d_out
    print(f"\n  wall time, {flops:,} FLOP each"
          + (" (the SIMULATOR: Python threads on a CPU, these times mean nothing)" if SIM else "")
          + ":")
    print(f"    {'':<9}{'naive':>13}{'tiled':>13}{'NumPy CPU':>13}" + (f"{'CuPy GPU':>13}" if cp_ms else ""))
    for op in runs:
        print(f"    {op:<9}{times['naive', op]:10.3f} ms{times['tiled', op]:10.3f} ms"
              f"{np_ms[op]:10.3f} ms" + (f"{cp_ms[op]:10.3f} ms" if cp_ms else "")
              + ("" if SIM else f"   tiled {flops / times['tiled', op] / 1e9:.0f} GFLOP/s"))
    if not SIM:
        measured(f"  tiled is {times['naive', 'forward'] / times['tiled', 'forward']:.1f}x faster than "
                 "naive (forward); cuBLAS or CUTLASS grouped GEMMs with tensor cores go much further")

    print("\n  global-memory loads per output element of the forward (reads of x and w):")
    print(f"    naive: 2 * d_in = {2 * d_in} (a row of x and a column of w, every thread its own), "
          "2 flops per 2 loads")
    print(f"    tiled: 2 * ceil(d_in / TILE) = {2 * math.ceil(d_in / tile)} (one x and one w element "
          f"per thread per tile step; each is then used {tile} times from shared memory)")
    if SIM:   # counted: the simulator hands our CountingArray to the kernel, which reads through it
        per_output = {}
        for mname, module in (("naive", matmul_naive), ("tiled", matmul_tiled)):
            cx, cw = toy.CountingArray(x), toy.CountingArray(w)
            out = cuda.device_array((S, d_out), np.float32)
            module.grouped_mm(cx, cw, b, offsets, zero, out, tile=tile)
            per_output[mname] = (cx.reads + cw.reads) / (S * d_out)
            print(f"    counted in the simulator, {mname}: {cx.reads:,} reads of x + {cw.reads:,} of w "
                  f"= {per_output[mname]:.2f} per output element")
        check(per_output["naive"] == 2 * d_in, "naive: exactly 2 * d_in loads per output")
        check(per_output["tiled"] <= per_output["naive"] / (tile / 2), f"tiled: at least {tile // 2}x "
              f"fewer loads (the ideal is {tile}x; partly filled edge tiles cost some of it)")
