"""Dynamic top-p routing: a token takes experts until it is sure enough.

Huang et al. 2024, "Harder Tasks Need More Experts: Dynamic Routing in MoE Models", section 3:
with P = softmax(x W_r) sorted in decreasing order, P_(1) >= P_(2) >= ...,

    t = argmin_k { k : sum_{j <= k} P_(j) >= p }          (their eq. 3-4)
    out(x) = sum_{j <= t} P_(j) FFN_(j)(x)                 (their eq. 5: the gates are not renormalised)

A confident router (one large probability) takes one expert, an unsure one several: compute goes
to the tokens the router finds hard. Left alone, a router learns that flat distributions buy more
experts and a lower loss, so the paper adds a dynamic loss, the router's entropy (their eq. 6):

    L_d = -(1/T) sum_t sum_e P_te log P_te

minimised, with a small weight. Here max_k caps t, so the worst case is bounded (the paper has no
cap: t may reach E). Slots beyond a token's t are -1, which the dispatch plan skips.
Causal: a token's experts depend on its own scores only.
"""
from .._checks import check_int, check_number
from ..engine import functional as F
from ..engine.backend import array_module
from ..moe.router import RoutingResult, Router, _ranking, top_k_ids


class TopPRouter(Router):
    """(T, C) -> RoutingResult with expert_ids (T, max_k), -1 past each token's t, and gates P_e.

    top_p         p in (0, 1]: the probability mass a token's experts must reach
    max_k         most experts one token may take (1..n_expert)
    entropy_coef  weight of the dynamic (entropy) loss, added through extra_loss
    nominal_k     the experts per token the layer is sized for (its top_k): expected_experts()
    """

    def __init__(self, n_embd, n_expert, top_p, max_k, entropy_coef=1e-4, nominal_k=1,
                 score="softmax", jitter=0.0, dtype=None):
        kw = {} if dtype is None else {"dtype": dtype}
        super().__init__(n_embd, n_expert, score, jitter, **kw)
        check_number("TopPRouter top_p", top_p, low=0, high=1, low_open=True)
        check_int("TopPRouter max_k", max_k, low=1, high=n_expert)
        check_number("TopPRouter entropy_coef", entropy_coef, low=0)
        self.top_p, self.max_k, self.entropy_coef, self.nominal_k = top_p, max_k, entropy_coef, nominal_k
        self.top_k = max_k              # columns of expert_ids (the MoE layer reads no more than that)

    def extra_repr(self):
        return f"{super().extra_repr()}, top_p={self.top_p}, max_k={self.max_k}"

    def forward(self, x):
        logits, scores, probs = self._affinities(x)                         # (T, E)
        xp = array_module(probs.data)
        ids = top_k_ids(_ranking(logits, scores, self.score), self.max_k)   # (T, max_k) best first
        rows = xp.arange(ids.shape[0])[:, None]                             # (T, 1)
        mass = xp.cumsum(probs.data[rows, ids], axis=-1)                    # (T, max_k) sum_{j<=k} P_(j)
        # t = 1 + how many partial sums before the last stay below p (a sum that reached p stops it)
        t = 1 + (mass[:, :-1] < self.top_p).sum(axis=-1)                    # (T,) in [1, max_k]
        taken = xp.arange(self.max_k)[None, :] < t[:, None]                 # (T, max_k)
        expert_ids = xp.where(taken, ids, -1)
        gates = probs[rows, ids] * taken.astype(probs.dtype)                # eq. 5: P_e, 0 past t
        return RoutingResult(expert_ids, gates, probs, scores, logits)

    def extra_loss(self, r):
        """Huang et al. 2024, eq. 6: entropy_coef * mean over tokens of -sum_e P_e log P_e.
        log P comes from a log-softmax of the logits (finite where P underflows to 0)."""
        if self.entropy_coef == 0:
            return None
        log_p = F.log_softmax(self._log_scores if self.score == "sigmoid" else r.logits, axis=-1)
        entropy = -(r.probs * log_p).sum() / max(r.probs.shape[0], 1)
        return entropy * self.entropy_coef

    def expected_experts(self):
        """The experts per token the layer is sized for (its top_k): top-p's count varies by token."""
        return self.nominal_k
