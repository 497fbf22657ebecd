"""Chapter 06: sparse dispatch on the CPU. Data movement, why sort, the cost of each stage, @njit.

    python lessons/06_sparse_dispatch/run.py            # the whole chapter, about a minute
    python lessons/06_sparse_dispatch/run.py --quick    # smaller shapes, under half a minute
    python lessons/06_sparse_dispatch/run.py --out-dir somewhere/   (accepted; nothing is written)

Read lessons/06_sparse_dispatch/README.md alongside; it explains tinysparse/moe/dispatch.py,
numba_kernels.py, numba_dispatch.py and timing.py. Every claim the script prints is checked, and
it exits with status 1 if any check fails. A claim that rests on timings is a timed check: it says
whether it held on this run and never fails the script (a busy machine is not a broken chapter).
Wall-clock values carry their unit (ms, GFLOP/s, GB/s) or sit on a line printed with
lesson.measured(), as do the machine's thread counts, so lessons/transcripts.py can tell them
from the results, which are the same on every run.
"""
import argparse
import inspect
import os
import sys
import time

import numba
import numpy as np
from threadpoolctl import threadpool_limits

from tinysparse.bench.grouped_why import run_why
from tinysparse.lesson import check, measured, section, summary
from tinysparse.moe import capacity, get_backend, register_backend
from tinysparse.moe import numba_kernels as K
from tinysparse.moe.numba_dispatch import NumbaDispatch, numpy_blas_threads, parallel_pays
from tinysparse.moe.timing import ROWS, time_primitives

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from measure import best_ms, layer_step, same_plan, stage_work, time_layer  # noqa: E402
from strategies import (dense_masked, mask_loop, matmul_flops, naive_loop,  # noqa: E402
                        random_moe, sort_based)

NUMPY, NUMBA = get_backend("numpy"), get_backend("numba")
register_backend("numba-serial", NumbaDispatch(parallel=False))    # the two flavours, forced
register_backend("numba-parallel", NumbaDispatch(parallel=True))


# ---- 1. Dispatch is data movement ----------------------------------------------------------------

