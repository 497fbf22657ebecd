"""Training a GPT: the loop, in named steps, with checkpoints that resume bit-identically.

One step: draw a batch -> forward -> loss -> backward -> clip the gradient norm -> set the
learning rate from the schedule (linear warm-up, cosine decay) -> AdamW update.

Everything a run needs to continue lives in one checkpoint: parameters, AdamW's moments, the
step, the global generators (the host's and the device stream that dropout and router jitter
draw from on a GPU) and the batch sampler's generators. So 10 steps + resume + 10 steps gives
exactly the parameters of 20 steps straight, on the CPU and on one GPU alike.

On a GPU the step keeps its numbers on the device, and the host never waits for it in a dense
step: the batch is cut from the corpus already on the device (only its B start positions cross),
and the loss and the gradient norm are read every log_interval steps (see _sync_interval). A MoE
step waits once per MoE layer, which is inherent to dropless dispatch: the buffer's size
(tokens kept per expert) is data, and the host reads it before it can allocate; a fixed
capacity would avoid it at the cost of padding. tests/test_fake_gpu.py counts these waits.

Times on a GPU: a step returns once its work is queued, not done. The times printed (the
progress line, the tokens/s of log.jsonl and of the summary) cover windows that end with a read
of the losses, which waits for every queued step: they are device times, not queueing times.
"""
from __future__ import annotations

import math
import os
import signal
import sys
import time

import numpy as np
from tqdm import tqdm

from .. import optim
from .. import ledger
from ..engine import backend
from ..engine import random as ts_random
from ..gpt import GPT, GPTConfig
from .atomic import save_json, truncate_log
from .checkpoint import (CKPT_NAME, CONFIG_NAME, LOG_NAME, load_checkpoint, load_state,
                         save_checkpoint)
from .config import TrainConfig
from .data import BatchSampler, load_corpus
from .evaluation import evaluate
from .reporting import RunReporting, _moe_text  # noqa: F401  (_moe_text: tests read it here)
from .sampling import causality_warning


class TrainingDiverged(RuntimeError):
    """The loss or the gradient became NaN or infinite; the last good checkpoint was kept."""


# ----------------------------------------------------------------------------- pieces

class _SigintFlag:
    """The first Ctrl-C asks the loop to stop after the current step (so the saved state is
    consistent); a second one raises KeyboardInterrupt at once."""

    def __init__(self):
        self.requested, self._old = False, None

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        try:
            self._old = signal.signal(signal.SIGINT, self._handle)
        except ValueError:          # not the main thread: keep Python's default behaviour
            self._old = None
        return self

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def _sync_interval(device, cfg):
    """Steps between reads of the loss from the device: every step on the CPU (free there), every
    log_interval steps on a GPU (each read makes the host wait for the device)."""
    return 1 if device == "cpu" else cfg.log_interval


def _host_floats(values):
    """Python floats of scalars that may live on a GPU, copied to the host in one transfer."""
    arrays = [v for v in values if not isinstance(v, (int, float))]
    if not arrays:
        return [float(v) for v in values]
    xp = backend.array_module(arrays[0])
    stacked = xp.stack([xp.asarray(v, dtype=xp.float64).reshape(()) for v in values])
    return [float(v) for v in backend.to_numpy(stacked)]


# ----------------------------------------------------------------------------- the run

