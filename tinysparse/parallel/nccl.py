"""The GPU path of the all-to-all: NCCL through CuPy (cupy.cuda.nccl), rows never leave the GPUs.

NCCL has no Alltoallv; it is written as one group of point-to-point calls, a send to and a
receive from every peer with rows to exchange, which NCCL runs concurrently (the way
DeepSpeed-MoE and Megatron-LM's token dispatcher call it through torch.distributed):

    groupStart(); for p: send(rows for p) and recv(rows from p); groupEnd()

MPI stays the launcher and carries the NCCL unique id from rank 0 to the others. Without NCCL
(or with a CUDA-aware MPI that mpi4py can hand CuPy arrays to) the communicator stages CuPy rows
through the host (comm.py): correct everywhere, slower. Each rank uses GPU `local_rank % count`.
"""
import numpy as np

from ..engine import backend
from .comm import ParallelError


def pairs(send_counts, recv_counts, row):
    """(peer, send offset, send count, recv offset, recv count) in ELEMENTS for every peer with
    rows to send or receive; row = numbers per row. Offsets are exclusive prefix sums: the rows
    for rank p follow those for ranks 0..p-1, in both buffers."""
    send_counts = np.asarray(send_counts, dtype=np.int64)
    recv_counts = np.asarray(recv_counts, dtype=np.int64)
    s_off = np.concatenate([[0], np.cumsum(send_counts)[:-1]])
    r_off = np.concatenate([[0], np.cumsum(recv_counts)[:-1]])
    return [(p, int(s_off[p]) * row, int(send_counts[p]) * row, int(r_off[p]) * row,
             int(recv_counts[p]) * row)
            for p in range(len(send_counts)) if send_counts[p] or recv_counts[p]]


class NcclAlltoallv:
    """Alltoallv of CuPy rows over NCCL, for the ranks of an MPIComm (a collective to build)."""

    def __init__(self, comm):
        nccl = backend.cuda_nccl()
        if nccl is None:
            raise ParallelError("NCCL through CuPy is not available here; the all-to-all "
                                "stages GPU rows through the host instead")
        self.cupy, self.nccl = backend.get_xp("cuda"), nccl
        uid = comm.bcast(nccl.get_unique_id() if comm.rank == 0 else None)
        self.comm = nccl.NcclCommunicator(comm.size, uid, comm.rank)
        self.types = {np.dtype(np.float32): nccl.NCCL_FLOAT32,
                      np.dtype(np.float64): nccl.NCCL_FLOAT64,
                      np.dtype(np.float16): nccl.NCCL_FLOAT16}

    def alltoallv(self, rows, send_counts, recv_counts):
        cupy, nccl = self.cupy, self.nccl
        rows = cupy.ascontiguousarray(rows)
        out = cupy.empty((int(np.sum(recv_counts)), *rows.shape[1:]), dtype=rows.dtype)
        kind = self.types.get(np.dtype(rows.dtype))
        if kind is None:
            raise ParallelError(f"NCCL all-to-all of {rows.dtype} rows is not wired; use float32 "
                                f"or float64")
        row = int(np.prod(rows.shape[1:], dtype=np.int64))
        size = rows.dtype.itemsize
        stream = cupy.cuda.get_current_stream().ptr
        nccl.groupStart()
        for peer, s_off, s_n, r_off, r_n in pairs(send_counts, recv_counts, row):
            if s_n:
                self.comm.send(rows.data.ptr + s_off * size, s_n, kind, peer, stream)
            if r_n:
                self.comm.recv(out.data.ptr + r_off * size, r_n, kind, peer, stream)
        nccl.groupEnd()
        return out


def use_gpus(comm):
    """Put this rank on GPU rank % count and give `comm` NCCL when CuPy has it (else the host
    staging of comm.py stays). Returns the device id."""
    cupy = backend.get_xp("cuda")
    count = cupy.cuda.runtime.getDeviceCount()
    if count < 1:
        raise ParallelError("--device cuda with --parallel expert: no GPU is visible to this rank")
    device = comm.rank % count
    cupy.cuda.Device(device).use()
    if comm.size > count:
        return device               # several ranks per GPU: NCCL refuses them; host staging
    try:
        comm.nccl = NcclAlltoallv(comm)
    except ParallelError:
        comm.nccl = None
    return device
