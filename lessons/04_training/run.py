"""Chapter 04: training a tiny GPT. The schedule, a real training run, an exact resume, sampling.

    python lessons/04_training/run.py            # the whole chapter
    python lessons/04_training/run.py --quick    # fewer training steps (the tests use it)
    python lessons/04_training/run.py --out-dir somewhere/   # where the run folders go

Read lessons/04_training/README.md alongside; it explains tinysparse/training/ (data.py, loop.py,
evaluation.py, checkpoint.py, sampling.py) and tinysparse/optim.py. Every claim the script prints
is checked, and it exits with status 1 if any check fails.
"""
import argparse
import hashlib
import json
import math
import os
import re
import sys
import time

import numpy as np
import safetensors.numpy
from threadpoolctl import threadpool_limits

from tinysparse import optim
from tinysparse.gpt import GPTConfig
from tinysparse.lesson import check, section, summary
from tinysparse.training import TrainConfig, bits_per_byte, load_run, sample, train
from tinysparse.training.data import ByteTokenizer, get_batch, load_corpus



# The model of this chapter: 2 blocks, width 64, 32-byte context (~0.1M parameters).
MODEL = dict(n_layer=2, n_head=4, n_embd=64, block_size=32, dropout=0.0)
MAX_BYTES = 300_000


# ---- 1. Data: bytes in, shifted windows out -----------------------------------------------------

def part_data(args):
    section("1. Data: the byte tokenizer and shifted windows")
    tok = ByteTokenizer()
    ids = tok.encode("def f(x):")
    print(f"  'def f(x):' -> {ids.tolist()}")
    check(tok.decode(ids) == "def f(x):", "decode(encode(text)) == text (a token is a byte)")
    corpus = load_corpus("stdlib", MODEL["block_size"], MAX_BYTES, seed=args.seed)
    print(f"  corpus: {corpus!r}")
    x, y = get_batch(corpus.train, 4, MODEL["block_size"], np.random.default_rng(0))
    print(f"  a batch: x {x.shape}, y {y.shape}; row 0 x = {tok.decode(x[0])!r}")
    print(f"                                row 0 y = {tok.decode(y[0])!r}")
    check(np.array_equal(x[:, 1:], y[:, :-1]), "y is x shifted left by one (next-byte targets)")
    print(f"  uniform guessing over 256 bytes: ln 256 = {math.log(256):.3f} nats "
          f"= {bits_per_byte(math.log(256)):.1f} bits/byte")


# ---- 2. The learning-rate schedule --------------------------------------------------------------

