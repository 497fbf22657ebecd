"""The communicator: who am I (rank), how many are we (size), and the few collectives expert
parallelism needs, on MPI through mpi4py, or a single-process stand-in with the same interface.

    comm = world()                        # MPI's COMM_WORLD under mpiexec, else SingleProcess()
    comm.rank, comm.size
    comm.allreduce_sum(a)                 # sum over ranks, in rank order 0, 1, ..., P-1
    comm.alltoall(counts)                 # (P, n) ints: row p goes to rank p; returns row p from p
    comm.alltoallv(rows, send, recv)      # rows (N, C): send[p] rows to rank p, recv[p] from p
    comm.gather(a)                        # [a of rank 0, a of rank 1, ...] on rank 0, None elsewhere

Determinism. MPI_Allreduce may add the ranks' numbers in any order (the algorithm depends on the
message size and the library), and floating-point addition is not associative: two runs, or two
ranks, could then disagree in the last bit, and replicated weights would drift apart. So the sum
here gathers every rank's array (Allgather) and adds them on each rank in the fixed order 0..P-1:
every rank computes bitwise the same sum, run after run. It moves P times the bytes of a ring
all-reduce; at this course's sizes that is the price of reproducibility (a real system would use
a deterministic reduction tree).

Hangs. A collective waits for every rank; if one rank died or hangs, the others would wait for
ever. A watchdog thread aborts the job (MPI_Abort: every rank ends) when one collective has
waited longer than `timeout` seconds, after printing one line that says which collective and how
long. Nothing is written after a collective that did not finish, so no checkpoint is half made.
"""
import sys
import threading
import time
from collections import defaultdict

import numpy as np

from ..engine.backend import array_module, to_device, to_numpy

DEFAULT_TIMEOUT = 300.0     # seconds one collective may wait before the job is aborted


class ParallelError(ValueError):
    """Expert parallelism cannot run as asked (no MPI, one process, E not divisible by P, ...)."""


def mpi_available():
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return False
    return True


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError:
        raise ParallelError("--parallel needs mpi4py and an MPI: install the extra with "
                            "pip install -e '.[parallel]' (make install does)") from None
    return MPI


class _Collectives:
    """What both communicators share: the checks and the host-side bookkeeping."""

    def alltoall(self, counts):
        """counts (P, n) int64, row p for rank p -> (P, n) int64, row p from rank p."""
        counts = np.ascontiguousarray(counts, dtype=np.int64)
        if counts.shape[0] != self.size:
            raise ValueError(f"alltoall needs one row per rank ({self.size}), got {counts.shape}")
        return self._alltoall(counts)

    def alltoallv(self, rows, send_counts, recv_counts):
        """rows (N, C) with N = sum(send_counts): the first send_counts[0] rows go to rank 0, the
        next send_counts[1] to rank 1, ... Returns (sum(recv_counts), C): recv_counts[p] rows
        from rank p, in rank order. NumPy or CuPy rows (CuPy: see _device_alltoallv)."""
        send_counts = np.asarray(send_counts, dtype=np.int64)
        recv_counts = np.asarray(recv_counts, dtype=np.int64)
        if int(send_counts.sum()) != rows.shape[0]:
            raise ValueError(f"alltoallv: send counts add up to {int(send_counts.sum())} rows, "
                             f"but {rows.shape[0]} rows were given")
        xp = array_module(rows)
        if xp is not np:
            return self._device_alltoallv(rows, send_counts, recv_counts)
        return self._alltoallv(np.ascontiguousarray(rows), send_counts, recv_counts)

    def _device_alltoallv(self, rows, send_counts, recv_counts):
        """A GPU array: through NCCL when set up (nccl.py), else staged through the host."""
        if getattr(self, "nccl", None) is not None:
            return self.nccl.alltoallv(rows, send_counts, recv_counts)
        host = self._alltoallv(np.ascontiguousarray(to_numpy(rows)), send_counts, recv_counts)
        return to_device(host, "cuda")

    def allreduce_sum(self, a):
        """The sum over ranks of `a` (an array or a number), added in rank order 0..P-1, so
        bitwise the same on every rank and in every run. Returns a NumPy array (or the array's
        own module for CuPy, staged through the host)."""
        xp = array_module(a) if hasattr(a, "dtype") else np
        host = np.ascontiguousarray(to_numpy(a) if xp is not np else np.asarray(a))
        parts = self._allgather(host)                                  # (P, *a.shape)
        total = parts[0].copy()
        for p in range(1, self.size):                                  # the fixed order
            total += parts[p]
        return total if xp is np else to_device(total, "cuda")


class SingleProcess(_Collectives):
    """The stand-in for one process: every collective returns what this rank would receive
    from itself. Expert parallelism with it is the plain single-process model."""
    rank, size = 0, 1
    nccl = None

    def _alltoall(self, counts):
        return counts.copy()

    def _alltoallv(self, rows, send_counts, recv_counts):
        if int(recv_counts.sum()) != rows.shape[0]:
            raise ValueError("alltoallv on one process: receive counts must equal send counts")
        return rows.copy()

    def _allgather(self, a):
        return a[None].copy()

    def gather(self, a, root=0):
        return [a]

    def bcast(self, value, root=0):
        return value

    def barrier(self):
        pass

    def abort(self, message, code=1):
        raise ParallelError(message)


