"""Fingerprints of training and sampling: does a change keep the CPU's numbers bit for bit?

    python tools/fingerprint.py            # one sha256 per case, on this checkout
    python tools/fingerprint.py --threads 1
    python tools/fingerprint.py --root ../other-checkout    # that checkout's tinysparse

Each case builds a seeded model, takes a few AdamW steps (with gradient clipping, as the
training loop does) on fixed batches, then samples tokens with the KV cache; the hash covers
every loss, every parameter after the last step, the optimizer's moments and the tokens.
Run it on two checkouts (the one before a change and the one after) with the same thread
setting and compare the lines: an optimisation that claims to be bit-identical must leave
every hash unchanged. (OpenBLAS's bits depend on its thread count and on the CPU's kernels,
AVX2 or AVX-512: compare like with like, on one machine.)
"""
import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np


def _root():
    """--root's checkout (default: this file's), put first on the import path."""
    argv = sys.argv[1:]
    root = argv[argv.index("--root") + 1] if "--root" in argv[:-1] else Path(__file__).parent.parent
    return str(Path(root).resolve())


sys.path.insert(0, _root())

from tinysparse import optim  # noqa: E402
from tinysparse.engine import random as ts_random  # noqa: E402
from tinysparse.gpt import GPT, GPTConfig  # noqa: E402

BASE = dict(vocab_size=96, n_layer=2, n_head=4, n_embd=64, block_size=32)
CASES = {
    "dense float32": (dict(), np.float32),
    "dense float64": (dict(), np.float64),
    "dense dropout 0.1": (dict(dropout=0.1), np.float32),
    "moe E16 top-2 numba float32": (dict(n_expert=16, top_k=2, d_expert=128), np.float32),
    "moe E16 top-2 numba float64": (dict(n_expert=16, top_k=2, d_expert=128), np.float64),
    "moe E64 top-8 numba float32": (dict(n_expert=64, top_k=8, d_expert=32), np.float32),
    "moe E8 top-2 numpy float32": (dict(n_expert=8, top_k=2, dispatch_backend="numpy"), np.float32),
    "moe null experts": (dict(n_expert=8, top_k=2, n_null=2), np.float32),
    "moe top-p 0.7": (dict(n_expert=8, top_k=2, top_p=0.7), np.float32),
}


def fingerprint(extra, dtype, steps=3, batch=4):
    ts_random.manual_seed(0)
    model = GPT(GPTConfig(**BASE, **extra))
    if dtype == np.float64:
        for p in model.parameters():
            p.data = p.data.astype(np.float64)
    opt = optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
    rng = np.random.default_rng(0)
    h = hashlib.sha256()
    for _ in range(steps):
        tokens = rng.integers(0, BASE["vocab_size"], size=(batch, BASE["block_size"] + 1))
        opt.zero_grad()
        _, loss = model(tokens[:, :-1], tokens[:, 1:])
        loss.backward()
        optim.clip_grad_norm(model.parameters(), 1.0)
        opt.step()
        h.update(np.asarray(loss.data).tobytes())
    for name, p in model.named_parameters():
        h.update(name.encode() + p.data.tobytes())
    for a in opt.m + opt.v:
        h.update(a.tobytes())
    ts_random.manual_seed(1)
    h.update(model.generate(np.zeros((1, 1), dtype=np.int64), 40).tobytes())
    return h.hexdigest()[:16]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="BLAS threads (default: as is)")
    parser.add_argument("--root", default=None, help="the checkout whose tinysparse to import")
    args = parser.parse_args()
    from contextlib import nullcontext
    limit = nullcontext()
    if args.threads:
        from threadpoolctl import threadpool_limits
        limit = threadpool_limits(args.threads)
    import tinysparse
    print(f"tinysparse from {Path(tinysparse.__file__).parent}")
    with limit:
        for name, (extra, dtype) in CASES.items():
            print(f"{name:<32}{fingerprint(extra, dtype)}")


if __name__ == "__main__":
    main()
