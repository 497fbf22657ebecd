"""Null experts: token-choice routing in which a token may take fewer than k real experts.

AdaMoE (Zeng et al. 2024) adds n_null "null experts" to the E real ones and routes top-k over all
E + n_null of them. A null expert computes nothing:

    zero     (AdaMoE; MoE++'s zero expert, Jin et al. 2025):      N(x) = 0
    identity (MoE++'s copy expert; LongCat-Flash's zero-computation expert, 2025):  N(x) = x

so a token that picks j null experts runs k - j real ones: 0..k real experts per token, chosen by
the router. Null slots never enter the dispatch buffer: their expert id is -1, the mark the plan
already skips (moe/dispatch.py), so they cost no gather, no matmul and no combine row. An identity
slot adds gate * x to the output (a multiply-add, no matmul).

Balance runs over all E + n_null experts, with MoE++'s heterogeneous weights (tau on the null
experts: below 1, their load costs less, so more tokens may rest). The compute budget is held by
a controller rather than a coefficient: after each optimizer step, every null expert's selection
bias moves toward the target mean of real experts per token, as DeepSeek-V3 moves its balancing
biases (Wang et al. 2024) and LongCat-Flash holds its experts per token. The bias only ranks:
gates use the unbiased scores, and it gets no gradient.

Why the step is proportional to the error and not its sign (DeepSeek-V3's rule): early in
training every token has nearly the same router scores, so one bias step flips all tokens at
once and the per-step mean jumps between ~0 and ~k. A sign rule then holds the MEDIAN of those
jumps at the target (measured: means 10-20% above it on a tiny model); a step proportional to the
error makes the bias the integral of the error, whose steady state holds the MEAN (within 2%
over 20-step windows in tests/test_null_experts.py).
"""
import numpy as np

from .._checks import check_int, check_number
from ..engine import functional as F
from ..engine.backend import array_module
from ..moe.dispatch import expert_counts
from ..moe.router import RoutingResult, TopKRouter, top_k_ids

NULL_KINDS = ("zero", "identity")


