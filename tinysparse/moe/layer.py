"""The Mixture-of-Experts layer: a drop-in replacement for the dense MLP of a transformer block.

    out(x) = sum over the token's chosen experts e of gate_e(x) * FFN_e(x)  +  shared(x)

(Shazeer et al. 2017, eq. 1; shared experts from DeepSeekMoE, Dai et al. 2024, eq. 9.) Only the k
chosen experts run on a token, so parameters grow with n_expert while compute per token stays
that of k small FFNs. The pieces: router.py decides, dispatch.py moves the rows, experts.py computes.
"""
import math

import numpy as np

from .. import nn
from .._checks import describe, is_int
from ..engine.backend import to_numpy
from ..engine.tensor import Tensor
from .dispatch import capacity, get_backend, resolve_backend_name
from .primitives import combine, gather_rows
from .experts import Experts, SharedExperts
from .router import SCORES, ExpertChoiceRouter, Router, TopKRouter

ROUTERS = ("topk", "expert_choice")
BALANCES = ("aux", "bias", "none")


def _check(ok, setting, value, allowed):
    if not ok:
        raise ValueError(f"MoE {setting}={value!r} is invalid: {setting} must be {allowed}")


def _check_range(setting, value, low, high=None, low_open=False, high_open=False, none=None):
    """A finite number in the range (NaN and the infinities never are); none: what None means,
    when None is allowed."""
    if none is not None and value is None:
        return
    ok = (not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))
          and math.isfinite(value) and (value > low if low_open else value >= low)
          and (high is None or (value < high if high_open else value <= high)))
    allowed = describe(low, high, low_open, high_open)
    _check(ok, setting, value, allowed if none is None else f"None ({none}) or {allowed}")


def check_settings(n_embd, n_expert, top_k, d_expert=None, n_shared=0, router="topk",
                   score="softmax", capacity_factor=None, balance="aux", aux_coef=0.01,
                   z_coef=0.001, jitter=0.0, dispatch_backend="auto", bias_update_rate=0.001):
    """Refuse a MoE setting outside its domain, with a ValueError that names it and its range.
    n_expert=None checks everything that does not depend on the number of experts (GPTConfig
    of a dense model: the MoE flags must still make sense, though no MoE is built)."""
    _check(is_int(n_embd) and n_embd >= 1, "n_embd", n_embd, "an integer >= 1")
    if n_expert is not None:
        _check(is_int(n_expert) and n_expert >= 1, "n_expert", n_expert, "an integer >= 1")
    top_range = "an integer >= 1" if n_expert is None else f"an integer in [1, n_expert={n_expert}]"
    _check(is_int(top_k) and 1 <= top_k <= (n_expert or top_k), "top_k", top_k, top_range)
    _check(is_int(n_shared) and n_shared >= 0, "n_shared", n_shared, "an integer >= 0")
    _check(d_expert is None or (is_int(d_expert) and d_expert >= 1), "d_expert", d_expert,
           "None (the dense MLP's compute) or an integer >= 1")
    _check(router in ROUTERS, "router", router, f"one of {', '.join(ROUTERS)}")
    _check(score in SCORES, "score", score, f"one of {', '.join(SCORES)}")
    _check(balance in BALANCES, "balance", balance, f"one of {', '.join(BALANCES)}")
    _check_range("capacity_factor", capacity_factor, 0, low_open=True, none="dropless")
    _check(not (router == "expert_choice" and balance == "bias"), "balance", balance,
           "'aux' or 'none' with router='expert_choice' (it is balanced by construction)")
    for name, value in (("aux_coef", aux_coef), ("z_coef", z_coef),
                        ("bias_update_rate", bias_update_rate)):
        _check_range(name, value, 0)
    _check_range("jitter", jitter, 0, 1, high_open=True)
    try:
        resolve_backend_name(dispatch_backend)                     # refuse an unknown name now
    except ValueError as exc:
        raise ValueError(f"MoE dispatch_backend={dispatch_backend!r} is invalid: {exc}") from None


