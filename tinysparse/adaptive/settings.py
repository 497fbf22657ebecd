"""The adaptive fields of GPTConfig: their checks, and the router they build.

GPTConfig.__post_init__ calls check_settings(config); gpt.make_ffn calls make_router(config) and
hands the router to the MoE layer (moe/ cannot import adaptive/: the layers go one way). The
config is read by attribute, so this file does not import the model around it.
"""
import math

from .._checks import describe, is_int
from .null_experts import NULL_KINDS, NullExpertRouter
from .top_p import TopPRouter


def _refuse(name, value, allowed, fix):
    raise ValueError(f"GPTConfig.{name}={value!r} is invalid: {name} must be {allowed}; {fix}")


def _number(name, value, low, high=None, none_ok=False):
    if none_ok and value is None:
        return
    ok = (not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
          and value >= low and (high is None or value <= high))
    if not ok:
        allowed = describe(low, high, False, False)
        _refuse(name, value, f"None or {allowed}" if none_ok else allowed,
                f"fix --{name.replace('_', '-')}")


def check_settings(c):
    """Refuse an adaptive setting outside its domain or without the model it needs, naming the
    setting and the fix (one line)."""
    if not (is_int(c.n_null) and c.n_null >= 0):
        _refuse("n_null", c.n_null, "an integer >= 0", "0 turns null experts off")
    if c.null_kind not in NULL_KINDS:
        _refuse("null_kind", c.null_kind, f"one of {', '.join(NULL_KINDS)}", "fix --null-kind")
    _number("null_tau", c.null_tau, 0)
    _number("budget_rate", c.budget_rate, 0)
    _number("target_experts", c.target_experts, 0, c.top_k, none_ok=True)
    if c.n_null:
        if not c.n_expert:
            _refuse("n_null", c.n_null, "0 in a dense model (null experts sit beside routed "
                    "experts)", "set --n-expert too, or --n-null 0")
        if c.router != "topk":
            _refuse("n_null", c.n_null, f"0 with router={c.router!r} (null experts are a "
                    f"token-choice rule)", "use --router topk")
    elif c.target_experts is not None:
        _refuse("target_experts", c.target_experts, "None without null experts (the budget is "
                "held by their biases)", "set --n-null (e.g. 4), or leave --target-experts unset")
    _check_top_p(c)
    _check_mod(c)
    _number("exit_scale", c.exit_scale, 0)
    if c.exit_threshold is not None:
        if isinstance(c.exit_threshold, bool) or not isinstance(c.exit_threshold, (int, float)) \
                or not 0 < c.exit_threshold <= 1:
            _refuse("exit_threshold", c.exit_threshold, "None or a finite number in (0, 1] (a "
                    "difference of two probabilities)", "try --exit-threshold 0.9")


def _check_mod(c):
    _number("mod_aux_coef", c.mod_aux_coef, 0)
    if not (is_int(c.mod_every) and c.mod_every >= 1):
        _refuse("mod_every", c.mod_every, "an integer >= 1", "fix --mod-every (2: every other block)")
    if c.mod_router not in ("learned", "random"):
        _refuse("mod_router", c.mod_router, "'learned' or 'random'", "fix --mod-router")
    if c.mod_capacity is None:
        return
    if isinstance(c.mod_capacity, bool) or not isinstance(c.mod_capacity, (int, float)) \
            or not 0 < c.mod_capacity <= 1:
        _refuse("mod_capacity", c.mod_capacity, "None or a finite number in (0, 1]",
                "try --mod-capacity 0.125 (the paper's)")
    if c.mod_every > c.n_layer:
        _refuse("mod_every", c.mod_every, f"at most n_layer={c.n_layer} with --mod-capacity (else "
                f"no block is routed)", "lower --mod-every or raise --n-layer")


def _check_top_p(c):
    if c.top_p is not None:
        if isinstance(c.top_p, bool) or not isinstance(c.top_p, (int, float)) or not 0 < c.top_p <= 1:
            _refuse("top_p", c.top_p, "None or a finite number in (0, 1]", "try --top-p 0.4")
        for ok, why, fix in ((c.n_expert, "None in a dense model", "set --n-expert too"),
                             (c.router == "topk", "None with router='expert_choice'",
                              "use --router topk"),
                             (not c.n_null, "None with null experts (choose one adaptive router)",
                              "drop --n-null or --top-p")):
            if not ok:
                _refuse("top_p", c.top_p, why, fix)
    _number("entropy_coef", c.entropy_coef, 0)
    if c.max_k is not None:
        if not (is_int(c.max_k) and 1 <= c.max_k <= max(c.n_expert, 1)):
            _refuse("max_k", c.max_k, f"None or an integer in [1, n_expert={c.n_expert}]",
                    "fix --max-k")
        if c.top_p is None:
            _refuse("max_k", c.max_k, "None without --top-p (it caps top-p's experts)",
                    "set --top-p, or leave --max-k unset")


def make_router(c):
    """The token-choice router for an MoE layer of config c, or None for the plain TopKRouter."""
    if c.n_expert and c.top_p is not None:
        return TopPRouter(c.n_embd, c.n_expert, c.top_p, c.max_k or c.n_expert, c.entropy_coef,
                          nominal_k=c.top_k, score=c.score, jitter=c.jitter)
    if not (c.n_expert and c.n_null):
        return None
    return NullExpertRouter(c.n_embd, c.n_expert, c.top_k, c.n_null, c.null_kind, c.null_tau,
                            c.target_experts, c.budget_rate, c.score, jitter=c.jitter,
                            balance_bias=c.balance == "bias", bias_update_rate=c.bias_update_rate)