class NullExpertRouter(TopKRouter):
    """Top-k over n_expert real + n_null null experts -> RoutingResult whose expert_ids hold -1 in
    null slots (selected keeps every id; ids >= n_expert are null) and, for identity nulls,
    passthrough (T, 1): the summed gates of the identity slots, the weight of x in the output.

    tau             MoE++'s weight of the null experts in the balance loss (1: plain Switch)
    target_experts  None, or the mean number of REAL experts per token to hold, in [0, top_k]
    budget_rate     gamma of the controller: each step moves the null biases by gamma * error
    balance_bias    DeepSeek-V3's bias on the real experts too (balance='bias')
    """

    def __init__(self, n_embd, n_expert, top_k, n_null, null_kind="zero", tau=1.0,
                 target_experts=None, budget_rate=0.1, score="softmax", normalize_gates=None,
                 jitter=0.0, balance_bias=False, bias_update_rate=0.001, dtype=np.float32):
        check_int("NullExpertRouter n_null", n_null, low=1)
        check_int("NullExpertRouter top_k", top_k, low=1, high=n_expert + n_null)
        super().__init__(n_embd, n_expert + n_null, top_k, score, normalize_gates, jitter,
                         balance_bias=False, bias_update_rate=bias_update_rate, dtype=dtype)
        if null_kind not in NULL_KINDS:
            raise ValueError(f"NullExpertRouter null_kind={null_kind!r}: use one of "
                             f"{', '.join(NULL_KINDS)}")
        check_number("NullExpertRouter tau", tau, low=0)
        check_number("NullExpertRouter budget_rate", budget_rate, low=0)
        if target_experts is not None:
            check_number("NullExpertRouter target_experts", target_experts, low=0, high=top_k)
        self.n_real, self.n_null, self.null_kind, self.tau = n_expert, n_null, null_kind, tau
        self.target_experts, self.budget_rate = target_experts, budget_rate
        if balance_bias:                        # DeepSeek-V3 balancing of the real experts
            self.register_buffer("bias", np.zeros(n_expert, dtype=np.float32))
            self._load = None
        self.register_buffer("null_bias", np.zeros(n_null, dtype=np.float32))  # the controller's
        self._real_slots = self._tokens = 0     # since the last update_bias()

    def extra_repr(self):
        return (f"{super().extra_repr()}, of them {self.n_null} null ({self.null_kind}), "
                f"tau={self.tau}, target_experts={self.target_experts}")

    def forward(self, x):
        logits, scores, probs = self._affinities(x)                     # (T, E + n_null) each
        xp = array_module(scores.data)
        E = self.n_real
        select = xp.array(scores.data if (self.bias is not None or self.target_experts is not None)
                          else self._ranking(logits, scores))           # a copy: biases go on it
        if self.bias is not None:
            select[:, :E] += self.bias.data.astype(select.dtype)
        select[:, E:] += self.null_bias.data.astype(select.dtype)
        selected = top_k_ids(select, self.top_k)                        # (T, k) ids in [0, E + n)
        rows = xp.arange(selected.shape[0])[:, None]                    # (T, 1)
        gates = scores[rows, selected]                                  # (T, k) unbiased
        if self.normalize_gates and self.score == "sigmoid":
            gates = F.softmax(self._log_scores[rows, selected], axis=-1)
        elif self.normalize_gates:
            gates = gates / gates.sum(axis=-1, keepdims=True)
        null = selected >= E                                            # (T, k)
        expert_ids = xp.where(null, -1, selected)                       # -1: the plan skips the slot
        passthrough = None
        if self.null_kind == "identity":                                # MoE++ copy expert: N(x) = x
            passthrough = (gates * null.astype(gates.dtype)).sum(axis=-1, keepdims=True)  # (T, 1)
        if self.training:
            self._real_slots += int((~null).sum())
            self._tokens += int(selected.shape[0])
            if self.bias is not None:
                load = expert_counts(expert_ids, E)                    # null slots are -1 here
                self._load = load if self._load is None else self._load + load
        return RoutingResult(expert_ids, gates, probs, scores, logits, selected=selected,
                             passthrough=passthrough)

    def _ranking(self, logits, scores):
        return logits.data if self.score == "sigmoid" else scores.data

    def load_balance_loss(self, r):
        """Switch's loss over all E + n experts with MoE++'s heterogeneous weights:

            loss = (E + n) * sum_i eta_i f_i P_i,   eta_i = 1 (real expert), tau (null expert)

        f_i: fraction of the T*k slots on expert i (a constant), P_i: mean router probability."""
        xp = array_module(r.selected)
        n_all = self.n_real + self.n_null
        f = expert_counts(r.selected, n_all) / max(r.selected.size, 1)  # no wait on a GPU
        eta = np.ones(n_all)
        eta[self.n_real:] = self.tau
        P = r.probs.sum(axis=0) / max(r.probs.shape[0], 1)               # (E + n,)
        return (P * (f * xp.asarray(eta)).astype(P.dtype)).sum() * n_all

    def expected_experts(self):
        """Real experts per token this router aims at: the target, or top_k without one."""
        return self.top_k if self.target_experts is None else self.target_experts

    def update_bias(self):
        """After each optimizer step. The budget controller (no gradient):

            b_null <- b_null + gamma * (mean real experts per token - target)

        too many real experts make the null experts more attractive, too few less (an integral
        controller: the module docstring says why not the sign); then
        DeepSeek-V3's balancing of the real experts (balance='bias'), as TopKRouter does."""
        if self.target_experts is not None and self._tokens:
            mean_real = self._real_slots / self._tokens
            step = np.float32(self.budget_rate * (mean_real - self.target_experts))
            self.null_bias.data = self.null_bias.data + step.astype(np.float32)
        self._real_slots = self._tokens = 0
        if self.bias is not None and self._load is not None:
            load = self._load.astype(np.float32)
            xp = array_module(load)
            self.bias.data = self.bias.data + np.float32(self.bias_update_rate) * xp.sign(load.mean() - load)
            self._load = None
