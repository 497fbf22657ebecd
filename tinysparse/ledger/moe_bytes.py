"""MoE inference: the weight bytes a batch of B tokens reads, from real routing, against B.

A dense model reads all its weights once per batch: bytes per token fall as 1/B. A MoE layer
reads only the experts its batch's tokens were routed to; with B = 1 that is k experts, and as B
grows the batch touches more of them until it reads all E: the sparse model's advantage in
FLOPs does not carry over to the bytes a large batch moves. With uniform, independent routing
the expected number of distinct experts a batch reads is

    E * (1 - (1 - k/E)^B)

(each expert is missed by one token with probability 1 - k/E). `bytes_vs_batch` measures it
instead, from the routing the trained model chose on validation text: it records which experts
each token used, in every MoE layer, and counts the distinct experts of random batches of B
tokens (drawn without replacement from all the positions of the validation windows, as a decode
step of B independent sequences would meet them).
"""
from dataclasses import dataclass

import numpy as np

from ..engine.backend import to_numpy
from ..engine.tensor import no_grad
from ..moe import MoE


def uniform_distinct_experts(n_expert, top_k, batch):
    """E (1 - (1 - k/E)^B): expected distinct experts of B tokens under uniform routing."""
    return n_expert * (1.0 - (1.0 - top_k / n_expert) ** batch)


def expert_use(plan, n_tokens, n_expert):
    """(n_tokens, n_expert) booleans: token t had a row in expert e's segment (a kept slot)."""
    offsets = to_numpy(plan.offsets)
    token = to_numpy(plan.token_index)
    expert_of_row = np.repeat(np.arange(n_expert), np.diff(offsets))
    use = np.zeros((n_tokens, n_expert), dtype=bool)
    use[token, expert_of_row] = True
    return use


def routing_of(model, idx):
    """[(n_tokens, n_expert) booleans] per MoE layer, first block first, of `model` (eval mode,
    no gradient) on token ids idx (B, T). A layer that no token reached in this forward (inside
    a Mixture-of-Depths block that chose none) reads no expert: all False, never the routing a
    previous forward left behind."""
    layers = [m for m in model.modules() if isinstance(m, MoE)]
    if not layers:
        raise ValueError("bytes_vs_batch needs a Mixture-of-Experts model (n_expert > 0)")
    was_training = model.training
    model.eval()
    for m in layers:
        m._last_routing = None                 # set again by each layer this forward runs
    with no_grad():
        model(idx)
    model.train(was_training)
    n_tokens = int(np.prod(idx.shape))
    return [np.zeros((n_tokens, m.n_expert), dtype=bool) if m._last_routing is None
            else expert_use(m._last_routing[1], n_tokens, m.n_expert) for m in layers], layers


def mean_distinct(use, batch, rng, n_batches=64):
    """Mean number of experts read by a random batch of `batch` tokens (without replacement)."""
    n = use.shape[0]
    if batch > n:
        raise ValueError(f"a batch of {batch} tokens needs at least {batch} routed tokens, "
                         f"got {n}: route more validation text")
    counts = [use[rng.choice(n, size=batch, replace=False)].any(axis=0).sum()
              for _ in range(n_batches)]
    return float(np.mean(counts))


@dataclass(frozen=True)
class BatchBytes:
    batch: int
    distinct: float            # mean distinct experts per layer, measured
    uniform: float             # E (1 - (1 - k/E)^B)
    moe_bytes_per_token: float
    dense_bytes_per_token: float


def _expert_bytes(layer):
    ex = layer.experts
    return sum(p.data.nbytes for p in ex.parameters()) // layer.n_expert


def bytes_vs_batch(model, idx, batches=(1, 8, 64, 512), seed=0, n_batches=64):
    """[BatchBytes] for each batch size: the weight bytes per token a batch reads.

    moe_bytes_per_token  (every weight outside the routed experts + for each layer its mean
                         distinct experts x one expert's bytes) / B
    dense_bytes_per_token  a dense model of equal active FLOPs (its parameters are the MoE's
                         active ones: num_active_parameters) reads all of them per batch / B
    """
    uses, layers = routing_of(model, idx)
    rng = np.random.default_rng(seed)
    itemsize = model.parameters()[0].data.itemsize
    routed_ids = {id(p) for m in layers for p in m.experts.parameters()}
    fixed = sum(p.data.nbytes for p in model.parameters() if id(p) not in routed_ids)
    dense = model.num_active_parameters(non_embedding=False) * itemsize
    rows = []
    for B in batches:
        distinct = [mean_distinct(u, B, rng, n_batches) for u in uses]
        read = fixed + sum(d * _expert_bytes(m) for d, m in zip(distinct, layers))
        E, k = layers[0].n_expert, layers[0].experts_per_token()
        rows.append(BatchBytes(B, float(np.mean(distinct)), uniform_distinct_experts(E, k, B),
                               read / B, dense / B))
    return rows
