"""Chapter 07: CUDA kernels with Numba. The execution model, the dispatch plan on the GPU, the naive
and the tiled grouped matmul, determinism, and the MoE layer on dispatch_backend='cuda'.

    python lessons/07_cuda_kernels/run.py               # the whole chapter
    python lessons/07_cuda_kernels/run.py --quick       # fewer cases, smaller shapes (the tests)
    python lessons/07_cuda_kernels/run.py --simulator   # the CPU simulator even where a GPU is

Without a GPU it runs every kernel in Numba's CUDA simulator, on the CPU, on tiny shapes (it picks
that mode by itself); on a GPU it runs them there, on larger shapes, and times them. Read
lessons/07_cuda_kernels/README.md alongside; it explains cuda_kernels/. Part 3 (the grouped
matmul) is in grouped_matmul.py beside this file. Every claim the script prints is checked, and
it exits with status 1 if any check fails. Wall-clock values carry their unit (ms, s, GFLOP/s,
GB/s) or sit on a line printed with lesson.measured(); why the mode was chosen goes to stderr (it
tells about the environment: the tests force the simulator, a reader's run finds no GPU), so the
output on stdout is the same in both.
"""
import argparse
import math
import sys
import time

import numpy as np

# ---- 0. Simulator or GPU? Decided before anything imports numba -----------------------------------
# numba reads NUMBA_ENABLE_CUDASIM once, when it is first imported; tinysparse and cuda_kernels
# import it lazily, so nothing above this line has. gpu_or_simulator.py (this folder) imports only
# the standard library; it sets NUMBA_ENABLE_CUDASIM to the mode it chose.
from gpu_or_simulator import choose_mode  # noqa: E402

MODE, WHY = choose_mode("--simulator" in sys.argv[1:])
SIM = MODE == "simulator"

from numba import cuda  # noqa: E402  (after the choice, on purpose)

import tinysparse as ts  # noqa: E402
import toy_kernels as toy  # noqa: E402  (this folder: the chapter's small kernels)
from cuda_kernels import host  # noqa: E402
from cuda_kernels import plan as K_plan  # noqa: E402
from tinysparse.moe.cuda_dispatch import CudaDispatch  # noqa: E402
from tinysparse.lesson import check, measured, section, summary  # noqa: E402
from tinysparse.moe import MoE  # noqa: E402
from tinysparse.moe.dispatch import NumpyDispatch, capacity, register_backend  # noqa: E402
# this folder: part 3, and rel_err and TOL, the float64 reference's yardstick parts 4 and 5 use too
from grouped_matmul import TOL, part_grouped_matmul, rel_err  # noqa: E402

REF = NumpyDispatch()


def show(a):
    return "    " + str(np.asarray(a)).replace("\n", "\n    ")


# ---- 1. The execution model ----------------------------------------------------------------------

@host.simulator_paced
def part_execution_model(args):
    section("1. A grid of blocks of threads: blockIdx * blockDim + threadIdx")
    n, block = 10, 4
    grid = math.ceil(n / block)
    b_of, t_of, i_of = (cuda.to_device(np.full(n, -1, np.int64)) for _ in range(3))
    toy.where_am_i[grid, block](b_of, t_of, i_of)              # kernel[grid, block](arguments)
    b_of, t_of, i_of = b_of.copy_to_host(), t_of.copy_to_host(), i_of.copy_to_host()
    print(f"  n = {n} elements, blocks of {block} threads: grid = ceil({n}/{block}) = {grid} blocks, "
          f"{grid * block} threads")
    print(f"    blockIdx.x   {b_of.tolist()}\n    threadIdx.x  {t_of.tolist()}\n"
          f"    i = blockIdx.x * {block} + threadIdx.x = {i_of.tolist()}")
    check(np.array_equal(i_of, np.arange(n)) and np.array_equal(i_of, b_of * block + t_of),
          "every element written once, by the thread whose global index it is")
    if SIM:   # on a GPU an unguarded write past the end corrupts memory silently, or faults later
        try:
            toy.where_am_i_unguarded[grid, block](np.zeros(n, np.int64))
            caught = None
        except IndexError as exc:
            caught = str(exc)
        print("  without the bounds guard the simulator stops at the first stray write:")
        measured(f"    {caught}")     # which spare thread writes first depends on thread timing
        check(caught is not None, f"the {grid * block - n} spare threads of the last block write past "
              "the end without `if i < n` (the simulator catches it; a GPU would not)")

    rows, cols = 5, 7
    grid2, block2 = host.launch_2d(rows, cols, side=4)
    owner = cuda.to_device(np.full((rows, cols), -1, np.int64))
    toy.block_map[grid2, block2](owner)
    print(f"\n  a 2-D launch over a {rows} x {cols} output, blocks of {block2} threads, grid {grid2}: "
          f"which block owns each element\n{show(owner.copy_to_host())}")
    check((owner.copy_to_host() >= 0).all(), "2-D: col = blockIdx.x*blockDim.x + threadIdx.x, row "
          "likewise with y; every element has an owner")

    m = 37 if SIM else 10_000_019
    a, b = (np.random.default_rng(s).standard_normal(m).astype(np.float32) for s in (1, 2))
    d_a, d_b, d_out = cuda.to_device(a), cuda.to_device(b), cuda.device_array(m, np.float32)
    grid_m, block_m = host.launch_1d(m, 16 if SIM else 256)
    toy.vector_add[grid_m, block_m](d_a, d_b, d_out)
    check(np.array_equal(d_out.copy_to_host(), a + b), f"vector add, n = {m:,} (not a multiple of "
          f"{block_m}): {grid_m:,} blocks of {block_m} threads, equal to NumPy's a + b bit for bit")
    if not SIM:
        ms = toy.median_ms(lambda: toy.vector_add[grid_m, block_m](d_a, d_b, d_out), 20)
        measured(f"  {ms:.3f} ms: {3 * 4 * m / ms / 1e6:.0f} GB/s of global memory traffic "
                 "(reads a and b, writes out)")