def part_schedule(args):
    section("2. Linear warm-up, then cosine decay (optim.cosine_lr)")
    lr, min_lr, warmup, horizon = 2e-3, 1e-4, 100, 1000
    print(f"  max_lr {lr}, min_lr {min_lr}, warmup {warmup}, decay until step {horizon}")
    steps = [0, 49, 99, 100, 325, 550, 775, 999, 1000, 1200]
    values = [optim.cosine_lr(s, lr, warmup, horizon, min_lr) for s in steps]
    for s, v in zip(steps, values):
        bar = "#" * int(round(40 * v / lr))
        print(f"    step {s:>5}: lr {v:.2e}  {bar}")
    check(abs(values[2] - lr) < 1e-15, "the warm-up ends at exactly max_lr (step warmup-1)")
    mid = optim.cosine_lr((warmup + horizon) // 2, lr, warmup, horizon, min_lr)
    check(abs(mid - (lr + min_lr) / 2) < 1e-12, "half-way through the decay lr is (max+min)/2")
    check(values[-1] == min_lr and values[-2] == min_lr, "after the horizon lr stays at min_lr")


# ---- 3. Training ---------------------------------------------------------------------------------

def part_training(args):
    section(f"3. Training a tiny GPT for {args.steps} steps (tinysparse.training.train)")
    out_dir = os.path.join(args.out_dir, "run")
    tcfg = TrainConfig(data="stdlib", max_bytes=MAX_BYTES, batch_size=8, max_iters=args.steps,
                       lr=3e-3, min_lr=3e-4, warmup_iters=max(1, args.steps // 10),
                       eval_interval=args.steps, eval_iters=8 if args.quick else 20,
                       log_interval=max(1, args.steps // 4), checkpoint_interval=args.steps,
                       out_dir=out_dir, seed=args.seed, device="cpu", sample_tokens=0)
    t0 = time.perf_counter()
    summary = train(GPTConfig(**MODEL), tcfg)
    dt = time.perf_counter() - t0
    with open(os.path.join(out_dir, "log.jsonl")) as fh:
        log = [json.loads(line) for line in fh if line.strip()]
    before, after = log[0], log[-1]
    print(f"  val loss before: {before['val_loss']:.4f} nats = {before['val_bpb']:.3f} bits/byte "
          f"(step {before['step']})")
    print(f"  val loss after:  {after['val_loss']:.4f} nats = {after['val_bpb']:.3f} bits/byte "
          f"(step {after['step']})")
    print(f"  {args.steps} steps, evaluations and checkpoint in {dt:.1f} s")
    check(summary["status"] == "done" and summary["step"] == args.steps, "the run finished")
    check(after["val_loss"] < before["val_loss"] - 0.5,
          "validation loss fell by more than 0.5 nats")
    check(abs(before["val_loss"] - math.log(256)) < 0.5,
          "at initialisation the loss is near ln 256 (the model guesses uniformly)")
    check(os.path.exists(summary["checkpoint"]), f"checkpoint written to {summary['checkpoint']}")
    leftovers = [f for f in os.listdir(out_dir) if f.endswith(".tmp")]
    check(not leftovers, "no temporary files left behind (atomic write + os.replace)")
    with open(summary["checkpoint"]) as fh:
        meta = json.load(fh)                        # plain JSON: configs, step, generator states
    arrays = os.path.join(out_dir, meta["arrays"]["file"])
    with open(arrays, "rb") as fh:
        digest = hashlib.sha256(fh.read()).hexdigest()
    saved = safetensors.numpy.load_file(arrays)     # the arrays: names, dtypes, shapes, numbers
    # the arrays file is named after the step and its SHA-256, which varies with the machine's BLAS
    files = [re.sub(r"-[0-9a-f]{12}\.", "-<sha256>.", f) for f in sorted(os.listdir(out_dir))]
    print(f"  run folder: {', '.join(files)}")
    print(f"  the arrays file holds {len(saved)} arrays, e.g. "
          f"{', '.join(f'{k} {v.shape}' for k, v in list(saved.items())[:2])}")
    check(digest == meta["arrays"]["sha256"],
          "ckpt.json names its arrays file with the SHA-256 it has (two files, one checkpoint)")
    return out_dir


# ---- 4. Bit-identical resume ---------------------------------------------------------------------

def part_resume(args):
    n = args.resume_steps
    section(f"4. Resume: {n} steps straight vs {n // 2} + resume + {n - n // 2}")

    def cfg(folder, max_iters):
        # lr_decay_iters fixed at n: the half run must follow the same schedule as the full one
        return TrainConfig(data="stdlib", max_bytes=MAX_BYTES, batch_size=4, max_iters=max_iters,
                           lr=3e-3, min_lr=3e-4, warmup_iters=2, lr_decay_iters=n,
                           eval_interval=1000, eval_iters=2, log_interval=1000,
                           checkpoint_interval=1000, out_dir=os.path.join(args.out_dir, folder),
                           seed=args.seed + 1, device="cpu", sample_tokens=0)

    mcfg = GPTConfig(**{**MODEL, "dropout": 0.1})   # dropout on: the global generator must resume too
    train(mcfg, cfg("straight", n))
    train(mcfg, cfg("halves", n // 2))
    train(mcfg, cfg("halves", n), resume=True)
    _, _, a = load_run(os.path.join(args.out_dir, "straight"))
    _, _, b = load_run(os.path.join(args.out_dir, "halves"))
    names = sorted(a["model"])
    worst = max(float(np.max(np.abs(a["model"][k] - b["model"][k]))) for k in names)
    print(f"  {len(names)} parameter arrays compared; largest difference {worst}")
    check(all(np.array_equal(a["model"][k], b["model"][k]) for k in names),
          "parameters are bit-identical after the resume")
    check(a["history"] == b["history"], "the per-step losses are identical too")


# ---- 5. Sampling ---------------------------------------------------------------------------------

def part_sampling(args, run_dir):
    section("5. Sampling from the trained run (load_run, sample)")
    model, (mcfg, tcfg), ckpt = load_run(run_dir)
    print(f"  loaded step {ckpt['step']}: {model.num_parameters():,} parameters, "
          f"n_layer {mcfg.n_layer}, n_embd {mcfg.n_embd}")
    for temperature, top_k in ((0.8, 50), (1.5, None)):
        text = sample(run_dir, prompt="def ", max_new_tokens=120 if args.quick else 200,
                      temperature=temperature, top_k=top_k, seed=0)
        print(f"  ---- temperature {temperature}, top_k {top_k} ----")
        print("  " + text.replace("\n", "\n  "))
    again = sample(run_dir, prompt="def ", max_new_tokens=60, temperature=0.8, top_k=50, seed=0)
    check(again == sample(run_dir, prompt="def ", max_new_tokens=60, temperature=0.8, top_k=50,
                          seed=0), "the same seed gives the same text")
    check(again.startswith("def "), "the sample continues the prompt")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps (used by the tests)")
    parser.add_argument("--out-dir", default="out/lesson04", help="where the run folders go")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default 400, quick 40)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.steps is None:
        args.steps = 40 if args.quick else 400
    args.resume_steps = 6 if args.quick else 20
    # One BLAS thread: the thread count decides the order in which a matrix product's terms are
    # summed, and training amplifies a last-bit difference. With one thread the numbers are the
    # same whatever the machine's core count.
    threadpool_limits(1, user_api="blas")

    start = time.perf_counter()
    part_data(args)
    part_schedule(args)
    run_dir = part_training(args)
    part_resume(args)
    part_sampling(args, run_dir)

    return summary(start)


if __name__ == "__main__":
    sys.exit(main())
