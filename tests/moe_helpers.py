"""Shared by the MoE layer's tests (test_moe_gradients.py, test_moe_routing.py,
test_moe_balancing.py, test_moe_capacity.py, test_moe_settings.py, test_moe_empty_batch.py): a
tiny float64 MoE layer whose router weights are spread out. Not a test module: nothing here is
collected. The test files import it as `_layer`.
"""
import numpy as np

import tinysparse as ts
from tinysparse.moe import MoE


def float64_moe(seed=0, n_embd=4, n_expert=3, top_k=2, d_expert=3, router_scale=1.0, **kw):
    """A tiny float64 MoE whose router logits are spread out: eps-nudges never flip a selection."""
    ts.manual_seed(seed)
    layer = MoE(n_embd, n_expert, top_k, d_expert, **kw).astype(np.float64)
    rng = np.random.default_rng(seed)
    layer.router.weight.data = rng.standard_normal(layer.router.weight.shape) * router_scale
    return layer