# ---- 2. The dispatch plan: histogram, scan, stable ranks -------------------------------------

@host.simulator_paced
def part_plan(args):
    section("2. The dispatch plan on the GPU: chunk histogram, scans, stable ranks")
    ids = np.array([[2, 0], [2, 3], [0, 2], [3, 2], [2, 0], [0, 3]])     # expert 1 gets nothing
    T, k = ids.shape
    E, chunk = 4, 3
    flat = ids.reshape(-1)
    P = math.ceil(flat.size / chunk)
    d_ids = cuda.to_device(flat)
    hist = cuda.device_array((E, P), np.int64)
    counts, kept = cuda.device_array(E, np.int64), cuda.device_array(E, np.int64)
    offsets = cuda.device_array(E + 1, np.int64)
    rank, pos = cuda.device_array(T * k, np.int64), cuda.device_array(T * k, np.int64)
    print(f"  T = {T} tokens, top-{k}, E = {E} experts; slot s = t*k + j; chunks of {chunk} slots: "
          f"P = {P} threads\n  expert of each slot: {flat.tolist()}")
    K_plan.chunk_histogram[host.launch_1d(P)](d_ids, chunk, hist)
    print(f"  1. chunk_histogram, thread p counts chunk p: hist[e, p]\n{show(hist.copy_to_host())}")
    K_plan.scan_chunks[host.launch_1d(E)](hist, -1, counts, kept)
    print(f"  2. scan_chunks, thread e scans row e (exclusive): e's slots in the chunks before p\n"
          f"{show(hist.copy_to_host())}\n     row totals = counts {counts.copy_to_host().tolist()}")
    K_plan.exclusive_scan(kept, offsets)
    S = int(offsets.copy_to_host()[-1])
    print(f"  3. exclusive_scan of the counts (one block, shared memory): offsets "
          f"{offsets.copy_to_host().tolist()}")
    token_index = cuda.device_array(S, np.int64)
    K_plan.place_slots[host.launch_1d(P)](d_ids, chunk, k, -1, hist, offsets, rank, pos, token_index)
    print(f"  4. place_slots, thread p walks its chunk: rank {rank.copy_to_host().tolist()}\n"
          f"     buffer row of each slot {pos.copy_to_host().tolist()}; token of each row "
          f"{token_index.copy_to_host().tolist()}")
    ref = REF.plan(ids, E, None)
    same = all(np.array_equal(a.copy_to_host().reshape(np.shape(r)), r) for a, r in
               [(token_index, ref.token_index), (pos, ref.slot_position), (offsets, ref.offsets),
                (counts, ref.counts), (rank, ref.rank)])
    check(same, "the four kernels give NumpyDispatch.plan's arrays exactly (stable sort, bincount, "
          "cumsum)")
    check(ref.offsets[1] == ref.offsets[2], "an empty expert is an empty segment: offsets[1] == "
          "offsets[2]")

    print("\n  the scan inside exclusive_scan (Hillis-Steele: at step d, add the value d places left):")
    vals = [3, 1, 4, 1, 5, 9, 2, 6]
    for label, row in toy.hillis_steele_trace(vals):
        print(f"    {label:<7} {row.tolist()}")
    print(f"    exclusive = [0] + inclusive[:-1]; {len(vals)} values: log2 = "
          f"{int(math.log2(len(vals)))} steps, {sum(len(vals) - d for d in (1, 2, 4))} additions "
          f"(a serial scan: {len(vals) - 1})")
    for n, max_block in ([(8, 8), (21, 8)] if SIM else [(8, 8), (21, 8), (5000, 1024)]):
        v = np.random.default_rng(n).integers(0, 50, n)
        out = cuda.device_array(n + 1, np.int64)
        K_plan.exclusive_scan(cuda.to_device(v), out, max_block=max_block)
        check(np.array_equal(out.copy_to_host(), np.concatenate([[0], np.cumsum(v)])),
              f"exclusive_scan of {n} values in pieces of {max_block} (the carry joins the pieces)")

    rng = np.random.default_rng(0)
    cases = [("random, dropless", 12, 2, 5, None), ("all on one expert", 9, 1, 4, None),
             ("capacity factor 0.5", 12, 2, 5, 0.5)]
    if not args.quick:
        cases += [("capacity factor 1.0", 30, 2, 6, 1.0), ("one token", 1, 1, 1, None)]
    if not SIM:
        cases += [("a training batch", 8192, 8, 64, 1.25)]
    for name, T, k, E, cf in cases:
        ids = np.stack([rng.choice(E, k, replace=False) for _ in range(T)])
        if name == "all on one expert":
            ids[:] = E - 1
        C = capacity(cf, T * k, E)
        ref = REF.plan(ids, E, C)
        for chunk in ([1, 5, 64] if not args.quick else [5]):
            got = CudaDispatch(plan_chunk=chunk).plan(ids, E, C)
            same = all(np.array_equal(getattr(got, f), getattr(ref, f)) for f in
                       ("token_index", "slot_position", "offsets", "counts", "rank"))
            check(same, f"plan = NumPy's: {name} (T={T}, k={k}, E={E}, C={C}, dropped "
                  f"{ref.n_dropped}), chunk {chunk}")


