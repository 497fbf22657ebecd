"""Expert parallelism for the MoE layer: each of P ranks owns E/P experts, and tokens travel to
them.

One forward, on every rank at once (GShard, Lepikhin et al. 2020, section 3.2; Switch, Fedus et
al. 2021, section 5.6; DeepSpeed-MoE and Megatron-LM's token dispatcher do the same steps):

    1. route the rank's own tokens (the router is replicated: data parallel);
    2. plan locally, dropless: the buffer is grouped by expert, so by owner (rank p owns experts
       [p*E/P, (p+1)*E/P)); all-to-all of the counts tells each owner how many rows come;
    3. Alltoallv of the rows (dispatch); the owner regroups them by expert, keeping global token
       order, and drops beyond capacity exactly as a single process would;
    4. the owner's grouped matmuls (its E/P experts only);
    5. the reverse Alltoallv brings every answer home (a dropped row comes back as zeros);
    6. combine runs where the token lives, with its gates.

The backward mirrors it: the Functions of exchange.py send the gradients back the way the rows
came. The balance loss and the load statistics use the GLOBAL counts (an all-reduce of the
per-expert counts): Switch's f_e is a fraction over the whole batch, so each rank's loss term
is E * sum_e f_e(global) * P_e(local), and their mean over ranks is the single-process loss.
"""
import numpy as np

from ..engine.backend import array_module, to_numpy
from ..engine.tensor import Tensor
from ..moe.dispatch import capacity, get_backend
from ..moe.experts import Experts
from ..moe.layer import MoE
from ..moe.primitives import combine, gather_rows
from ..moe.router import TopKRouter
from ..nn import Parameter
from .comm import ParallelError
from .exchange import all_to_all, owner_layout, put_rows, take_rows

EXPERT_PARAMS = ("w1", "b1", "w2", "b2")      # Experts' stacked arrays, expert on axis 0


def local_experts(experts, lo, hi):
    """An Experts bank holding experts [lo, hi) of `experts` (copies of their weights)."""
    local = Experts.__new__(Experts)
    local.n_expert, local.n_embd, local.d_expert = hi - lo, experts.n_embd, experts.d_expert
    for name in EXPERT_PARAMS:
        p = getattr(experts, name)
        setattr(local, name, None if p is None else Parameter(p.data[lo:hi].copy()))
    return local


