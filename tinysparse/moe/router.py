"""Routers: which experts does each token visit, and how much does each one's answer count?

A router is one linear map, logits = x @ W_r (T, E), turned into affinities (softmax, or a sigmoid
per expert as in DeepSeek-V3) from which experts are selected. Two ways to select:

- token choice (TopKRouter): every token takes its k best experts. Loads can be uneven, so
  something must balance them: the Switch auxiliary loss, or DeepSeek-V3's bias.
- expert choice (ExpertChoiceRouter): every expert takes its best tokens. Balanced by construction.

Selection is piecewise constant (no gradient); the GATES are gathered from the affinities with
integer indices, so the router learns through them.
"""
import math
from dataclasses import dataclass

import numpy as np

from ..engine import functional as F
from .. import nn
from .._checks import check_int, check_number
from ..engine import random as ts_random
from ..engine.backend import array_module
from ..engine.ops import take_along_axis
from ..engine.tensor import Tensor
from .dispatch import expert_counts

SCORES = ("softmax", "sigmoid")


def log_sigmoid(x):
    """log sigmoid(x) = min(x, 0) - log(1 + exp(-|x|)), a Tensor finite for every finite x.

    sigmoid itself underflows to 0 below about -88 in float32 (-745 in float64), and a ratio of
    sigmoids is then 0/0. A ratio taken as a softmax of log sigmoids never is: exp sees only
    arguments <= 0, log only values in [1, 2]. (Without a log1p, values above ~37 round to 0
    where the truth is ~ -e^-x: an absolute error below 1e-16, nothing to a ratio.)"""
    below = (-x).relu()                                       # max(-x, 0) = -min(x, 0)
    return -below - ((-(x.relu() + below)).exp() + 1.0).log()  # relu(x) + relu(-x) = |x|


@dataclass
class RoutingResult:
    expert_ids: object   # (T, k) int array; -1 marks an empty slot (expert choice gives tokens 0..k experts)
    gates: Tensor        # (T, k) weight of each chosen expert's answer, 0 in empty slots; differentiable
    probs: Tensor        # (T, E) a distribution over experts per token: aux loss and entropy use it
    scores: Tensor       # (T, E) the affinities the gates are taken from (= probs for softmax)
    logits: Tensor       # (T, E) x @ W_r
    # adaptive routers (tinysparse/adaptive, chapter 09) fill these; None for the routers here
    selected: object = None      # (T, k) every chosen id, null experts' (ids >= E) included
    passthrough: Tensor = None   # (T, 1) weight of the token's own x in the output (identity experts)


def top_k_ids(scores, k):
    """The k highest scores' column ids per row, best first; on a tie the LOWER id first.

    Exactly `argsort(-scores, axis=-1, kind="stable")[:, :k]`, on every machine, but without
    sorting all E columns (a full sort of a (1024, 128) array costs ~2.4 ms, this ~0.4 ms):

    1. argpartition moves the k smallest -scores of each row to its first k columns (unordered).
    2. Those k candidates, put in id order, then stably sorted by -score: best first, ties by id.
    3. argpartition may pick ANY of several columns tied at the k-th value v, where the stable
       sort takes the lowest ids. A row is right iff every column equal to v is a candidate (then
       there was no choice to make); the rows that fail this, and rows where v is NaN (NaN == NaN
       is False, so the count cannot tell), are redone with the full stable sort.
    """
    xp = array_module(scores)
    neg = -scores                                                      # (T, E) ascending = best first
    if k >= neg.shape[-1] or xp is not np:
        # on a GPU the full sort: step 3's redo needs the rows' count on the host (a wait)
        return xp.argsort(neg, axis=-1, kind="stable")[:, :k]
    cand = xp.sort(xp.argpartition(neg, k - 1, axis=-1)[:, :k], axis=-1)   # (T, k) in id order
    order = xp.argsort(xp.take_along_axis(neg, cand, axis=-1), axis=-1, kind="stable")
    ids = xp.take_along_axis(cand, order, axis=-1)                     # (T, k) best first
    v = xp.take_along_axis(neg, ids[:, -1:], axis=-1)                  # (T, 1) the k-th value
    tied_all = (neg == v).sum(axis=-1)                                 # columns equal to v ...
    tied_cand = (xp.take_along_axis(neg, ids, axis=-1) == v).sum(axis=-1)   # ... and candidates among them
    redo = xp.flatnonzero((tied_all != tied_cand) | xp.isnan(v[:, 0]))
    if redo.size:
        ids[redo] = xp.argsort(neg[redo], axis=-1, kind="stable")[:, :k]
    return ids


def _ranking(logits, scores, score):
    """The array whose order selects experts. Sigmoid is monotone, so its logits rank as its
    scores do, without the ties float32 makes where sigmoid rounds to 1 (logits above ~17) or
    to 0 (below ~-88), which would hand the choice to the lowest id. A softmax ranks by its
    probabilities (their order over tokens is not the logits' order)."""
    return logits.data if score == "sigmoid" else scores.data