# ---- 4. Determinism ------------------------------------------------------------------------------

@host.simulator_paced
def part_determinism(args):
    section("4. Determinism: one owner per output, sums in a fixed order, no float atomics")
    v = np.random.default_rng(0).standard_normal(10_000).astype(np.float32)
    orders = [np.random.default_rng(s).permutation(v.size) for s in range(6)]
    sums = {float(np.cumsum(v[o])[-1]) for o in orders}      # cumsum: left to right, in float32
    print(f"  the same 10,000 float32 numbers added left to right in 6 orders: {len(sums)} different "
          f"sums, from {min(sums)!r} to {max(sums)!r}")
    check(len(sums) > 1, "float addition is not associative: the order of a sum changes its last bits")

    n = 64 if SIM else 1 << 20
    grid, block = host.launch_1d(n, 32 if SIM else 256)
    racy, atomic = cuda.to_device(np.zeros(1, np.int64)), cuda.to_device(np.zeros(1, np.int64))
    toy.racy_count[grid, block](racy)
    toy.atomic_count[grid, block](atomic)
    # What a race and a float atomic give depends on when the threads run: on a GPU, and in the
    # simulator too (its threads switch every 0.1 ms here). Measured lines, like a wall time.
    measured(f"  {n:,} threads each add 1 to one counter: plain += gives "
             f"{int(racy.copy_to_host()[0]):,}" + (" (simulated threads seldom switch inside one "
                                                  "+=: a race rarely shows here)" if SIM else ""))
    check(int(atomic.copy_to_host()[0]) == n, f"cuda.atomic.add gives {n:,}: integer atomics are exact "
          "in any order")
    vals = np.random.default_rng(1).standard_normal(n).astype(np.float32)
    d_vals, bits = cuda.to_device(vals), set()
    for _ in range(5):
        total = cuda.to_device(np.zeros(1, np.float32))
        toy.atomic_sum[grid, block](d_vals, total)
        bits.add(float(total.copy_to_host()[0]).hex())
    measured(f"  a float atomic sum of {n:,} values, 5 runs: {len(bits)} different result(s) "
             "(added in the order the threads arrive)")

    rng = np.random.default_rng(2)
    T, k, E, C = (9, 2, 4, 13) if SIM else (4096, 8, 64, 512)
    ids = np.stack([rng.choice(E, k, replace=False) for _ in range(T)])
    plan = REF.plan(ids, E, capacity(1.0, T * k, E))
    x, g, w = (rng.standard_normal(s).astype(np.float32) for s in ((plan.n_kept, C), (T, C), (E, C, C)))
    gates = rng.uniform(0.1, 1, (T, k)).astype(np.float32)
    be = CudaDispatch()

    def everything(backend):
        dw, db = backend.grouped_mm_dw(x, x, plan.offsets)
        return [backend.grouped_mm(x, w, None, plan.offsets), backend.grouped_mm_dx(x, w, plan.offsets),
                dw, db, backend.combine(x, gates, plan.slot_position),
                *backend.combine_backward(g, x, gates, plan.slot_position),
                backend.scatter(x, plan.slot_position)]
    first, second = everything(be), everything(be)
    check(all(np.array_equal(a, b) for a, b in zip(first, second)), "grouped matmul, dX, dW, db, "
          "combine and its backward, scatter: two runs, the same bits")
    naive = everything(CudaDispatch(matmul="naive", tile=be.tile))
    if SIM:
        check(all(np.array_equal(a, b) for a, b in zip(first[:3], naive[:3])),
              "tiled == naive bit for bit: every output adds its terms in the same order")
    else:   # on a GPU the compiler may fuse multiply-adds differently in the two kernels
        err = max(rel_err(a, b.astype(np.float64)) for a, b in zip(first[:3], naive[:3]))
        check(err < TOL, f"tiled == naive up to rounding on the GPU (max error {err:.1e})")


