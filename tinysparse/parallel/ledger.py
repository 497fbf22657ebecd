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
        self.calls = defaultdict(int)            # phase -> Alltoallv calls
        self.steps = 0
        self.step_seconds = defaultdict(float)   # collective -> seconds inside training steps
        self.step_calls = self.step_bytes = 0   # Alltoallv calls and bytes sent in steps
        self._at_step_start = None
        self.t0 = time.perf_counter()

    def tally(self, rows, counts, rank, phase):
        """AllToAll's hook: rows (N, C) left this rank, counts[p] of them for rank p."""
        row_bytes = rows.dtype.itemsize * int(np.prod(rows.shape[1:], dtype=np.int64))
        counts = np.asarray(counts)
        self.calls[phase] += 1
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

    def _seconds(self):
        return dict(getattr(getattr(self.comm, "watchdog", None), "seconds", {}))

    def _totals(self):
        return sum(self.calls.values()), sum(self.bytes_sent.values())

    def begin_step(self):
        """A training step starts: what the collectives have taken so far."""
        self._at_step_start = (self._seconds(), self._totals())

    def end_step(self):
        """A step's forward, backward and gradient reduction are done (the optimizer step
        communicates nothing): its collectives' seconds go to step_seconds."""
        self.steps += 1
        if self._at_step_start is not None:
            seconds, (calls, sent) = self._at_step_start
            for what, t in self._seconds().items():
                self.step_seconds[what] += t - seconds.get(what, 0.0)
            now_calls, now_sent = self._totals()
            self.step_calls += now_calls - calls
            self.step_bytes += now_sent - sent
            self._at_step_start = None

    def summary(self):
        """Bytes per token per MoE layer (this rank's, forward and backward), the rows' imbalance
        (mean and worst over forwards), and seconds in each kind of collective."""
        return {"world_size": self.comm.size, "moe_forwards": self.layer_calls,
                "tokens": self.tokens,
                "bytes_per_token_layer": {ph: self.bytes_sent[ph] / max(self.tokens[ph], 1)
                                          for ph in ("forward", "backward")},
                "bytes_self_per_token_layer": {ph: self.bytes_self[ph] / max(self.tokens[ph], 1)
                                               for ph in ("forward", "backward")},
                "imbalance_mean": float(np.mean(self.imbalance)) if self.imbalance else None,
                "imbalance_max": float(np.max(self.imbalance)) if self.imbalance else None,
                # seconds: every collective so far (evaluations and checkpoints included);
                # step_seconds: those inside training steps only
                "calls": dict(self.calls),
                "bytes_sent": dict(self.bytes_sent), "steps": self.steps,
                "step_seconds": dict(self.step_seconds),
                "step_calls": self.step_calls, "step_bytes": self.step_bytes, "seconds": self._seconds()}
