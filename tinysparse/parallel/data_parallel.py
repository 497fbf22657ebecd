"""Data parallelism for everything that is not an expert, and the shards of a checkpoint.

Every rank holds a replica of the dense weights (embeddings, attention, norms, routers, shared
experts) and computes their gradients on its own slice of the global batch. Rank r's loss is a
mean over its N/P tokens, so the global batch's gradient is the mean of the ranks' gradients:

    g = (1/P) * sum_r g_r          (the ranks' sum taken in rank order: comm.allreduce_sum)

An expert lives on one rank, and its gradient already holds every rank's tokens (they came to it
through the all-to-all), each scaled by its own rank's 1/(N/P): it needs the same 1/P, and no
reduction. Then every rank clips by the global norm and takes the same AdamW step: the replicas
stay bitwise identical, because every rank adds the same numbers in the same order.

The checkpoint is the single-process one: rank 0 gathers the expert shards (and their AdamW
moments) and writes the full arrays; resuming slices them again, so a run can even resume on
another number of ranks (bitwise only on the same number).
"""
import math

import numpy as np

from ..engine.backend import device_of, to_device, to_numpy as _host


def _flat_dense(params):
    """The dense gradients as one float64 vector (one all-reduce instead of one per array)."""
    return np.concatenate([np.asarray(_host(p.grad), dtype=np.float64).reshape(-1)
                           for p in params]) if params else np.zeros(0)


def reduce_gradients(named_params, sharded, comm):
    """Average the dense gradients over the ranks (in rank order) and divide the expert
    gradients by P, in place of each p.grad. A parameter without a gradient keeps none (every
    rank runs the same graph, so the same parameters have gradients on every rank)."""
    P = comm.size
    dense = [p for name, p in named_params if name not in sharded and p.grad is not None]
    if P == 1:
        return                                     # one rank: the gradients are the global ones
    total = comm.allreduce_sum(_flat_dense(dense))
    at = 0
    for p in dense:
        n = p.data.size
        g = total[at:at + n].reshape(p.data.shape).astype(p.data.dtype)
        at += n
        g = g / g.dtype.type(P)
        p.grad = to_device(g, device_of(p.data))
    for name, p in named_params:
        if name in sharded and p.grad is not None:
            p.grad = p.grad / p.grad.dtype.type(P)


def clip_global_norm(named_params, sharded, comm, max_norm):
    """optim.clip_grad_norm over the WHOLE model: the dense squares (the same on every rank)
    plus every rank's expert squares (all-reduced). Returns the norm before clipping."""
    squares = [(name, float((_host(p.grad).astype(np.float64) ** 2).sum()))
               for name, p in named_params if p.grad is not None]
    shard = [s for name, s in squares if name in sharded]        # this rank's expert slices
    summed = iter(comm.allreduce_sum(np.array(shard, dtype=np.float64)).tolist() if shard else [])
    # in the model's parameter order, as optim.clip_grad_norm adds them (P = 1: the same norm)
    squares = [next(summed) if name in sharded else s for name, s in squares]
    total = math.sqrt(sum(squares))
    if total > max_norm:
        scale = max_norm / (total + 1e-6)
        for _, p in named_params:
            if p.grad is not None:
                p.grad = p.grad * p.grad.dtype.type(scale)
    return total


def gather_full(arrays_by_name, sharded, comm):
    """{name: array} with this rank's slices -> the full arrays on rank 0 (expert arrays
    concatenated in rank order on axis 0), None on the other ranks. Collective: every rank
    calls it with the same names."""
    full = {} if comm.rank == 0 else None
    for name in arrays_by_name:
        a = np.ascontiguousarray(arrays_by_name[name])
        if name in sharded:
            parts = comm.gather(a)
            if full is not None:
                full[name] = np.concatenate(parts, axis=0)
        elif full is not None:
            full[name] = a
    return full


def slice_state(full, sharded):
    """The full arrays -> this rank's: expert arrays cut to [lo, hi) on axis 0."""
    return {name: (a[sharded[name][0]:sharded[name][1]].copy() if name in sharded else a)
            for name, a in full.items()}
