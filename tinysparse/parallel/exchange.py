"""The differentiable token exchange of expert parallelism, as autograd Functions.

    received = all_to_all(buffer, send_counts, recv_counts, comm)   # rows travel to their experts
    rows = take_rows(received, index)                               # regroup by expert (a gather)
    back = put_rows(y, index, n)                                    # undo it; dropped rows are 0

The all-to-all is its own adjoint's mirror: the forward sends send_counts[p] rows to rank p and
receives recv_counts[p] from it; the backward sends the gradients of those received rows back the
way they came (recv_counts out, send_counts in). No floating-point sums anywhere: each gradient
row has exactly one destination, so the backward is exact and deterministic. (GShard, Lepikhin et
al. 2020, section 3.2, Algorithm 2: the AllToAll pair of dispatch and combine; DeepSpeed-MoE and
Megatron-LM implement the same pair with NCCL.)
"""
import numpy as np

from ..engine.backend import array_module
from ..engine.function import Function
from ..ledger.costs import ZERO, Formula, register


class AllToAll(Function):
    # out = rows exchanged by Alltoallv;  backward: the gradient rows exchanged back
    new_grads = True

    @staticmethod
    def forward(ctx, rows, send_counts, recv_counts, comm, tally=None):
        ctx.comm, ctx.send, ctx.recv, ctx.tally = comm, send_counts, recv_counts, tally
        out = comm.alltoallv(rows, send_counts, recv_counts)
        if tally is not None:
            tally(rows, send_counts, comm.rank, "forward")
        return out

    @staticmethod
    def backward(ctx, grad):
        out = ctx.comm.alltoallv(grad, ctx.recv, ctx.send)
        if ctx.tally is not None:
            ctx.tally(grad, ctx.recv, ctx.comm.rank, "backward")
        return out


def all_to_all(rows, send_counts, recv_counts, comm, tally=None):
    """rows (N, C) -> (sum(recv_counts), C): send_counts[p] rows to rank p, recv_counts[p] rows
    received from rank p, in rank order. tally(rows, counts, rank, phase): the communication
    ledger's hook (bytes that left this rank)."""
    return AllToAll.apply(rows, send_counts=send_counts, recv_counts=recv_counts, comm=comm,
                          tally=tally)


class TakeRows(Function):
    # out[i] = x[index[i]]  (index without repeats);  backward: dx[index[i]] = g[i], other rows 0
    new_grads = True

    @staticmethod
    def forward(ctx, x, index):
        ctx.index, ctx.n = index, x.shape[0]
        return x[index]

    @staticmethod
    def backward(ctx, grad):
        xp = array_module(grad)
        dx = xp.zeros((ctx.n, *grad.shape[1:]), dtype=grad.dtype)
        dx[ctx.index] = grad                                  # one row each: no sum, no race
        return dx


def take_rows(x, index):
    """x (N, C), index (S,) distinct row ids -> (S, C)."""
    return TakeRows.apply(x, index=index)


class PutRows(Function):
    # out = zeros(n, C); out[index[i]] = y[i];  backward: dy[i] = g[index[i]]
    new_grads = True

    @staticmethod
    def forward(ctx, y, index, n):
        ctx.index = index
        xp = array_module(y)
        out = xp.zeros((n, *y.shape[1:]), dtype=y.dtype)
        out[index] = y
        return out

    @staticmethod
    def backward(ctx, grad):
        return grad[ctx.index]


def put_rows(y, index, n):
    """y (S, C) into an (n, C) array of zeros at rows index (S,): take_rows' inverse."""
    return PutRows.apply(y, index=index, n=n)


# The ledger's cost formulas: data movement, no arithmetic (0 FLOPs; the counter adds the bytes
# of the arrays read and written). The bytes that cross between ranks are the communication
# ledger's (ledger.py), not the memory ledger's.
for _cls, _what in ((AllToAll, "Alltoallv of rows between ranks"),
                    (TakeRows, "a gather of rows"), (PutRows, "a scatter of rows into zeros")):
    register(_cls, Formula(lambda arrays, out, options, ctx: ZERO,
                           lambda node, ctx, grad, grads: ZERO,
                           f"0 FLOPs: {_what} (data movement; bytes counted)"))


def owner_layout(recv, capacity=None):
    """Where each received row goes in the owner's expert buffer.

    recv (P, E_local) int: rows received from rank p for local expert e; they arrive source-major
    (all of rank 0's rows, expert by expert, then rank 1's, ...). The experts' grouped matmul
    wants them expert-major. Within an expert the rows stay in source order, which is the global
    token order (rank p holds the p-th slice of the global batch), so a capacity C keeps exactly
    the rows a single process would keep: the first C of each expert's queue over all ranks
    (Switch, Fedus et al. 2021, section 2.2; GShard's capacity is per expert over the group too).

    Returns index (S,) int64, the received row of each expert-buffer row, and offsets
    (E_local + 1,) int64: local expert e owns buffer rows [offsets[e], offsets[e+1])."""
    recv = np.asarray(recv, dtype=np.int64)
    P, E_local = recv.shape
    start = np.zeros(P * E_local, dtype=np.int64)
    start[1:] = np.cumsum(recv.reshape(-1))[:-1]
    start = start.reshape(P, E_local)                          # first received row of (p, e)
    pieces, kept = [], np.zeros(E_local, dtype=np.int64)
    for e in range(E_local):
        room = capacity
        for p in range(P):
            n = int(recv[p, e]) if room is None else min(int(recv[p, e]), room)
            pieces.append(np.arange(start[p, e], start[p, e] + n, dtype=np.int64))
            kept[e] += n
            room = None if room is None else room - n
    offsets = np.zeros(E_local + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(kept)
    index = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)
    return index, offsets