# ---- 5. The MoE layer on dispatch_backend='cuda' -------------------------------------------------

def layer_run(backend, x_np, w_np, router, cf):
    ts.manual_seed(0)
    layer = MoE(6, 5, top_k=2, d_expert=7, n_shared=1, router=router, capacity_factor=cf,
                dispatch_backend=backend)
    layer.astype(np.float64)
    x = ts.Tensor(x_np, requires_grad=True)
    out = layer(x)
    ((out * w_np).sum() + layer.aux_loss).backward()
    return [out.data, x.grad, *(p.grad for p in layer.parameters())], layer


def part_moe_layer(args):
    section("5. The MoE layer, forward and backward, dispatch_backend='cuda' vs 'numpy'")
    register_backend("cuda naive", CudaDispatch(matmul="naive"))
    rng = np.random.default_rng(0)
    x_np, w_np = rng.standard_normal((2, 7, 6)), rng.standard_normal((2, 7, 6))
    cases = [("topk", 1.0)] + ([] if args.quick else [("topk", None), ("expert_choice", 1.0)])
    for router, cf in cases:
        ref, layer = layer_run("numpy", x_np, w_np, router, cf)
        for backend in ("cuda", "cuda naive"):
            t0 = time.perf_counter()
            got, _ = layer_run(backend, x_np, w_np, router, cf)
            err = max(rel_err(a, r) for a, r in zip(got, ref))
            check(err < 1e-10, f"{router} routing, capacity factor {cf}, {backend:<10}: output and all "
                  f"{len(got) - 1} gradients equal NumPy's (max error {err:.0e}, "
                  f"dropped {layer.stats['dropped_fraction']:.0%}, {time.perf_counter() - t0:.2f} s)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer cases, smaller shapes (the tests)")
    parser.add_argument("--out-dir", default="out/lesson07", help="accepted for the lesson convention; "
                        "nothing is written")
    parser.add_argument("--simulator", action="store_true", help="the CUDA simulator even on a GPU")
    args = parser.parse_args()
    start = time.perf_counter()
    if SIM:
        print("mode: the CUDA SIMULATOR, on the CPU: every GPU thread is a Python thread, shapes are "
              "tiny, timings mean nothing")
        print(f"  why: {WHY}", file=sys.stderr)
    else:
        if not cuda.is_available():
            print(f"mode: GPU asked for ({WHY}) but Numba finds no CUDA device; run without "
                  "NUMBA_ENABLE_CUDASIM=0 to use the simulator")
            return 2
        if host.compile_problem() is not None:   # numba-cuda 0.30 with NumPy 2.5, say: one line
            print(f"mode: GPU asked for, but {host.compile_problem()}")
            return 2
        name = cuda.get_current_device().name
        print(f"mode: GPU, {name.decode() if isinstance(name, bytes) else name}")
        print(f"  why: {WHY}", file=sys.stderr)
    part_execution_model(args)
    part_plan(args)
    part_grouped_matmul(args)
    part_determinism(args)
    part_moe_layer(args)

    return summary(start, f" ({MODE})")


if __name__ == "__main__":
    sys.exit(main())
