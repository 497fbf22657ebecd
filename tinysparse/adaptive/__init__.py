"""Adaptive computation (chapter 09): mechanisms by which a token takes more or less compute.

Files, in reading order: kv_cache.py (sampling one token at a time; the cache the adaptive
mechanisms write into sparsely), decode.py (the sampling loop behind GPT.generate),
null_experts.py (token choice over real and null experts: 0..k real experts per token, a compute
budget held by a controller), top_p.py (experts until their probability sum reaches p),
mod.py (Mixture-of-Depths: routed blocks that process some of a sequence's tokens),
early_exit.py (a shared head on every layer: LayerSkip's loss, CALM's exits with propagation),
settings.py (the GPTConfig fields' checks; the router they build), compute.py (the matmul
FLOPs each token executed, (B, T)).
"""
from .compute import compute_per_token
from .decode import generate_tokens, next_token_probs
from .early_exit import exit_weights, forward_with_exits
from .mod import MoDBlock, mod_stats, set_rule
from .null_experts import NullExpertRouter
from .top_p import TopPRouter
from .kv_cache import KVCache, LayerCache, cached_attention, kv_cache_obstacle

__all__ = ["compute_per_token", "generate_tokens", "next_token_probs", "KVCache", "LayerCache", "cached_attention", "kv_cache_obstacle",
           "NullExpertRouter", "TopPRouter",
           "MoDBlock", "mod_stats", "set_rule", "exit_weights", "forward_with_exits"]
