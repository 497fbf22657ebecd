"""Expert parallelism across processes on MPI (chapter 11).

    comm.py          the communicator: rank, size, the collectives (mpi4py, or one process)
    exchange.py      the all-to-all and the regrouping as autograd Functions
    expert_moe.py    ExpertParallelMoE: E/P experts per rank, tokens travel to them
    data_parallel.py everything else: gradients averaged in rank order; checkpoint shards
    training.py      the training loop on P ranks (python -m tinysparse train --parallel expert)
    ledger.py        the communication ledger: bytes per token per MoE layer, imbalance, seconds
    cost.py          a cost model of the all-to-all, projected to P = 8 ... 1024
    launch.py        launching under mpiexec (tests, make, the chapter)

Layer: above moe and training; nothing below imports it. mpi4py is optional (the `parallel`
extra): without it `world()` is a ParallelError, or the single-process stand-in when asked.
"""
from .comm import DEFAULT_TIMEOUT, MPIComm, ParallelError, SingleProcess, mpi_available, world
from .expert_moe import ExpertParallelMoE, expert_parallel, sharded_parameters

__all__ = ["DEFAULT_TIMEOUT", "MPIComm", "ParallelError", "SingleProcess", "mpi_available",
           "world", "ExpertParallelMoE", "expert_parallel", "sharded_parameters"]