class Router(nn.Module):
    """What both routers share: scoring, jitter, and the auxiliary losses."""

    def __init__(self, n_embd, n_expert, score="softmax", jitter=0.0, dtype=np.float32):
        if score not in SCORES:
            raise ValueError(f"unknown score {score!r}: use one of {', '.join(SCORES)}")
        check_int("router n_embd", n_embd, low=1)
        check_int("router n_expert", n_expert, low=1)
        check_number("router jitter", jitter, low=0, high=1, high_open=True)
        self.n_expert, self.score, self.jitter = n_expert, score, jitter
        self.weight = nn.Parameter(ts_random.generator().normal(0.0, 0.02, (n_embd, n_expert)).astype(dtype))

    def extra_repr(self):
        return f"{self.weight.shape[0]} -> {self.n_expert} experts, score={self.score!r}"

    def _affinities(self, x):
        """x (T, C) -> logits, scores, probs, each (T, E). With score='sigmoid', the log scores
        are kept too (self._log_scores): ratios of scores are softmaxes of them (log_sigmoid)."""
        if self.training and self.jitter > 0:
            # Switch Transformer (Fedus et al. 2021), section 2.4: multiply the router's input by
            # U(1 - eps, 1 + eps) noise in training, so routing does not lock in early.
            u = ts_random.uniform(x.shape, device=x.device, dtype=x.dtype)
            x = x * (1.0 - self.jitter + 2.0 * self.jitter * u)
        logits = x @ self.weight                                          # (T, E)
        if self.score == "softmax":
            scores = probs = F.softmax(logits, axis=-1)
        else:
            # DeepSeek-V3 (2024), eq. 15: s_{i,t} = sigmoid(u_t^T e_i), one independent score per
            # expert; normalised over the experts when a distribution is needed (their eq. 19):
            # s / sum(s) = softmax(log s), finite even where every s underflows to 0.
            self._log_scores = log_sigmoid(logits)
            scores = self._log_scores.exp()
            probs = F.softmax(self._log_scores, axis=-1)
        return logits, scores, probs

    def load_balance_loss(self, r):
        """Switch Transformer (Fedus et al. 2021), eq. 4-6:

            loss = E * sum_e f_e * P_e,   f_e = fraction of the token-slots sent to expert e,
                                          P_e = mean over tokens of the router probability of e

        f_e counts argmax-style decisions (no gradient); P_e carries the gradient. Both are 1/E
        under perfectly uniform routing, where the loss is exactly 1 (times the coefficient).
        """
        xp = array_module(r.expert_ids)
        counts = expert_counts(r.expert_ids, self.n_expert)              # -1 (empty) not counted
        f = counts / xp.maximum(counts.sum(), 1)                           # (E,) constants
        # the mean over tokens as sum / max(T, 1): a batch without tokens gives 0, not 0/0
        P = r.probs.sum(axis=0) / max(r.probs.shape[0], 1)                # (E,)
        return (P * f.astype(P.dtype)).sum() * self.n_expert

    def extra_loss(self, r):
        """A router's own auxiliary loss beside balance and z (top-p's entropy loss), or None."""
        return None

    def z_loss(self, r):
        """ST-MoE (Zoph et al. 2022), eq. 5: penalise large router logits, which destabilise training:

            loss = (1/T) sum_t (log sum_e exp(logits_te))^2
        """
        m = r.logits.data.max(axis=-1, keepdims=True)                     # a constant shift, for overflow
        lse = (r.logits - m).exp().sum(axis=-1).log() + m[:, 0]           # (T,) logsumexp
        return (lse * lse).sum() / max(lse.shape[0], 1)                   # 0 without tokens