def part_walkthrough():
    section("1. Dispatch is data movement: 6 tokens, 4 experts, top-2, step by step")
    ids = np.array([[1, 0], [3, 1], [0, 2], [1, 3], [1, 0], [2, 1]])   # expert of slot (t, j)
    T, k, E, width = 6, 2, 4, 3
    flat = ids.reshape(-1)
    x = (10 * np.arange(T)[:, None] + np.arange(width)).astype(np.float32)  # row t: 10t, 10t+1, ..
    order = np.argsort(flat, kind="stable")
    plan = NUMPY.plan(ids, E)
    print(f"  slot s = t*k + j        {list(range(T * k))}")
    print(f"  expert of slot s        {flat.tolist()}")
    print(f"  a. stable sort by expert -> slot order {order.tolist()}  (token = slot // k: "
          f"{(order // k).tolist()})")
    print(f"  b. histogram counts[e]  {plan.counts.tolist()}")
    print(f"  c. exclusive scan       offsets = {plan.offsets.tolist()}: expert e owns buffer "
          f"rows [off[e], off[e+1])")
    print(f"  d. rank of slot (t, j)  {plan.rank.tolist()}  (earlier slots of the same expert)")
    print(f"     buffer row of (t, j) {plan.slot_position.tolist()}  = off[e] + rank")
    buf = NUMPY.gather(x, plan.token_index)
    print(f"  e. gather: buffer rows hold tokens {plan.token_index.tolist()}; buffer[:, 0] = "
          f"{buf[:, 0].astype(int).tolist()}")
    check(np.array_equal(buf, x[order // k]), "the buffer is x's rows in stably sorted slot order")
    check(np.array_equal(plan.slot_position.reshape(-1)[order], np.arange(T * k)),
          "slot_position inverts the sort: the slot at sorted position i sits in buffer row i")
    cap = capacity(0.75, T * k, E)
    capped = NUMPY.plan(ids, E, cap)
    print(f"  f. capacity factor 0.75: cap = ceil(0.75 * {T * k} / {E}) = {cap}; kept per expert "
          f"{np.diff(capped.offsets).tolist()}, dropped {capped.n_dropped}: slots "
          f"{np.flatnonzero(capped.slot_position.reshape(-1) < 0).tolist()} (rank >= cap)")
    check(np.array_equal(capped.slot_position < 0, capped.rank >= cap),
          "a slot is dropped exactly when its rank is >= cap")

    rng = np.random.default_rng(0)
    big = np.argsort(rng.random((4096, 64)), axis=1)[:, :8]
    holes = np.where(rng.random(big.shape) < 0.1, -1, big)   # -1: empty slots (expert choice)
    agree = [same_plan(NUMPY.plan(i, n, c), NUMBA.plan(i, n, c))
             for i, n, c in [(ids, E, None), (ids, E, cap), (big, 64, None), (big, 64, 100),
                             (holes, 64, None)]]
    check(all(agree), "numba's counting sort (plan_kernel) = numpy's argsort plan, in all 5 cases "
          "(tiny, capped, 4096 x top-8, capped, with holes)")

    x, ids6, gates, w = random_moe(T=64, C=16, E=4, k=2, d=24, seed=1)
    for cf in (None, 0.75):
        c = capacity(cf, ids6.size, 4)
        ref = naive_loop(x, ids6, gates, w, c)
        errs = [np.abs(sort_based(x, ids6, gates, w, b, c)[0] - ref).max() for b in (NUMPY, NUMBA)]
        check(max(errs) < 1e-5, f"gather -> grouped matmul -> combine = the loop over (token, "
              f"choice), capacity {c}: max error numpy {errs[0]:.1e}, numba {errs[1]:.1e}")


# ---- 2. Why sort-based -----------------------------------------------------------------------------

def part_alternatives(args):
    T, C, k, d = (512, 128, 2, 256) if args.quick else (1024, 128, 2, 256)
    Es = (8, 128) if args.quick else (8, 32, 128)
    section(f"2. Why sort: three ways to run E experts, T={T}, C={C}, top-{k}, d_expert={d}")
    names = ("dense_masked", "mask_loop", "sort numpy", "sort numba")
    print(f"  {'E':>4}{'rows run: dense / the others':>30}" + "".join(f"{n:>14}" for n in names))
    times, rates, agree = {}, {}, []
    for E in Es:
        inp = random_moe(T, C, E, k, d, seed=E)
        ref = sort_based(*inp, NUMPY)[0]
        runs = {"dense_masked": lambda: dense_masked(*inp), "mask_loop": lambda: mask_loop(*inp),
                "sort numpy": lambda: sort_based(*inp, NUMPY),
                "sort numba": lambda: sort_based(*inp, NUMBA)}
        rows = {}
        for name, fn in runs.items():
            out, rows[name] = fn()
            times[E, name] = best_ms(fn, 2 if name == "dense_masked" else 5)
            rates[E, name] = matmul_flops(rows[name], C, d) / times[E, name] / 1e6   # GFLOP/s
            agree.append(np.allclose(out, ref, atol=1e-4)
                         and rows[name] == T * (E if name == "dense_masked" else k))
        print(f"  {E:>4}{rows['dense_masked']:>20,} / {rows['sort numba']:<7,}"
              + "".join(f"{times[E, n]:11.2f} ms" for n in names))
    print(f"  (best of 5, dense_masked of 2; rows run: token rows pushed through the experts' "
          f"matmuls,\n   {4 * C * d:,} forward FLOPs each)")
    check(all(agree), "all four give the same output (to 1e-4); dense_masked ran T*E rows, the "
          "others T*k")
    lo, hi = Es[0], Es[-1]
    grow = {n: times[hi, n] / times[lo, n] for n in ("dense_masked", "mask_loop", "sort numba")}
    measured(f"  E {lo} -> {hi} ({hi // lo}x the parameters, the same active ones), time grew: "
             + ", ".join(f"{g:.1f}x {n}" for n, g in grow.items()))
    check(grow["dense_masked"] > hi / lo / 4, f"dense_masked's time grows with E ({grow['dense_masked']:.1f}x"
          f", FLOPs {hi // lo}x): it pays for the total parameters", timed=True)
    check(grow["sort numba"] < grow["dense_masked"] / 2,
          f"sort-based grows far less ({grow['sort numba']:.1f}x): it pays for the active ones",
          timed=True)
    check(times[hi, "sort numba"] < times[hi, "dense_masked"] / 4,
          f"at E={hi} sort-based is {times[hi, 'dense_masked'] / times[hi, 'sort numba']:.0f}x "
          f"faster than running every expert", timed=True)
    print(f"  matmul rate at E={hi}, forward FLOPs run / time: dense_masked "
          f"{rates[hi, 'dense_masked']:.1f} GFLOP/s, sort numba {rates[hi, 'sort numba']:.1f} GFLOP/s")

    # Sort-based still reads every expert's weights: with few rows per expert, each small matmul
    # runs far below the machine's speed. More tokens per call -> more rows per expert -> faster.
    E, rates = Es[-1], {}
    print(f"\n  sort numba at E={E} on T tokens, best of {3 if args.quick else 5}; the weights read: "
          f"{4 * 2 * E * C * d / 1e6:.1f} MB")
    print(f"  {'T':>6}{'rows per expert':>17}{'time':>12}{'rate':>15}{'activations MB':>16}")
    for T2 in ((64, 1024) if args.quick else (256, 1024, 4096)):
        inp = random_moe(T2, C, E, k, d, seed=T2)
        ms = best_ms(lambda: sort_based(*inp, NUMBA), 3 if args.quick else 5)
        rates[T2] = matmul_flops(T2 * k, C, d) / ms / 1e6
        print(f"  {T2:>6}{T2 * k / E:>17.1f}{ms:>9.2f} ms{rates[T2]:>7.1f} GFLOP/s"
              f"{4 * T2 * k * (C + d) / 1e6:>16.1f}")
    lo_t, hi_t = min(rates), max(rates)
    check(rates[hi_t] > 1.5 * rates[lo_t], f"{hi_t * k // E} rows per expert run the matmuls "
          f"{rates[hi_t] / rates[lo_t]:.1f}x faster per FLOP than {lo_t * k // E}: small batches pay for "
          "the total weights", timed=True)


def part_why_factors(args):
    """Part 2, continued: the grouped matmul's extra time split into three measured factors."""
    T, iters = (256, 5) if args.quick else (1024, 30)
    print("\n  where a grouped matmul's extra time goes (tinysparse/bench/grouped_why.py; NumPy's "
          "BLAS as it is):")
    with threadpool_limits(2):
        med = run_why(T, 128, warmup=2, iters=iters, emit=measured, indent="  ")
    shape = {label: m["one weight"] / m["dense"] for label, m in med.items()}
    weights = {label: m["E weights"] / m["one weight"] for label, m in med.items()}
    check(shape["E128 top-2 d2C"] > shape["E8 top-2 d2C"],
          f"the shape factor grows as the rows per expert fall: {shape['E8 top-2 d2C']:.2f}x at "
          f"E=8, {shape['E128 top-2 d2C']:.2f}x at E=128", timed=True)
    check(weights["E128 top-2 d2C"] > weights["E8 top-2 d2C"],
          f"so does the weights factor: {weights['E8 top-2 d2C']:.2f}x at E=8 (1 MB of weights), "
          f"{weights['E128 top-2 d2C']:.2f}x at E=128 (16 MB)", timed=True)


# ---- 3. The cost of each stage ----------------------------------------------------------------------

def part_stages(args):
    T = 256 if args.quick else 1024
    shapes = [(T, 128, 64, 8, 64)] if args.quick else [(T, 128, 8, 2, 256), (T, 128, 64, 8, 64)]
    iters = 5 if args.quick else 50
    section("3. The measured cost of each stage (timing.py), numpy vs numba, BLAS as it is")
    # thread counts are facts of the machine, not results: a measured line
    measured(f"  NumPy's BLAS threads: {numpy_blas_threads()}, Numba threads: "
             f"{numba.get_num_threads()}; numba's flavour here: "
             f"{'parallel' if parallel_pays() else 'serial'}")
    mm_rows = ("grouped_mm", "grouped_mm_dx", "grouped_mm_dw")
    for (T, C, E, k, d) in shapes:
        kw = dict(T=T, n_embd=C, n_expert=E, top_k=k, d_expert=d, iters=iters)
        res = time_primitives(["numpy", "numba"], **kw)
        res1 = time_primitives(["numpy", "numba"], blas_threads=1, **kw)   # numba: parallel flavour
        work = stage_work(T, C, E, k, d)
        tot = {b: sum(res[r][b] for r in ROWS) for b in ("numpy", "numba")}
        tot1 = {b: sum(res1[r][b] for r in ROWS) for b in ("numpy", "numba")}
        print(f"\n  T={T}, n_embd {C}, E={E} top-{k} d_expert {d} (S = {T * k} buffer rows), "
              f"median of {iters}:")
        print(f"    {'':<17}{'---- BLAS as it is ----':>24}{'--- BLAS 1 thread ---':>24}")
        print(f"    {'stage':<17}{'numpy':>12}{'numba':>12}{'numpy':>12}{'numba':>12}"
              f"{'MFLOP':>8}{'MB':>7}{'numba rate':>16}")
        for r in ROWS:
            mf, mb = work[r]
            ms = res[r]["numba"]
            rate = f"{mf / ms:.1f} GFLOP/s" if mf else f"{mb / ms:.1f} GB/s"
            print(f"    {r:<17}{res[r]['numpy']:9.3f} ms{ms:9.3f} ms{res1[r]['numpy']:9.3f} ms"
                  f"{res1[r]['numba']:9.3f} ms{mf:8.1f}{mb:7.2f}{rate:>16}")
        print(f"    {'total':<17}{tot['numpy']:9.3f} ms{tot['numba']:9.3f} ms{tot1['numpy']:9.3f} ms"
              f"{tot1['numba']:9.3f} ms")
        print("    (BLAS 1 thread: NumPy's BLAS held to one thread, numba in its parallel flavour;"
              "\n     numba rate: FLOP/s for the matmuls, bytes of rows read + written per second "
              "for the rest)")
        mm = {b: sum(res[r][b] for r in mm_rows) for b in tot}
        move = {b: tot[b] - mm[b] for b in tot}
        for b in tot:
            check(mm[b] > move[b], f"{b}: the grouped matmuls ({mm[b]:.2f} ms, {mm[b] / tot[b]:.0%})"
                  f" cost more than all the data movement together ({move[b]:.2f} ms)", timed=True)
        check(move["numba"] < move["numpy"],
              f"numba's data movement is {move['numpy'] / move['numba']:.1f}x faster than numpy's "
              f"(one compiled loop per stage, no temporaries)", timed=True)
        reps = 2 if args.quick else 5
        layer = {b: time_layer(b, T, C, E, k, d, reps) for b in ("numpy", "numba")}
        measured(f"    the whole MoE layer, forward + backward: numpy {layer['numpy']:.2f} ms, numba "
                 f"{layer['numba']:.2f} ms; the stages above are {tot['numba'] / layer['numba']:.0%} "
                 f"of numba's (the rest: router, GELU, losses, autograd)")


# ---- 4. The njit kernels ----------------------------------------------------------------------------

def part_kernels(args):
    section("4. The @njit kernels: one loop per stage, serial and parallel flavours")
    src = inspect.getsource(K.gather_kernel).splitlines()
    print("  numba_kernels.py, compiled twice (njit(parallel=True) and njit with prange = range):")
    print("".join(f"    | {line}\n" for line in src))
    with threadpool_limits(2, user_api="blas"):
        two = parallel_pays()
    with threadpool_limits(1, user_api="blas"):
        one = parallel_pays()
    measured(f"  parallel_pays(): NumPy BLAS at 2 threads -> {two}, at 1 thread -> {one} "
             f"(Numba has {numba.get_num_threads()} threads)")       # depends on the machine's cores
    check(not two and one == (numba.get_num_threads() > 1),
          "auto picks parallel only when NumPy's BLAS is single-threaded and Numba has threads")

    # The fight, in one kernel: a parallel gather right after a threaded NumPy matmul.
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1024, 128)).astype(np.float32)
    idx = rng.integers(0, 1024, 8192)
    out = np.empty((8192, 128), np.float32)
    a = rng.standard_normal((256, 256)).astype(np.float32)
    n = 10 if args.quick else 40

    def after_matmul(kernel, blas):
        with threadpool_limits(blas, user_api="blas"):
            kernel(x, idx, out)
            times = []
            for _ in range(n):
                np.matmul(a, a)                              # any matmul of the model: router, attention
                t0 = time.perf_counter()
                kernel(x, idx, out)
                times.append(time.perf_counter() - t0)
        return 1e3 * float(np.median(times))
    cases = {(f, b): after_matmul(getattr(K, f.upper()).gather_kernel, b)
             for f in ("parallel", "serial") for b in (2, 1)}
    print(f"  gather of 8192 x 128 float32 rows right after a 256^3 NumPy matmul, median of {n}:")
    print(f"    {'gather kernel':<15}{'NumPy BLAS 2 threads':>22}{'NumPy BLAS 1 thread':>21}")
    for f in ("parallel", "serial"):
        print(f"    {f:<15}{cases[f, 2]:>19.3f} ms{cases[f, 1]:>18.3f} ms")
    print("  (on 2 cores the parallel kernel shares its cores with OpenBLAS threads that spin after "
          "the matmul)")

    # The whole layer under both BLAS settings and all three dispatch flavours.
    T, C, E, k, d = (256, 64, 16, 4, 64) if args.quick else (1024, 128, 64, 8, 64)
    print(f"\n  MoE layer forward + backward, T={T}, n_embd {C}, E={E} top-{k} d {d}, best of "
          f"{3 if args.quick else 8}:")
    print(f"    {'NumPy BLAS threads':<20}" + "".join(f"{b:>16}" for b in
                                                      ("numpy", "numba-serial", "numba-parallel")))
    for blas in (2, 1):
        with threadpool_limits(blas, user_api="blas"):
            row = [time_layer(b, T, C, E, k, d, 3 if args.quick else 8)
                   for b in ("numpy", "numba-serial", "numba-parallel")]
        print(f"    {blas:<20}" + "".join(f"{ms:13.2f} ms" for ms in row))


# ---- 5. Determinism ---------------------------------------------------------------------------------

def part_determinism():
    section("5. Determinism: no atomics, every sum in a fixed order")
    runs = {b: (layer_step(b), layer_step(b)) for b in ("numpy", "numba-serial", "numba-parallel")}
    for b, (r1, r2) in runs.items():
        check(all(np.array_equal(u, v) for u, v in zip(r1, r2)),
              f"{b}: two forward + backward runs give bitwise the same output and {len(r1) - 1} "
              f"gradients")
    ref = runs["numpy"][0]
    for b in ("numba-serial", "numba-parallel"):
        err = max(float(np.abs(u - v).max() / (np.abs(v).max() + 1e-30))
                  for u, v in zip(runs[b][0], ref))
        check(err < 1e-5, f"{b} agrees with numpy to {err:.1e} (relative): other BLAS calls, "
              "other rounding")
    if numba.config.NUMBA_NUM_THREADS > 1:
        with threadpool_limits(1, user_api="blas"):
            saved = numba.get_num_threads()
            numba.set_num_threads(1)
            one = layer_step("numba-parallel")
            numba.set_num_threads(saved)
            many = layer_step("numba-parallel")
        check(all(np.array_equal(u, v) for u, v in zip(one, many)),
              "the parallel flavour on 1 Numba thread and on all of them: bitwise the same")
    v = np.random.default_rng(0).standard_normal(64).astype(np.float32)
    seq = {float(np.cumsum(v[np.random.default_rng(s).permutation(64)])[-1]) for s in range(50)}
    print(f"  the same 64 float32 numbers, summed left to right in 50 random orders: {len(seq)} "
          f"different results")
    check(len(seq) > 1, "float addition is not associative: an atomic add (order = thread arrival) "
          "would change the bits from run to run")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller shapes, fewer repeats (tests)")
    parser.add_argument("--out-dir", default="out/lesson06", help="accepted; this chapter writes nothing")
    args = parser.parse_args()
    start = time.perf_counter()
    part_walkthrough()
    part_alternatives(args)
    part_why_factors(args)
    part_stages(args)
    part_kernels(args)
    part_determinism()
    return summary(start)


if __name__ == "__main__":
    sys.exit(main())