class MoE(nn.Module):
    """A sparse feed-forward layer: (B, T, n_embd) -> (B, T, n_embd).

    n_expert, top_k, d_expert   E experts of hidden width d_expert; each token uses top_k of them
                                (d_expert=None: 4*n_embd // (top_k + n_shared), the dense MLP's compute)
    n_shared                    experts every token uses (DeepSeekMoE)
    router                      'topk' (token choice) or 'expert_choice' (Zhou et al. 2022; not causal),
                                or a token-choice Router built by the caller (the adaptive routers
                                of tinysparse/adaptive: null experts, top-p); top_k then only sets
                                the default d_expert
    score                       'softmax' or 'sigmoid' (DeepSeek-V3)
    capacity_factor             topk: C = ceil(factor * T*k / E) slots per expert, the rest dropped;
                                None = dropless. expert_choice: c, experts per token on average
                                (None = top_k)
    balance                     'aux' (Switch loss, coefficient aux_coef), 'bias' (DeepSeek-V3,
                                call update_bias() after each optimizer step), or 'none'
    z_coef                      ST-MoE router z-loss coefficient (0 = off)
    jitter                      Switch's multiplicative input noise for the router, in training
    dispatch_backend            'auto' or a name in dispatch.DISPATCH_BACKENDS

    After a forward: `aux_loss` (a scalar Tensor to add to the training loss, or None) and
    `stats` (tokens per expert, dropped fraction, router entropy, max/mean load).

    A batch without tokens, x of shape (B, 0, n_embd), is valid on every router and backend: the
    output is empty, aux_loss is 0 (the losses are means over tokens, taken as sums / max(T, 1)),
    every parameter's gradient is an array of zeros, and balance='bias' moves no bias.
    Settings outside their domain (NaN, inf, negative rates, top_k > n_expert, ...) are refused
    by check_settings with a ValueError naming the setting and its range.
    """

    def __init__(self, n_embd, n_expert, top_k=2, d_expert=None, n_shared=0, router="topk",
                 score="softmax", capacity_factor=None, balance="aux", aux_coef=0.01, z_coef=0.001,
                 jitter=0.0, dispatch_backend="auto", normalize_gates=None, bias=True,
                 dropout=0.0, bias_update_rate=0.001):
        given = router if isinstance(router, Router) else None    # an adaptive router, ready made
        router = "topk" if given is not None else router
        check_settings(n_embd, n_expert, top_k, d_expert, n_shared, router, score,
                       capacity_factor, balance, aux_coef, z_coef, jitter, dispatch_backend,
                       bias_update_rate)
        if d_expert is None:
            d_expert = max(1, 4 * n_embd // (top_k + n_shared))
        self.backend_name = dispatch_backend                        # 'auto' is resolved per forward

        self.n_embd, self.n_expert, self.top_k, self.d_expert = n_embd, n_expert, top_k, d_expert
        self.n_shared, self.router_kind, self.capacity_factor = n_shared, router, capacity_factor
        self.balance, self.aux_coef, self.z_coef = balance, aux_coef, z_coef
        if given is not None:
            self.router = given
        elif router == "topk":
            self.router = TopKRouter(n_embd, n_expert, top_k, score, normalize_gates, jitter,
                                     balance_bias=balance == "bias", bias_update_rate=bias_update_rate)
        else:
            c = top_k if capacity_factor is None else capacity_factor
            self.router = ExpertChoiceRouter(n_embd, n_expert, c, score, jitter)
        self.experts = Experts(n_expert, n_embd, d_expert, bias=bias)
        self.shared = SharedExperts(n_embd, n_shared, d_expert, bias=bias) if n_shared else None
        self.dropout = nn.Dropout(dropout)
        self.aux_loss, self._last_routing = None, None

    def extra_repr(self):
        cf = "dropless" if self.capacity_factor is None else self.capacity_factor
        return (f"n_embd={self.n_embd}, n_expert={self.n_expert}, top_k={self.top_k}, "
                f"d_expert={self.d_expert}, n_shared={self.n_shared}, router={self.router_kind!r}, "
                f"capacity_factor={cf}, balance={self.balance!r}")

    def forward(self, x):
        x = x if isinstance(x, Tensor) else Tensor(x)   # an array, as Linear and LayerNorm take
        shape = x.shape
        if not shape or shape[-1] != self.n_embd:    # reshape alone would regroup the numbers silently
            raise ValueError(f"MoE(n_embd={self.n_embd}) got an input of shape {tuple(shape)}; "
                             f"its last axis must be {self.n_embd}")
        x2 = x.reshape(-1, self.n_embd)                              # (B*T, C): routing is per token
        backend = get_backend(self.backend_name, x2.data)            # 'auto': by array type, dtype
        r = self.router(x2)                                          # expert_ids, gates (B*T, k)
        # token choice drops beyond capacity C; expert choice already took exactly its capacity
        C = capacity(self.capacity_factor, r.expert_ids.size, self.n_expert) \
            if self.router_kind == "topk" else None
        plan = backend.plan(r.expert_ids, self.n_expert, C)
        buffer = gather_rows(x2, plan, backend)                      # (S, C) rows grouped by expert
        y = self.experts(buffer, plan.offsets, backend)              # (S, C) each row through its expert
        out = combine(y, r.gates, plan, backend)                     # (B*T, C) gate-weighted sum per token
        if r.passthrough is not None:                                # identity experts: gate * x, no matmul
            out = out + x2 * r.passthrough
        if self.shared is not None:
            out = out + self.shared(x2)                              # (B*T, C) every token, dense
        self.aux_loss = self._aux_loss(r)
        self._last_routing = (r.probs.data, plan)  # stats are computed when read (see `stats`)
        return self.dropout(out).reshape(shape)                      # (B, T, C)

    def _aux_loss(self, r):
        loss = None
        if self.balance == "aux" and self.aux_coef > 0:
            loss = self.router.load_balance_loss(r) * self.aux_coef
        if self.z_coef > 0:
            z = self.router.z_loss(r) * self.z_coef
            loss = z if loss is None else loss + z
        extra = self.router.extra_loss(r)                            # an adaptive router's own
        if extra is not None:
            loss = extra if loss is None else loss + extra
        return loss

    @property
    def stats(self):
        """Load statistics of the last forward. Computed on demand: on a GPU they cost a copy to
        the host, which a training step should pay only when it logs."""
        if self._last_routing is None:
            return {}
        probs, plan = self._last_routing
        counts = to_numpy(plan.counts).astype(np.int64)
        p = to_numpy(probs).astype(np.float64)
        # mean over tokens; a batch without tokens has no entropy to average: 0
        per_token = -(p * np.log(np.maximum(p, 1e-30))).sum(axis=-1)          # (T,) each >= 0
        entropy = abs(float(per_token.sum() / max(p.shape[0], 1)))           # abs: no -0.0
        mean = counts.mean()
        return {"tokens_per_expert": counts,
                "experts_per_token": plan.n_kept / max(p.shape[0], 1),   # rows run, per token
                "dropped_fraction": plan.n_dropped / max(plan.n_routed, 1),
                "router_entropy": entropy,
                "max_load": int(counts.max()), "mean_load": float(mean),
                "max_over_mean_load": float(counts.max() / mean) if mean > 0 else 0.0}

    def update_bias(self):
        """DeepSeek-V3's balancing step; call after each optimizer step (a no-op unless balance='bias')."""
        if isinstance(self.router, TopKRouter):
            self.router.update_bias()

    def experts_per_token(self):
        """Routed experts a token uses: top_k, or on average c for expert choice."""
        if hasattr(self.router, "expected_experts"):                 # adaptive: 0..k per token
            return self.router.expected_experts()
        return self.top_k if self.router_kind == "topk" else self.router.capacity_factor

    def active_parameters(self):
        """Parameters one token actually uses: the router, its experts and the shared experts.

        This, not num_parameters(), is what sets the FLOPs per token (about 2 per active weight
        forward, 6 forward + backward). Expert choice counts its average experts per token.
        """
        shared = self.shared.num_parameters() if self.shared is not None else 0
        routed = self.experts_per_token() * self.experts.params_per_expert()
        return int(round(self.router.num_parameters() + routed + shared))
