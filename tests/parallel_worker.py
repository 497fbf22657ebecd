"""What tests/test_parallel*.py run on each rank under mpiexec (and once in-process for the
single-process reference). Not a test module itself (no test_ prefix).

    python tests/parallel_worker.py train OUT_DIR STEPS [--resume] [--single] [--float32] [--E N]
                                    [--capacity F] [--device cuda]
        trains the float64 tiny MoE (tiny_configs) for STEPS steps with --parallel expert (or in
        one process with --single) and writes OUT_DIR/result-<rank>.npz: the loss history and
        every full parameter (rank 0 after gathering)
    python tests/parallel_worker.py layer OUT_DIR CASE|all
        one MoE layer forward + backward with routing forced by CASE (tests/layer_case.py:
        skewed, uneven, capacity), float64; rank 0 writes the gathered results
    python tests/parallel_worker.py die|hang OUT_DIR
        rank 1 exits (die) or sleeps (hang) at the start; rank 0 must stop with a one-line
        error after the collective timeout (5 s), nothing written
"""
import contextlib
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tinysparse.parallel.training as ptraining   # noqa: E402
import tinysparse.training.loop as loop             # noqa: E402
from tinysparse.gpt import GPT, GPTConfig           # noqa: E402
from tinysparse.training.config import TrainConfig  # noqa: E402


def float64_gpt(config):
    """GPT with float64 parameters (built as float32 from the seed, then widened)."""
    return GPT(config).astype(np.float64)


@contextlib.contextmanager
def float64_models(on=True):
    """While inside: the training loops (one process and parallel) build float64 GPTs. Restored
    on the way out, so an in-process caller (the pytest session) is left as it was."""
    saved = ptraining.GPT, loop.GPT
    if on:
        ptraining.GPT = loop.GPT = float64_gpt
    try:
        yield
    finally:
        ptraining.GPT, loop.GPT = saved


def tiny_configs(out_dir, steps, n_expert=4, batch_size=4, device="cpu", **model):
    mcfg = GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=256, dropout=0.0,
                     n_expert=n_expert, top_k=2, d_expert=12, **model)
    tcfg = TrainConfig(data="synthetic", max_bytes=20000, batch_size=batch_size, max_iters=steps,
                       lr=1e-2, warmup_iters=1, eval_interval=1000, eval_iters=1,
                       checkpoint_interval=2, out_dir=out_dir, seed=3, sample_tokens=0,
                       log_interval=1000, device=device)
    return mcfg, tcfg


def train(out_dir, steps, resume, single, float32, n_expert, capacity, device="cpu"):
    model = {"capacity_factor": capacity} if capacity else {}
    mcfg, tcfg = tiny_configs(out_dir, steps, n_expert, device=device, **model)
    with float64_models(not float32):
        if single:
            summary = loop.train(mcfg, tcfg, resume=resume)
            rank = 0
        else:
            from tinysparse.parallel import world
            comm = world(timeout=60)
            summary = ptraining.train_parallel(mcfg, tcfg, comm, resume=resume)
            rank = comm.rank
    from tinysparse.training.checkpoint import load_checkpoint
    if rank == 0:
        ckpt = load_checkpoint(out_dir)
        arrays = {f"model/{k}": v for k, v in ckpt["model"].items()}
        arrays.update({f"m/{n}": a for n, a in zip(ckpt["optimizer"]["params"],
                                                   ckpt["optimizer"]["m"])})
        np.savez(os.path.join(out_dir, "result.npz"), history=np.array(summary["history"]),
                 **arrays)
        if "parallel" in summary:
            import json
            with open(os.path.join(out_dir, "comm.json"), "w") as fh:
                json.dump(summary["parallel"], fh)


def main(argv):
    mode, out_dir = argv[0], argv[1]
    if mode == "train":
        capacity = float(argv[argv.index("--capacity") + 1]) if "--capacity" in argv else None
        n_expert = int(argv[argv.index("--E") + 1]) if "--E" in argv else 4
        device = argv[argv.index("--device") + 1] if "--device" in argv else "cpu"
        train(out_dir, int(argv[2]), "--resume" in argv, "--single" in argv,
              "--float32" in argv, n_expert, capacity, device)
    elif mode == "layer":
        from layer_case import CASES, run_layer_case
        for case in CASES if argv[2] == "all" else [argv[2]]:
            run_layer_case(out_dir, case)
    elif mode in ("die", "hang"):
        from tinysparse.parallel import world
        comm = world(timeout=5)
        if comm.rank == 1 and mode == "die":
            os._exit(3)           # gone without a word
        if comm.rank == 1:
            import time
            time.sleep(600)       # alive but silent: rank 0 waits in its first collective
        mcfg, tcfg = tiny_configs(out_dir, 4)
        with float64_models():
            ptraining.train_parallel(mcfg, tcfg, comm)


if __name__ == "__main__":
    main(sys.argv[1:])