class MPIComm(_Collectives):
    """MPI's COMM_WORLD (or another communicator), every collective under the watchdog."""

    def __init__(self, comm=None, timeout=DEFAULT_TIMEOUT):
        MPI = _mpi()
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.nccl = None
        self.watchdog = Watchdog(self, timeout)

    def _alltoall(self, counts):
        out = np.empty_like(counts)
        with self.watchdog.guard("alltoall of counts"):
            self.comm.Alltoall(counts, out)
        return out

    def _alltoallv(self, rows, send_counts, recv_counts):
        C = int(np.prod(rows.shape[1:], dtype=np.int64))
        out = np.empty((int(recv_counts.sum()), *rows.shape[1:]), dtype=rows.dtype)
        mpi_type = self.MPI._typedict[rows.dtype.char]
        send = [rows, (send_counts * C, _displacements(send_counts) * C), mpi_type]
        recv = [out, (recv_counts * C, _displacements(recv_counts) * C), mpi_type]
        with self.watchdog.guard("Alltoallv of token rows"):
            self.comm.Alltoallv(send, recv)
        return out

    def _allgather(self, a):
        out = np.empty((self.size, *a.shape), dtype=a.dtype)
        with self.watchdog.guard("all-reduce (Allgather)"):
            self.comm.Allgather(a, out)
        return out

    def gather(self, a, root=0):
        """[a of every rank] on root (None elsewhere): arrays of any shapes, as raw bytes."""
        a = np.ascontiguousarray(a)
        shapes = self._gather_object((a.shape, a.dtype.str), root)
        flat = a.reshape(-1).view(np.uint8)
        sizes = None if shapes is None else np.array(
            [int(np.prod(s)) * np.dtype(d).itemsize for s, d in shapes], dtype=np.int64)
        out = None if sizes is None else np.empty(int(sizes.sum()), dtype=np.uint8)
        recv = None if out is None else [out, (sizes, _displacements(sizes)), self.MPI.BYTE]
        with self.watchdog.guard("gather of expert shards"):
            self.comm.Gatherv([flat, self.MPI.BYTE], recv, root=root)
        if out is None:
            return None
        starts = _displacements(sizes)
        return [out[s:s + n].view(np.dtype(d)).reshape(shape)
                for (shape, d), s, n in zip(shapes, starts, sizes)]

    def _gather_object(self, value, root):
        # shapes and dtype names only: small tuples of ints and strings between our own ranks
        with self.watchdog.guard("gather of shapes"):
            return self.comm.gather(value, root=root)

    def bcast(self, value, root=0):
        """A small Python value (ints, strings, tuples) from root to every rank."""
        with self.watchdog.guard("broadcast"):
            return self.comm.bcast(value, root=root)

    def barrier(self):
        with self.watchdog.guard("barrier"):
            self.comm.Barrier()

    def abort(self, message, code=1):
        """Print one line and end every rank of the job (MPI_Abort)."""
        print(f"error: rank {self.rank}: {message}", file=sys.stderr, flush=True)
        self.comm.Abort(code)


def _displacements(counts):
    """Exclusive prefix sum: where each rank's block starts."""
    d = np.zeros(len(counts), dtype=np.int64)
    d[1:] = np.cumsum(counts)[:-1]
    return d


class Watchdog:
    """One daemon thread per process that aborts the job when a collective has waited more than
    `timeout` seconds: a rank that died or hangs becomes a one-line error on the others, not a
    job that never ends. Arming and disarming cost two attribute writes per collective."""

    def __init__(self, comm, timeout):
        if not (isinstance(timeout, (int, float)) and timeout > 0):
            raise ValueError(f"collective timeout must be a positive number of seconds, got "
                             f"{timeout!r}")
        self.comm, self.timeout = comm, float(timeout)
        self.deadline, self.what = None, None
        self.seconds = defaultdict(float)          # collective -> seconds spent inside it
        self._thread = threading.Thread(target=self._watch, daemon=True, name="mpi-watchdog")
        self._thread.start()

    def guard(self, what):
        return _Armed(self, what)

    def _watch(self):
        tick = min(1.0, self.timeout / 10)
        while True:
            time.sleep(tick)
            deadline = self.deadline
            if deadline is not None and time.monotonic() > deadline:
                self.comm.abort(f"{self.what} waited more than {self.timeout:g} s: another rank "
                                f"died or hangs; stopping every rank (nothing was saved after "
                                f"the last complete checkpoint)")


class _Armed:
    __slots__ = ("dog", "what", "t0")

    def __init__(self, dog, what):
        self.dog, self.what = dog, what

    def __enter__(self):
        self.dog.what = self.what
        self.t0 = time.monotonic()
        self.dog.deadline = self.t0 + self.dog.timeout

    def __exit__(self, *exc):
        self.dog.deadline = None
        self.dog.seconds[self.what] += time.monotonic() - self.t0


def world(timeout=DEFAULT_TIMEOUT, require=True):
    """The communicator of this process: MPIComm over COMM_WORLD when mpi4py is installed,
    SingleProcess otherwise (require=False) or a ParallelError (require=True)."""
    if not mpi_available():
        if require:
            _mpi()                                                 # raises the one-line error
        return SingleProcess()
    return MPIComm(timeout=timeout)
