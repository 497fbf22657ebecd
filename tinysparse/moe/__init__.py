"""Mixture of Experts: routers, expert banks, sparse dispatch, and the layer that joins them.

    from tinysparse.moe import MoE
    layer = MoE(n_embd=64, n_expert=8, top_k=2)
    y = layer(x)                  # (B, T, 64) -> (B, T, 64)
    loss = loss + layer.aux_loss  # load balance + router z-loss

Files, in reading order: router.py (who goes where), dispatch.py (the plan, moving rows, the
grouped matmul, the NumPy reference backend and the registry), primitives.py (the same as autograd
Functions), experts.py (the FFNs), layer.py (all of it together). The other dispatch backends,
each NumpyDispatch's interface on faster kernels: numba_dispatch.py on numba_kernels.py (@njit,
chapter 06), cuda_dispatch.py on the @cuda.jit kernels of cuda_kernels/ (chapter 07); timing.py
times each primitive of a backend.
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