class TrainingRun(RunReporting):
    """One training run, in the named steps train() calls: setup (__init__), step, evaluate,
    save, finish. It holds what they share: the model, the optimizer, the batch sampler, the run
    state that goes into checkpoints (`st`) and the steps whose losses are not read yet."""

    def __init__(self, model_config: GPTConfig, train_config: TrainConfig, resume=False):
        """Setup: load the checkpoint when resuming, build model, optimizer and sampler, restore
        their state, write config.json and drop the log lines of steps about to be redone."""
        cfg, mcfg = self.cfg, self.mcfg = train_config, model_config
        self.device = backend.resolve_device(cfg.device)
        self.ckpt_path = os.path.join(cfg.out_dir, CKPT_NAME)
        ckpt = _load_for_resume(cfg, mcfg) if resume else None
        self.resumed = ckpt is not None
        self.corpus = load_corpus(cfg.data, mcfg.block_size, cfg.max_bytes, seed=cfg.seed)
        ts_random.manual_seed(cfg.seed)
        self.model, self.opt = self._build_model(ckpt)
        self.sampler = BatchSampler(self.corpus, cfg.batch_size, mcfg.block_size, seed=cfg.seed,
                                    device=self.device)
        self.st = {"step": 0, "best_val_loss": math.inf, "history": [], "val_loss": None,
                   "train_flops": 0.0, "train_flops_matmul": 0.0}
        if ckpt is not None:
            self.sampler.load_state_dict(ckpt["sampler"])
            ts_random.set_state(ckpt["rng"])
            if ckpt.get("rng_cupy") is not None:    # None: a checkpoint from before it was saved
                ts_random.set_device_state(ckpt["rng_cupy"])
            self.st.update({k: ckpt[k] for k in self.st if ckpt.get(k) is not None})
            self.st["history"] = list(self.st["history"])
        self.saved_step = self.st["step"] if ckpt is not None else None
        self.log_path = os.path.join(cfg.out_dir, LOG_NAME)
        if self.writes:
            save_json(os.path.join(cfg.out_dir, CONFIG_NAME),
                      {"model": mcfg.to_dict(), "train": cfg.to_dict(), "device": self.device,
                       "n_params": self.n_params(), "corpus": repr(self.corpus), **self.extra_config()})
            truncate_log(self.log_path, self.st["step"] if ckpt is not None else -1)  # steps to redo
        self.step_count = self.st["step"]
        self.tokens_per_step = cfg.batch_size * mcfg.block_size
        self.tokens, self.train_time = 0, 0.0
        self.window_steps, self.window_time = 0, 0.0   # steps since the last printed progress line
        self.read_steps, self.read_time = 0, 0.0       # steps since the last read of the losses
        self.rate = math.nan                           # tokens/s over the last read window
        self.moe = None                 # load statistics of the last read training step
        # Reading a number from the GPU makes the host wait for the device. On the CPU every
        # step is checked at once; on a GPU the losses and gradient norms stay on the device and
        # are read together every log_interval steps, and always before an evaluation or a
        # checkpoint (so a diverged model is never saved). MoE load statistics follow suit.
        self.sync_every = _sync_interval(self.device, cfg)
        self.pending = []               # (step, loss, grad norm) not yet read and checked
        self.loss_value = math.nan      # the last loss read
        self.horizon = cfg.lr_decay_iters or cfg.max_iters

    # ---- what a subclass may change (tinysparse/parallel: expert parallelism over ranks) ----------
    writes = True                       # this process writes the run folder (one rank of many does)

    def _build_model(self, ckpt):
        """The model and its optimizer, with the checkpoint's state when resuming."""
        model = GPT(self.mcfg).to(self.device)
        opt = optim.AdamW(model.parameters(), lr=self.cfg.lr, betas=(0.9, 0.95),
                          weight_decay=self.cfg.weight_decay)
        if ckpt is not None:
            load_state(ckpt, model, opt)
        return model, opt

    def n_params(self):
        return self.model.num_parameters()

    def extra_config(self):
        """More entries for config.json."""
        return {}

    def _train_batch(self):
        return self.sampler.train_batch()

    def _finish_gradients(self, loss, counted):
        """After backward: (loss, gradient norm, FLOPs, matmul FLOPs) of the step, the gradients
        clipped. One process: its own numbers."""
        norm = optim.clip_grad_norm(self.model.parameters(), self.cfg.grad_clip or math.inf)
        return loss.data, norm, counted.flops, counted.flops_matmul

    def _scores(self):
        """{"train": mean loss, "val": mean loss} of the fixed evaluation batches."""
        return evaluate(self.model, self.corpus, self.cfg, self.mcfg.block_size)

    def _state(self):
        """The model's and the optimizer's state dicts as a checkpoint stores them."""
        params = [name for name, _ in self.model.named_parameters()]   # the optimizer's order
        return self.model.state_dict(), {**self.opt.state_dict(), "params": params}

    # ---- checkpoint ---------------------------------------------------------------------------------
    def save(self, step):
        self.saved_step = step
        model_state, opt_state = self._state()
        if not self.writes:             # another rank writes (after the shards were gathered)
            return
        save_checkpoint(self.cfg.out_dir, {
            "model": model_state, "optimizer": opt_state,
            "model_config": self.mcfg.to_dict(), "train_config": self.cfg.to_dict(),
            "step": step, "rng": ts_random.get_state(), "rng_cupy": ts_random.get_device_state(),
            "sampler": self.sampler.state_dict(),
            **{k: self.st[k] for k in ("best_val_loss", "history", "val_loss", "train_flops",
                                       "train_flops_matmul")}})

    # ---- the losses of finished steps --------------------------------------------------------------
    def finite_losses(self, entries):
        """The losses of (step, loss, norm) entries as floats, copied to the host in one
        transfer; TrainingDiverged, with the way out, at the first loss or norm not finite."""
        values = _host_floats([v for _, loss, norm in entries for v in (loss, norm)])
        for i, (at, _, _) in enumerate(entries):
            for what, value in (("loss", values[2 * i]), ("gradient norm", values[2 * i + 1])):
                if not math.isfinite(value):
                    raise TrainingDiverged(f"{what} is {value} at step {at}; training stopped, "
                                           f"{self.kept()}; lower --lr (or raise --warmup-iters) "
                                           f"and train again")
        return values[0::2]

    def read_pending(self):
        """Check and record the steps done since the last read (the loss history, the bar)."""
        if self.pending:
            self.st["history"].extend(self.finite_losses(self.pending))
            self.loss_value = self.st["history"][-1]
            self.pending.clear()

    # ---- one step --------------------------------------------------------------------------------------
    def step(self, progress):
        """batch -> forward -> backward -> clip -> learning rate -> AdamW update. `progress["phase"]`
        says how far it got ("step", then "update", then "after"), for the Ctrl-C handler."""
        cfg, step = self.cfg, self.step_count
        x, y = self._train_batch()
        # every step is counted (the ledger: FLOPs executed, forward + backward; the optimizer's
        # update is not a Function and is not in it); weights=False: no wait for a GPU
        with ledger.count(weights=False) as led:
            _, loss = self.model(x, y)
            self.opt.zero_grad()
            loss.backward()
        loss_value, norm, flops, flops_matmul = self._finish_gradients(loss, led.totals)
        entry = (step + 1, loss_value, norm)
        if self.sync_every == 1:        # on the CPU: a diverged step never reaches the update
            self.finite_losses([entry])
        self.opt.lr = optim.cosine_lr(step, cfg.lr, cfg.warmup_iters, self.horizon, cfg.min_lr)
        self.pending.append(entry)      # recorded at the next read, once the step is done
        progress["phase"] = "update"
        self.opt.step()
        if hasattr(self.model, "update_router_bias"):
            self.model.update_router_bias()  # MoE aux-loss-free balancing; no-op when dense
        self.step_count = step = step + 1
        self.st["train_flops"] += flops                   # with the step, never for an undone one
        self.st["train_flops_matmul"] += flops_matmul
        progress["phase"] = "after"     # from here on the state is consistent at `step`
        if (step % self.sync_every == 0 or step % cfg.eval_interval == 0
                or step % cfg.checkpoint_interval == 0 or step == cfg.max_iters):
            self.read_pending()
            self.moe = self.model.moe_stats()

    # ---- the loop ----------------------------------------------------------------------------------------
    def loop(self):
        """Steps until max_iters, evaluating and saving on their intervals. Returns "done",
        "interrupted" (Ctrl-C between steps: the state is consistent) or "aborted" (Ctrl-C
        during an update: the parameters are half updated and must not be saved)."""
        cfg, last_eval = self.cfg, None
        with _SigintFlag() as sigint, np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            bar = tqdm(total=cfg.max_iters, initial=self.step_count, unit="step",
                       dynamic_ncols=True, disable=None)
            try:
                if self.step_count == 0:
                    last_eval = self.evaluate(0)
                while self.step_count < cfg.max_iters:
                    if sigint.requested:
                        return "interrupted"
                    before = (self.sampler.state_dict(), ts_random.get_state(),
                              ts_random.get_device_state())
                    progress = {"phase": "step"}
                    try:
                        t0 = time.perf_counter()
                        self.step(progress)
                        dt = time.perf_counter() - t0
                        self.train_time += dt
                        self.tokens += self.tokens_per_step
                        self.show_progress(bar, dt)
                        step = self.step_count
                        if step % cfg.eval_interval == 0:
                            last_eval = self.evaluate(step)
                        if step % cfg.checkpoint_interval == 0:
                            self.save(step)
                    except KeyboardInterrupt:
                        if progress["phase"] == "step":   # the step never happened: undo its draw
                            self.sampler.load_state_dict(before[0])
                            ts_random.set_state(before[1])
                            ts_random.set_device_state(before[2])
                        # during the update the parameters are half updated: never save them
                        return "aborted" if progress["phase"] == "update" else "interrupted"
            finally:
                bar.close()
                self.last_eval = last_eval
        return "done"