class TopKRouter(Router):
    """Token choice: each token picks its top_k experts (GShard, Switch, Mixtral, DeepSeek).

    normalize_gates: rescale the k chosen gates to sum to 1 (Mixtral, DeepSeek-V3). None picks it
    for you: on when top_k > 1, off for top_k = 1, where the one renormalised gate would be the
    constant 1 and the router would learn nothing from the model's loss (Switch keeps p_e).

    balance='bias' is DeepSeek-V3's auxiliary-loss-free balancing (Wang et al. 2024): a per-expert
    bias b_e added to the scores for SELECTION only, nudged after each optimizer step by
    `update_bias()`. Gates use the unbiased scores, so the bias steers load, never the output.
    """

    def __init__(self, n_embd, n_expert, top_k, score="softmax", normalize_gates=None,
                 jitter=0.0, balance_bias=False, bias_update_rate=0.001, dtype=np.float32):
        super().__init__(n_embd, n_expert, score, jitter, dtype)
        check_int("TopKRouter top_k", top_k, low=1, high=n_expert)
        check_number("TopKRouter bias_update_rate", bias_update_rate, low=0)
        self.top_k = top_k
        self.normalize_gates = top_k > 1 if normalize_gates is None else bool(normalize_gates)
        self.bias_update_rate = bias_update_rate
        self.bias = None
        if balance_bias:
            self.register_buffer("bias", np.zeros(n_expert, dtype=np.float32))  # saved in state_dict
            self._load = None  # slots per expert since the last update_bias()

    def forward(self, x):
        logits, scores, probs = self._affinities(x)
        if self.bias is not None:                     # DeepSeek-V3: selection on s + b
            select = scores.data + self.bias.data.astype(scores.dtype)
        else:
            select = _ranking(logits, scores, self.score)
        expert_ids = top_k_ids(select, self.top_k)                                 # (T, k)
        gates = take_along_axis(scores, expert_ids, axis=-1)  # (T, k), differentiable (unbiased)
        if self.normalize_gates and self.score == "sigmoid":
            # s_i / sum_j s_j over the chosen, as a softmax of the log scores: gates of logits
            # -200 and -200.5 are [0.62, 0.38] as those of -2 and -2.5 are, never 0/0
            gates = F.softmax(take_along_axis(self._log_scores, expert_ids, axis=-1), axis=-1)
        elif self.normalize_gates:                    # softmax scores: the best is >= 1/E, no 0/0
            gates = gates / gates.sum(axis=-1, keepdims=True)
        if self.bias is not None and self.training:
            load = expert_counts(expert_ids, self.n_expert)
            self._load = load if self._load is None else self._load + load
        return RoutingResult(expert_ids, gates, probs, scores, logits)

    def update_bias(self):
        """Wang et al. 2024, Algorithm 1 (DeepSeek-V3 eq. 16-17), after each optimizer step:

            b_e <- b_e + gamma * sign(mean_load - load_e)

        Overloaded experts become less attractive, underloaded ones more. The load is what the
        training forwards since the last call routed. A no-op without balance='bias' or load.
        """
        if self.bias is None or self._load is None:
            return
        load = self._load.astype(np.float32)
        xp = array_module(load)
        self.bias.data = self.bias.data + np.float32(self.bias_update_rate) * xp.sign(load.mean() - load)
        self._load = None


class ExpertChoiceRouter(Router):
    """Expert choice (Zhou et al. 2022): each expert takes its top c*T/E tokens by score.

    Perfectly balanced by construction (every expert gets exactly its capacity), and a token may
    get 0, 1 or several experts: hard tokens can take more compute. Gates are the token's
    affinity for the expert (no renormalisation).

    Not for causal decoding: whether token t is chosen depends on the scores of all the other
    tokens in the batch, later ones included. At training time the future leaks into token t's
    computation, and at generation time (one token at a time) the choice cannot be made at all.
    """

    def __init__(self, n_embd, n_expert, capacity_factor=2.0, score="softmax", jitter=0.0,
                 dtype=np.float32):
        super().__init__(n_embd, n_expert, score, jitter, dtype)
        check_number("ExpertChoiceRouter capacity_factor", capacity_factor, low=0, low_open=True)
        self.capacity_factor = capacity_factor   # c: how many experts a token gets on average

    def forward(self, x):
        logits, scores, probs = self._affinities(x)
        xp = array_module(scores.data)
        T, E = scores.shape
        # Zhou et al. 2022, eq. 1: k = T * c / E tokens per expert; I = TopK(S^T, k)
        cap = min(T, math.ceil(self.capacity_factor * T / E))
        # each expert's best tokens (rows of S^T), best first; on a tie the earlier token wins
        chosen = top_k_ids(_ranking(logits, scores, self.score).T, cap)     # (E, cap) token ids
        tokens = chosen.reshape(-1)                                        # (E*cap,) expert-major
        experts = xp.repeat(xp.arange(E), cap)                             # (E*cap,)
        # Re-index as a per-token table (T, k_max) so dispatch handles both routers alike:
        # sort the (token, expert) pairs by token (stable: experts stay ascending within a token).
        by_token = xp.argsort(tokens, kind="stable")
        tokens, experts = tokens[by_token], experts[by_token]
        per_token = expert_counts(tokens, T)                               # (T,) experts each token got
        start = xp.zeros(T + 1, dtype=xp.int64)
        start[1:] = xp.cumsum(per_token)
        column = xp.arange(tokens.shape[0]) - start[tokens]                # slot j of the pair in its row
        k_max = max(1, int(per_token.max())) if T else 1                   # T = 0: one empty column
        expert_ids = xp.full((T, k_max), -1, dtype=xp.int64)
        expert_ids[tokens, column] = experts
        present = (expert_ids >= 0).astype(scores.dtype)                   # empty slots get gate 0
        gates = take_along_axis(scores, xp.maximum(expert_ids, 0), axis=-1) * present  # (T, k_max)
        return RoutingResult(expert_ids, gates, probs, scores, logits)