class ExpertParallelMoE(MoE):
    """A MoE layer whose experts are spread over the ranks of `comm`; same interface, same
    numbers as the MoE it is made from (on the global batch), made by `ExpertParallelMoE(moe,
    comm)`. Parameter names are the MoE's: `experts.w1` is (E/P, n_embd, d_expert) here.

    Refused with ParallelError: n_expert not divisible by P (the fix: an E that P divides),
    expert-choice routing (an expert's choice would need every rank's tokens), and the adaptive
    routers of chapter 09 (null experts, top-p): not wired for ranks yet."""

    def __init__(self, moe, comm, ledger=None):
        E, P = moe.n_expert, comm.size
        if E % P:
            raise ParallelError(f"n_expert={E} is not divisible by the {P} ranks: each rank must "
                                f"own E/P experts; use --n-expert {E + (P - E % P)} (or a rank "
                                f"count that divides {E})")
        if moe.router_kind != "topk" or type(moe.router) is not TopKRouter:
            raise ParallelError("--parallel expert needs token-choice top-k routing (router "
                                "'topk', no null experts or top-p): expert choice ranks every "
                                "rank's tokens together")
        vars(self).update(vars(moe))                     # the MoE's settings and modules
        self.comm, self.ledger = comm, ledger
        self.E_local = E // P
        self.lo = comm.rank * self.E_local
        self.experts = local_experts(moe.experts, self.lo, self.lo + self.E_local)
        self._global = None

    def extra_repr(self):
        return (super().extra_repr() + f", experts {self.lo}..{self.lo + self.E_local - 1} on "
                f"rank {self.comm.rank} of {self.comm.size}")

    def forward(self, x):
        x = x if isinstance(x, Tensor) else Tensor(x)
        shape = x.shape
        if not shape or shape[-1] != self.n_embd:
            raise ValueError(f"MoE(n_embd={self.n_embd}) got an input of shape {tuple(shape)}; "
                             f"its last axis must be {self.n_embd}")
        comm, P, E = self.comm, self.comm.size, self.n_expert
        x2 = x.reshape(-1, self.n_embd)                             # (T, C) this rank's tokens
        backend = get_backend(self.backend_name, x2.data)
        xp = array_module(x2.data)
        r = self.router(x2)                                         # expert_ids, gates (T, k)
        plan = backend.plan(r.expert_ids, E, None)                  # dropless: owners apply C
        counts = to_numpy(plan.counts).astype(np.int64)             # (E,) slots per expert
        send = counts.reshape(P, self.E_local)                      # (P, E/P) rows for rank p
        recv = comm.alltoall(send)                                  # (P, E/P) rows from rank p
        self._global = self._global_counts(counts, r)
        C = capacity(self.capacity_factor, self._global["slots"], E)
        index, offsets = owner_layout(recv, C)
        buffer = gather_rows(x2, plan, backend)                     # (S, C) grouped by owner
        tally = self.ledger.tally if self.ledger is not None else None
        received = all_to_all(buffer, send.sum(1), recv.sum(1), comm, tally)   # (N, C)
        index_dev = xp.asarray(index)
        rows = take_rows(received, index_dev)                       # (S_own, C) by local expert
        y = self.experts(rows, offsets if xp is np else xp.asarray(offsets), backend)
        answers = put_rows(y, index_dev, received.shape[0])         # (N, C), dropped rows 0
        back = all_to_all(answers, recv.sum(1), send.sum(1), comm, tally)      # (S, C) home
        out = combine(back, r.gates, plan, backend)                 # (T, C) gate-weighted sum
        if self.shared is not None:
            out = out + self.shared(x2)
        self.aux_loss = self._aux_loss(r)
        self._last_routing = (r.probs.data, plan)
        if self.ledger is not None:
            self.ledger.record_layer(self, x2.shape[0], recv)
        return self.dropout(out).reshape(shape)

    def _global_counts(self, counts, r):
        """One all-reduce: slots per expert, tokens and the entropy sum over every rank."""
        p = to_numpy(r.probs.data).astype(np.float64)
        entropy = float(-(p * np.log(np.maximum(p, 1e-30))).sum())
        T, k = r.expert_ids.shape
        local = np.concatenate([counts.astype(np.float64), [T, T * k, entropy]])
        total = self.comm.allreduce_sum(local)
        E = self.n_expert
        return {"counts": total[:E].astype(np.int64), "tokens": int(total[E]),
                "slots": int(total[E + 1]), "entropy": float(total[E + 2])}

    def _aux_loss(self, r):
        loss = None
        if self.balance == "aux" and self.aux_coef > 0:
            loss = self._balance_loss(r) * self.aux_coef
        if self.z_coef > 0:
            z = self.router.z_loss(r) * self.z_coef                 # a mean over local tokens
            loss = z if loss is None else loss + z
        return loss

    def _balance_loss(self, r):
        """Switch's E * sum_e f_e P_e (Fedus et al. 2021, eq. 4-6) with f_e over the global
        batch and P_e over this rank's tokens: the mean over ranks is the global loss."""
        counts = self._global["counts"]
        f = counts / max(int(counts.sum()), 1)                                 # (E,) constants
        xp = array_module(r.probs.data)
        P_e = r.probs.sum(axis=0) / max(r.probs.shape[0], 1)                   # (E,)
        return (P_e * xp.asarray(f).astype(P_e.dtype)).sum() * self.n_expert

    @property
    def stats(self):
        """MoE.stats over the global batch (every rank reports the same numbers)."""
        if self._global is None:
            return {}
        g = self._global
        counts, T = g["counts"], max(g["tokens"], 1)
        C = capacity(self.capacity_factor, g["slots"], self.n_expert)
        kept = int(counts.sum() if C is None else np.minimum(counts, C).sum())
        mean = counts.mean()
        return {"tokens_per_expert": counts, "experts_per_token": kept / T,
                "dropped_fraction": (int(counts.sum()) - kept) / max(int(counts.sum()), 1),
                "router_entropy": abs(g["entropy"] / T),
                "max_load": int(counts.max()), "mean_load": float(mean),
                "max_over_mean_load": float(counts.max() / mean) if mean > 0 else 0.0}

    def update_bias(self):
        """DeepSeek-V3's bias step on the GLOBAL load (an all-reduce of the routed counts), so
        every rank moves its replica of the bias the same way."""
        router = self.router
        if router.bias is None:
            return
        local = np.zeros(self.n_expert) if router._load is None else to_numpy(router._load)
        total = self.comm.allreduce_sum(np.asarray(local, dtype=np.float64))
        xp = array_module(router.bias.data)
        router._load = xp.asarray(total.astype(np.int64)) if total.sum() > 0 else None
        router.update_bias()


def expert_parallel(model, comm, ledger=None):
    """Replace every MoE layer of `model` by its ExpertParallelMoE (in place); returns the list
    of the new layers. Build the model identically on every rank first (same seed): each rank
    then keeps its own slice of the experts, and the initial weights are a single process's."""
    layers = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, MoE) and not isinstance(child, ExpertParallelMoE):
                layer = ExpertParallelMoE(child, comm, ledger)
                setattr(parent, name, layer)
                layers.append(layer)
    if not layers:
        raise ParallelError("--parallel expert needs a model with MoE layers (n_expert > 0), "
                            "e.g. --preset tiny-moe")
    return layers


def sharded_parameters(model):
    """{parameter name: (lo, hi)} of every expert array this rank holds a slice of."""
    out = {}
    for name, module in _named_modules(model):
        if isinstance(module, ExpertParallelMoE):
            for p in EXPERT_PARAMS:
                if getattr(module.experts, p) is not None:
                    out[f"{name}experts.{p}"] = (module.lo, module.lo + module.E_local)
    return out


def _named_modules(module, prefix=""):
    yield prefix, module
    for name, child in module.named_children():
        yield from _named_modules(child, f"{prefix}{name}.")
