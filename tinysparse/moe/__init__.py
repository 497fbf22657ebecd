"""Mixture of Experts: routers, expert banks, sparse dispatch, and the layer that joins them.

    from tinysparse.moe import MoE
    layer = MoE(n_embd=64, n_expert=8, top_k=2)
    y = layer(x)                  # (B, T, 64) -> (B, T, 64)
    loss = loss + layer.aux_loss  # load balance + router z-loss

Files, in reading order: router.py (who goes where), dispatch.py (the plan, moving rows, the
grouped matmul, the backend registry), primitives.py (the same as autograd Functions),
experts.py (the FFNs), layer.py (all of it together).
"""
from .dispatch import (DISPATCH_BACKENDS, DispatchPlan, NumpyDispatch, capacity, get_backend,
                       register_backend)
from .primitives import combine, gather_rows, grouped_linear
from .experts import Experts, SharedExperts
from .layer import MoE
from .router import ExpertChoiceRouter, Router, RoutingResult, TopKRouter

__all__ = [
    "MoE", "Router", "TopKRouter", "ExpertChoiceRouter", "RoutingResult", "Experts", "SharedExperts",
    "DISPATCH_BACKENDS", "DispatchPlan", "NumpyDispatch", "get_backend", "register_backend",
    "capacity", "gather_rows", "grouped_linear", "combine",
]