def _load_for_resume(cfg, mcfg):
    """The checkpoint a resumed run continues; its model config must be this run's."""
    ckpt = load_checkpoint(cfg.out_dir, resume=True)
    if ckpt["model_config"] != mcfg.to_dict():
        diff = {k: v for k, v in ckpt["model_config"].items() if mcfg.to_dict().get(k) != v}
        raise ValueError(f"--resume: the checkpoint in {cfg.out_dir} has model config {diff}; "
                         f"drop the model flags that differ, or use a new --out-dir")
    return ckpt


def train(model_config: GPTConfig, train_config: TrainConfig, resume=False) -> dict:
    """Train (or, with resume, continue) a GPT; returns a summary dict with status "done" or
    "interrupted". Raises TrainingDiverged on a NaN/inf loss, DataError on bad data.

    The steps, each a method of TrainingRun: setup, then loop (step, show progress, evaluate
    and log on eval_interval, save on checkpoint_interval), then finish (a last evaluation and
    checkpoint, the sample). Between setup and the first step, a "warning: ..." line on stderr
    for each setting that is valid but probably not meant (TrainConfig.warnings: a run that
    never leaves warm-up; expert-choice routing, which is not causal)."""
    run = TrainingRun(model_config, train_config, resume)
    return run_training(run)


def run_training(run):
    """The banner and warnings, the loop, the end (train()'s body, for a TrainingRun subclass)."""
    cfg = run.cfg
    print(f"training GPT ({run.n_params() / 1e6:.2f}M parameters) on {run.corpus!r}, "
          f"{run.device}, steps {run.step_count}->{cfg.max_iters} of {cfg.batch_size}x"
          f"{run.mcfg.block_size} tokens, run folder {cfg.out_dir}"
          + (" (resumed)" if run.resumed else ""), flush=True)
    for warning in cfg.warnings() + [causality_warning(run.mcfg)]:
        if warning and run.writes:      # valid settings that are probably not meant (said once
                                        # by the rank that writes, not by every rank)
            print(f"warning: {warning}", file=sys.stderr, flush=True)
    return run.finish(run.loop())
