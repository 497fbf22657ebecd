"""The communication ledger: what expert parallelism sends, per token and per MoE layer.

Chapter 10's ledger counts FLOPs and memory bytes of every Function; this one counts the bytes
that LEAVE a rank (rows for experts another rank owns, and their gradients), the rows each rank
receives (its load: the straggler problem), and the seconds spent inside collectives. Rows a rank
keeps for its own experts cross no wire and are counted apart (`bytes_self`).

Per token and MoE layer, in the forward, a token with k experts sends k rows of C numbers to
their owners and gets k rows back: 2 k C b bytes (b bytes per number), of which the fraction
(P-1)/P crosses the wire under uniform routing. The backward sends the same again. The ledger
measures it; cost.py models it.
"""
import time
from collections import defaultdict

import numpy as np

from ..engine.function import is_grad_enabled


class CommLedger:
    """Counts of one rank. Fed by ExpertParallelMoE (record_layer, tally) and the training run
    (end_step); read with summary()."""

    def __init__(self, comm):
        self.comm = comm
        self.bytes_sent = defaultdict(int)       # phase -> bytes sent to other ranks
        self.bytes_self = defaultdict(int)       # phase -> bytes kept on this rank
        self.layer_calls = 0                     # MoE layer forwards counted
        self.tokens = {"forward": 0, "backward": 0}   # this rank's tokens: all forwards; those
                                                 # that build a graph (a backward follows)
        self.imbalance = []                      # per forward: max rows a rank got / mean
        self.steps = 0
        self.t0 = time.perf_counter()

    def tally(self, rows, counts, rank, phase):
        """AllToAll's hook: rows (N, C) left this rank, counts[p] of them for rank p."""
        row_bytes = rows.dtype.itemsize * int(np.prod(rows.shape[1:], dtype=np.int64))
        counts = np.asarray(counts)
        self.bytes_self[phase] += int(counts[rank]) * row_bytes
        self.bytes_sent[phase] += int(counts.sum() - counts[rank]) * row_bytes

    def record_layer(self, layer, tokens, recv):
        """One MoE forward: this rank's tokens, and the load per rank from the global counts."""
        self.layer_calls += 1
        self.tokens["forward"] += tokens
        if is_grad_enabled():
            self.tokens["backward"] += tokens
        per_rank = layer._global["counts"].reshape(self.comm.size, -1).sum(axis=1)
        mean = per_rank.mean()
        if mean > 0:
            self.imbalance.append(float(per_rank.max() / mean))

    def end_step(self):
        self.steps += 1

    def summary(self):
        """Bytes per token per MoE layer (this rank's, forward and backward), the rows' imbalance
        (mean and worst over forwards), and seconds in each kind of collective."""
        seconds = dict(getattr(getattr(self.comm, "watchdog", None), "seconds", {}))
        return {"world_size": self.comm.size, "moe_forwards": self.layer_calls,
                "tokens": self.tokens,
                "bytes_per_token_layer": {ph: self.bytes_sent[ph] / max(self.tokens[ph], 1)
                                          for ph in ("forward", "backward")},
                "bytes_self_per_token_layer": {ph: self.bytes_self[ph] / max(self.tokens[ph], 1)
                                               for ph in ("forward", "backward")},
                "imbalance_mean": float(np.mean(self.imbalance)) if self.imbalance else None,
                "imbalance_max": float(np.max(self.imbalance)) if self.imbalance else None,
                "seconds": seconds}
