"""Chapter 03, part 5's task and its pictures: associative recall, and the attention it learns.

A sequence holds 8 (key, value) pairs, then 4 queries of those keys; the target at a query is its
key's value. A model can only answer by matching the query to the key's position (attention),
which is what part 5 of run.py trains a 1-layer GPT to do and then looks at.
"""
import math
import os

import numpy as np

import tinysparse as ts
from tinysparse import functional as F
from tinysparse.engine.tensor import Tensor

N_KEY, N_VAL, N_PAIR, N_QUERY = 8, 8, 8, 4
PAIR0, QUERY0, ANSWER0 = 0, N_KEY * N_VAL, N_KEY * N_VAL + N_KEY   # token id ranges
VOCAB = ANSWER0 + N_VAL                                             # 64 pairs + 8 queries + 8 answers
SEQ = N_PAIR + N_QUERY


def token_name(i):
    if i < QUERY0:
        return "ABCDEFGH"[i // N_VAL] + str(i % N_VAL)                 # "C5": key C holds value 5
    if i < ANSWER0:
        return "ABCDEFGH"[i - QUERY0] + "?"                            # "C?": what does C hold?
    return "=" + str(i - ANSWER0)


def make_batch(n, rng):
    """Associative recall: 8 (key, value) pairs with distinct keys, then 4 queries of those keys.
    The target at a query is the queried key's value; other positions have no target (-1).
    Returns tokens (n, SEQ), targets (n, SEQ), and the position of the pair each query needs."""
    keys = np.argsort(rng.random((n, N_KEY)), axis=1)[:, :N_PAIR]     # distinct keys per sequence
    vals = rng.integers(0, N_VAL, size=(n, N_PAIR))
    where = rng.integers(0, N_PAIR, size=(n, N_QUERY))                # which pair each query asks for
    idx = np.concatenate([PAIR0 + keys * N_VAL + vals,
                          QUERY0 + np.take_along_axis(keys, where, 1)], axis=1)
    targets = np.full((n, SEQ), -1)
    targets[:, N_PAIR:] = ANSWER0 + np.take_along_axis(vals, where, 1)
    return idx, targets, where


def attention_probs(model, idx):
    """P (B, nh, T, T) of the first block, recomputed from its q and k exactly as
    functional.Attention.forward computes it (the library returns only P @ V)."""
    blk = model.h[0]
    with ts.no_grad():
        T = idx.shape[1]
        x = model.wte(idx) + model.wpe(np.arange(T))                  # (B, T, C)
        qkv = blk.attn.c_attn(blk.ln_1(x)).data                       # (B, T, 3C)
        y_lib = F.causal_self_attention(Tensor(qkv), model.config.n_head).data
    B, _, C3 = qkv.shape
    nh = model.config.n_head
    hd = C3 // 3 // nh
    q, k, v = qkv.reshape(B, T, 3, nh, hd).transpose(2, 0, 3, 1, 4)  # (B, nh, T, hd) each
    s = q @ k.swapaxes(-1, -2) / math.sqrt(hd)                        # (B, nh, T, T)
    s[..., np.triu(np.ones((T, T), dtype=bool), k=1)] = -np.inf
    p = np.exp(s - s.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    y = (p @ v).transpose(0, 2, 1, 3).reshape(B, T, C3 // 3)
    return p, float(np.abs(y.astype(np.float64) - y_lib).max())


RAMP = " .:-=+*#%@"                                                   # 0 ... 1, ten shades


def ascii_heatmaps(p, labels, n_head):
    """Print one sequence's attention, heads side by side: rows are queries, columns keys."""
    cols = "".join(f"{lab:>3}" for lab in labels)
    print(("         " + "   ".join(f"head {h}".ljust(3 * len(labels)) for h in range(n_head))).rstrip())
    print("         " + "   ".join(cols for _ in range(n_head)))
    for t, lab in enumerate(labels):
        cells = []
        for h in range(n_head):
            cells.append("".join(f"  {RAMP[min(int(x * len(RAMP)), len(RAMP) - 1)]}"
                                 if j <= t else "  ·" for j, x in enumerate(p[h, t])))
        print((f"  {t:2d} {lab:>3} " + "   ".join(cells)).rstrip())


def save_png(p, labels, where, args):
    try:
        import matplotlib
        matplotlib.use("Agg")  # write files, never open a window
        import matplotlib.pyplot as plt
    except ImportError:
        print("  matplotlib is not installed: no picture (pip install matplotlib, or '.[plot]')")
        return
    n_head, T = p.shape[0], p.shape[-1]
    fig, axes = plt.subplots(1, n_head, figsize=(5.2 * n_head, 5), constrained_layout=True)
    for h, ax in enumerate(np.atleast_1d(axes)):
        masked = np.where(np.triu(np.ones((T, T), dtype=bool), k=1), np.nan, p[h])
        im = ax.imshow(masked, cmap="viridis", vmin=0, vmax=1)
        ax.scatter(where, np.arange(N_PAIR, T), s=160, facecolors="none", edgecolors="red",
                   linewidths=1.5)
        ax.set_xticks(range(T), labels, rotation=90)
        ax.set_yticks(range(T), labels)
        ax.set_xlabel("key position (attended to)")
        ax.set_ylabel("query position (attending)")
        ax.set_title(f"head {h}")
    fig.colorbar(im, ax=axes, shrink=0.8, label="attention probability")
    fig.suptitle("Associative recall: attention of a trained 1-layer GPT\n"
                 "red circles: the pair each query asks for; white: the masked future")
    os.makedirs(args.out_dir, exist_ok=True)
    path = os.path.join(args.out_dir, "attention.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"  saved {path}")
