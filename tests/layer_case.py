"""One MoE layer, forward and backward, with routing forced to chosen loads: run by
tests/parallel_worker.py on every rank (expert parallel) and by tests/test_parallel.py in one
process (the reference). Not a test module itself.

Cases (global batch of 4 sequences x 5 tokens, E = 4 experts, top-2, float64):
    skewed   every token picks experts 0 and 1, which rank 0 owns: rank 1 receives no rows
    uneven   rows 0-2 of the batch pick experts 0 and 1 (rank 0), row 3 experts 2 and 3: rank 0
             receives three times rank 1's rows
    capacity uneven, with capacity_factor 0.5: rank 0's experts drop rows that came from both
             ranks, exactly those a single process drops
"""
import json
import os

import numpy as np

from tinysparse import nn
from tinysparse.engine.tensor import Tensor
from tinysparse.moe import MoE

B, T, C, E = 4, 5, 6, 4
CASES = ("skewed", "uneven", "capacity")


class Holder(nn.Module):
    """A parent for the layer: expert_parallel replaces a MoE where its parent holds it."""

    def __init__(self, layer):
        self.layer = layer


def make_layer(case):
    """The layer (float64) and the global batch x (B, T, C). Router weights: row 0 is
    [5, 4, -5, -4], the rest small; x[..., 0] is +1 (experts 0, 1 win) or -1 (experts 2, 3)."""
    rng = np.random.default_rng(11)
    layer = MoE(C, E, top_k=2, d_expert=7, capacity_factor=0.5 if case == "capacity" else None,
                z_coef=0.001, aux_coef=0.01)
    for p in layer.parameters():
        p.data = rng.normal(0, 0.5, p.data.shape)              # float64 values, fixed by the seed
    w = rng.normal(0, 0.01, (C, E))
    w[0] = [5.0, 4.0, -5.0, -4.0]
    layer.router.weight.data = w
    x = rng.normal(0, 1, (B, T, C))
    x[..., 0] = 1.0
    if case != "skewed":
        x[3, :, 0] = -1.0                            # batch row 3: rank 1's experts
    return layer, x


def output_weights():
    """(B, T, C) fixed weights of the output in the test loss."""
    return np.cos(np.arange(B * T * C)).reshape(B, T, C)


def forward_backward(layer, x, weights, aux_scale=1.0):
    """Output, dx, the parameters' gradients and the loss: sum(out * weights) plus aux_scale
    times the layer's aux loss (balance + z), backward through everything. The aux loss of a
    rank is a mean over its tokens (the global one is the ranks' mean): summed over P ranks it
    counts P times, so the one-process reference takes aux_scale = P."""
    xs = Tensor(x, requires_grad=True)
    out = layer(xs)
    loss = (out * Tensor(weights)).sum() + layer.aux_loss * aux_scale
    loss.backward()
    grads = {name: p.grad for name, p in layer.named_parameters()}
    return out.data, xs.grad, grads, float(loss.data)


def run_layer_case(out_dir, case):
    """On every rank: the rank's slice of the batch through the expert-parallel layer."""
    from tinysparse.parallel import expert_parallel, world
    from tinysparse.parallel.ledger import CommLedger
    comm = world(timeout=60)
    layer, x = make_layer(case)
    n = B // comm.size
    mine = slice(comm.rank * n, (comm.rank + 1) * n)
    ledger = CommLedger(comm)
    holder = Holder(layer)
    expert_parallel(holder, comm, ledger)
    ep = holder.layer
    out, dx, grads, loss = forward_backward(ep, x[mine], output_weights()[mine])
    parts = comm.gather(np.concatenate([out.reshape(-1), dx.reshape(-1)]))
    shards = {name: comm.gather(np.ascontiguousarray(g)) for name, g in sorted(grads.items())}
    losses = comm.gather(np.array([loss]))
    if comm.rank == 0:
        arrays = {"out_dx": np.concatenate(parts), "loss": np.concatenate(losses)}
        arrays.update({f"grad/{k}": np.stack(v) for k, v in shards.items()})
        np.savez(os.path.join(out_dir, f"layer-{case}.npz"), **arrays)
    with open(os.path.join(out_dir, f"ledger-{case}-{comm.rank}.json"), "w") as fh:
        json.dump({**ledger.summary(), "stats": {k: np.asarray(v).tolist()
                                                 for k, v in ep.stats.items()}}, fh)
