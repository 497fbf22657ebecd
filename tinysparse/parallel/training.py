"""Training with expert parallelism: the training loop of training/loop.py on P ranks.

    mpiexec -n 2 python -m tinysparse train --preset tiny-moe --parallel expert

What changes against one process (each a hook of TrainingRun):
- the model is built whole on every rank from the same seed (so the initial weights are a single
  process's), then each MoE layer keeps its rank's E/P experts (expert_moe.py);
- every rank draws the same global batch and keeps its own slice of B/P sequences;
- after backward: dense gradients averaged in rank order, global clipping (data_parallel.py);
- the loss logged is the global batch's (the mean of the ranks' losses);
- evaluation: each rank scores its slice of each evaluation batch, the losses are averaged;
- checkpoints: rank 0 gathers the expert shards and their AdamW moments and writes the single-
  process checkpoint (atomically, as always); only rank 0 writes into the run folder.
The global batch must split evenly: batch_size divisible by P (a ParallelError otherwise).
"""
import contextlib
import os
import sys

import numpy as np

from .. import optim
from ..engine import backend
from ..engine.backend import to_numpy
from ..engine.tensor import no_grad
from ..gpt import GPT
from ..training.checkpoint import load_state
from ..training.data import get_batch
from ..training.loop import TrainingRun, run_training
from .comm import DEFAULT_TIMEOUT, ParallelError, world
from .data_parallel import clip_global_norm, gather_full, reduce_gradients, slice_state
from .expert_moe import expert_parallel, sharded_parameters
from .ledger import CommLedger


class ParallelTrainingRun(TrainingRun):
    """TrainingRun on the ranks of `comm` (every rank makes one, with the same configs)."""

    def __init__(self, model_config, train_config, comm, resume=False):
        P = comm.size
        if train_config.batch_size % P:
            raise ParallelError(f"--batch-size {train_config.batch_size} does not split over "
                                f"{P} ranks: use a multiple of {P}")
        self.comm, self.ledger = comm, CommLedger(comm)
        self.writes = comm.rank == 0
        if backend.resolve_device(train_config.device) == "cuda":
            from .nccl import use_gpus
            use_gpus(comm)              # this rank's GPU, before anything is allocated on one
        super().__init__(model_config, train_config, resume)

    def _build_model(self, ckpt):
        model = GPT(self.mcfg).to(self.device)                  # whole, from the seed
        if ckpt is not None:
            load_state(ckpt, model)                              # the full (gathered) arrays
        self.layers = expert_parallel(model, self.comm, self.ledger)
        self.sharded = sharded_parameters(model)
        self.named = list(model.named_parameters())
        opt = optim.AdamW(model.parameters(), lr=self.cfg.lr, betas=(0.9, 0.95),
                          weight_decay=self.cfg.weight_decay)
        if ckpt is not None:                                     # this rank's slice of m and v
            state = dict(ckpt["optimizer"])
            for slot in opt._slots():
                full = dict(zip(ckpt["optimizer"]["params"], state[slot]))
                mine = slice_state(full, self.sharded)
                state[slot] = [mine[name] for name, _ in self.named]
            opt.load_state_dict(state)
        return model, opt

    def n_params(self):
        local = sum(p.size for name, p in self.named if name in self.sharded)
        dense = self.model.num_parameters() - local
        return dense + local * self.comm.size

    def extra_config(self):
        return {"parallel": {"kind": "expert", "world_size": self.comm.size}}

    def _train_batch(self):
        self.ledger.begin_step()
        x, y = self.sampler.train_batch()                       # the global batch, every rank
        return self._my_rows(x), self._my_rows(y)

    def _my_rows(self, a):
        n = a.shape[0] // self.comm.size
        return a[self.comm.rank * n:(self.comm.rank + 1) * n]

    def _finish_gradients(self, loss, counted):
        reduce_gradients(self.named, self.sharded, self.comm)
        norm = clip_global_norm(self.named, self.sharded, self.comm,
                                self.cfg.grad_clip or float("inf"))
        local = np.array([float(to_numpy(loss.data)), counted.flops, counted.flops_matmul])
        total = self.comm.allreduce_sum(local)
        self.ledger.end_step()
        return total[0] / self.comm.size, norm, total[1], total[2]

    def _scores(self):
        """evaluate() of training/evaluation.py, each rank on its slice of every batch."""
        cfg, T = self.cfg, self.mcfg.block_size
        self.model.eval()
        out = {}
        with no_grad():
            for i, split in enumerate(("train", "val")):
                rng = np.random.default_rng([cfg.seed, 7919, i])
                data = getattr(self.corpus, split)
                losses = []
                for _ in range(cfg.eval_iters):
                    x, y = get_batch(data, cfg.batch_size, T, rng)
                    loss = self.model(self._my_rows(x), self._my_rows(y))[1]
                    losses.append(float(to_numpy(loss.data)))
                total = self.comm.allreduce_sum(np.array(losses, dtype=np.float64))
                out[split] = float(np.mean(total / self.comm.size))
        self.model.train()
        return out

    def _state(self):
        """The single-process state dicts on rank 0 (expert shards gathered), None elsewhere."""
        names = [name for name, _ in self.named]
        model = gather_full(self.model.state_dict(), self.sharded, self.comm)
        opt = self.opt.state_dict()
        slots = {slot: gather_full(dict(zip(names, opt[slot])), self.sharded, self.comm)
                 for slot in self.opt._slots()}
        if self.comm.rank != 0:
            return None, None
        opt.update({slot: [slots[slot][n] for n in names] for slot in slots})
        return model, {**opt, "params": names}


def train_from_cli(model_config, train_config, resume, timeout):
    """`train --parallel expert` on this rank: the summary on rank 0, None on the others.

    Errors every rank meets alike (a setting, no MPI, one process, a diverged loss) are raised
    on rank 0 for the command line's one-line message and end the other ranks quietly (exit 1
    through SystemExit). Any other error on any rank prints one line and aborts every rank
    (MPI_Abort), so no rank waits for a collective that will never come."""
    from ..training.loop import TrainingDiverged
    comm = world(timeout=DEFAULT_TIMEOUT if timeout is None else timeout)
    if comm.size < 2:
        raise ParallelError("--parallel expert needs 2 or more processes: run it under mpiexec, "
                            "e.g. mpiexec -n 2 python -m tinysparse train --preset tiny-moe "
                            "--parallel expert (or make train-parallel NP=2)")
    try:
        summary = train_parallel(model_config, train_config, comm, resume=resume)
    except (ParallelError, TrainingDiverged, ValueError, KeyError) as e:
        if comm.rank == 0:
            raise
        raise SystemExit(1) from e      # rank 0 says the same
    except Exception as e:              # this rank alone: stop them all now
        comm.abort(" ".join(f"{type(e).__name__}: {e}".split()))
        raise
    return summary if comm.rank == 0 else None


def train_parallel(model_config, train_config, comm, resume=False):
    """train() of training/loop.py with expert parallelism over `comm`; returns the summary
    (the same on every rank). Ranks other than 0 print nothing."""
    quiet = open(os.devnull, "w") if comm.rank else None
    with contextlib.redirect_stdout(quiet) if quiet else contextlib.nullcontext():
        run = ParallelTrainingRun(model_config, train_config, comm, resume)
        summary = run_training(run)
    if quiet:
        quiet.close()
    summary["parallel"] = {"world_size": comm.size, **run.ledger.summary()}
    return summary
