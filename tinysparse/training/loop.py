"""Training a GPT: the loop, evaluation, checkpoints that resume bit-identically, and sampling.

One step: draw a batch -> forward -> loss -> backward -> clip the gradient norm -> set the
learning rate from the schedule (linear warm-up, cosine decay) -> AdamW update.

Everything a run needs to continue lives in one checkpoint: parameters, AdamW's moments, the
step, the global generator (dropout) and the batch sampler's generators. So on the CPU,
10 steps + resume + 10 steps gives exactly the parameters of 20 steps straight. (On a GPU,
CuPy's dropout generator is not saved, so a resumed run there is close but not bit-identical.)

On a GPU the step keeps its numbers on the device: the loss and the gradient norm are read every
log_interval steps (see _sync_interval). What still waits for the device each step is inherent
to dropless MoE dispatch: the buffer's size (tokens kept per expert) is data, so the host reads
it once per MoE layer before it can allocate; a fixed capacity would avoid it at the cost of
padding.
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
from ..engine import backend
from ..engine import random as ts_random
from .checkpoint import (CKPT_NAME, CONFIG_NAME, LOG_NAME, CheckpointError, append_log,
                         load_checkpoint, save_checkpoint, save_json, truncate_log)
from .data import BatchSampler, get_batch, load_corpus
from ..engine.tensor import no_grad
from ..gpt import GPT, GPTConfig
from .config import TrainConfig
from .sampling import sample_text


class TrainingDiverged(RuntimeError):
    """The loss or the gradient became NaN or infinite; the last good checkpoint was kept."""


# ----------------------------------------------------------------------------- pieces

def bits_per_byte(nats):
    """Byte tokens: a token is a byte, so nats per token / ln 2 = bits per byte."""
    return nats / math.log(2)


def evaluate(model, corpus, cfg, block_size):
    """Mean loss over eval_iters batches of each split, under no_grad in eval mode. The batches
    come from a fresh generator each time: every evaluation scores the same text (comparable
    over time), and evaluating never moves the training generators (resume stays exact)."""
    model.eval()
    out = {}
    with no_grad():
        for i, split in enumerate(("train", "val")):
            rng = np.random.default_rng([cfg.seed, 7919, i])
            data = getattr(corpus, split)
            losses = [float(model(*get_batch(data, cfg.batch_size, block_size, rng))[1].item())
                      for _ in range(cfg.eval_iters)]
            out[split] = float(np.mean(losses))
    model.train()
    return out


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


def _moe_text(moe):
    """', load 1.31 max/mean, dropped 0.4%' for a MoE model's progress line; '' when dense."""
    if moe is None:
        return ""
    return f", load {moe['max_over_mean_load']:.2f} max/mean, dropped {moe['dropped_fraction']:.1%}"


# ----------------------------------------------------------------------------- the loop

def train(model_config: GPTConfig, train_config: TrainConfig, resume=False) -> dict:
    """Train (or, with resume, continue) a GPT; returns a summary dict with status "done" or
    "interrupted". Raises TrainingDiverged on a NaN/inf loss, DataError on bad data."""
    cfg, mcfg = train_config, model_config
    device = backend.resolve_device(cfg.device)
    ckpt_path = os.path.join(cfg.out_dir, CKPT_NAME)
    ckpt = None
    if resume:
        if not os.path.exists(ckpt_path):
            raise CheckpointError(f"--resume: no checkpoint at {ckpt_path}; drop --resume to start "
                                  f"a new run, or pass the --out-dir of the run to continue")
        ckpt = load_checkpoint(ckpt_path)
        if ckpt["model_config"] != mcfg.to_dict():
            diff = {k: v for k, v in ckpt["model_config"].items() if mcfg.to_dict().get(k) != v}
            raise ValueError(f"--resume: the checkpoint in {cfg.out_dir} has model config {diff}; "
                             f"drop the model flags that differ, or use a new --out-dir")
    corpus = load_corpus(cfg.data, mcfg.block_size, cfg.max_bytes, seed=cfg.seed)
    ts_random.manual_seed(cfg.seed)
    model = GPT(mcfg).to(device)
    opt = optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    sampler = BatchSampler(corpus, cfg.batch_size, mcfg.block_size, seed=cfg.seed)
    st = {"step": 0, "best_val_loss": math.inf, "history": [], "val_loss": None}
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sampler.load_state_dict(ckpt["sampler"])
        ts_random.set_state(ckpt["rng"])
        st.update({k: ckpt[k] for k in st if k in ckpt})
        st["history"] = list(st["history"])
    save_json(os.path.join(cfg.out_dir, CONFIG_NAME),
              {"model": mcfg.to_dict(), "train": cfg.to_dict(), "device": device,
               "n_params": model.num_parameters(), "corpus": repr(corpus)})
    st["saved_step"] = st["step"] if ckpt is not None else None
    log_path = os.path.join(cfg.out_dir, LOG_NAME)
    truncate_log(log_path, st["step"] if ckpt is not None else -1)   # drop steps to be redone

    def kept():
        if st["saved_step"] is not None:
            return f"the last good checkpoint (step {st['saved_step']}) is kept in {ckpt_path}"
        return "no checkpoint of this run was written yet"

    def save(step):
        st["saved_step"] = step
        save_checkpoint(ckpt_path, {
            "version": 1, "model": model.state_dict(), "optimizer": opt.state_dict(),
            "model_config": mcfg.to_dict(), "train_config": cfg.to_dict(), "step": step,
            "rng": ts_random.get_state(), "sampler": sampler.state_dict(), **{
                k: st[k] for k in ("best_val_loss", "history", "val_loss")}})

    def run_eval(step):
        losses = evaluate(model, corpus, cfg, mcfg.block_size)
        best = losses["val"] < st["best_val_loss"]
        st["best_val_loss"] = min(st["best_val_loss"], losses["val"])
        st["val_loss"] = losses["val"]
        rate = tokens / train_time if train_time else None
        record = {"step": step, "train_loss": losses["train"], "val_loss": losses["val"],
                  "val_bpb": bits_per_byte(losses["val"]), "lr": opt.lr if step else None,
                  "tokens_per_s": rate}
        if st["moe"] is not None:       # load balance of the last training step
            record.update({f"moe_{k}": v for k, v in st["moe"].items()})
        append_log(log_path, record)
        tqdm.write(f"step {step:>6}: train {losses['train']:.4f}, val {losses['val']:.4f} nats "
                   f"= {bits_per_byte(losses['val']):.3f} bits/byte{'  (best)' if best else ''}"
                   + _moe_text(st["moe"]))
        sys.stdout.flush()              # show it now, also when stdout is a pipe (| tee log)
        return step

    tokens_per_step = cfg.batch_size * mcfg.block_size
    st["moe"] = None
    # Reading a number from the GPU makes the host wait for the device. On the CPU every step is
    # checked at once; on a GPU the losses and gradient norms stay on the device and are read
    # together every log_interval steps, and always before an evaluation or a checkpoint (so a
    # diverged model is never saved). The MoE load statistics follow the same rhythm.
    sync_every = _sync_interval(device, cfg)
    pending = []                        # (step, loss, grad norm) not yet read and checked
    horizon = cfg.lr_decay_iters or cfg.max_iters
    step, tokens, train_time, status, last_eval = st["step"], 0, 0.0, "done", None
    loss_value = math.nan

    def finite_losses(entries):
        """The losses of (step, loss, norm) entries as floats, copied to the host in one transfer;
        TrainingDiverged, with the way out, at the first loss or norm that is not finite."""
        values = _host_floats([v for _, loss, norm in entries for v in (loss, norm)])
        for i, (at, _, _) in enumerate(entries):
            for what, value in (("loss", values[2 * i]), ("gradient norm", values[2 * i + 1])):
                if not math.isfinite(value):
                    raise TrainingDiverged(f"{what} is {value} at step {at}; training stopped, "
                                           f"{kept()}; lower --lr (or raise --warmup-iters) and "
                                           f"train again")
        return values[0::2]

    def read_pending():
        """Check and record the steps done since the last read (the loss history, the bar)."""
        nonlocal loss_value
        if pending:
            st["history"].extend(finite_losses(pending))
            loss_value = st["history"][-1]
            pending.clear()

    print(f"training GPT ({model.num_parameters() / 1e6:.2f}M parameters) on {corpus!r}, {device}, "
          f"steps {step}->{cfg.max_iters} of {cfg.batch_size}x{mcfg.block_size} tokens, "
          f"run folder {cfg.out_dir}" + (" (resumed)" if ckpt else ""), flush=True)
    bar = tqdm(total=cfg.max_iters, initial=step, unit="step", dynamic_ncols=True, disable=None)
    with _SigintFlag() as sigint, np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        if step == 0:
            last_eval = run_eval(0)
        while step < cfg.max_iters:
            if sigint.requested:
                status = "interrupted"
                break
            before = (sampler.state_dict(), ts_random.get_state())
            phase = "step"
            try:
                t0 = time.perf_counter()
                x, y = sampler.train_batch()
                _, loss = model(x, y)
                opt.zero_grad()
                loss.backward()
                norm = optim.clip_grad_norm(model.parameters(), cfg.grad_clip or math.inf)
                entry = (step + 1, loss.data, norm)
                if sync_every == 1:         # on the CPU: a diverged step never reaches the update
                    finite_losses([entry])
                opt.lr = optim.cosine_lr(step, cfg.lr, cfg.warmup_iters, horizon, cfg.min_lr)
                pending.append(entry)       # recorded at the next read, once the step is done
                phase = "update"
                opt.step()
                if hasattr(model, "update_router_bias"):
                    model.update_router_bias()  # MoE aux-loss-free balancing; no-op when dense
                step += 1
                phase = "after"             # from here on the state is consistent at `step`
                if (step % sync_every == 0 or step % cfg.eval_interval == 0
                        or step % cfg.checkpoint_interval == 0 or step == cfg.max_iters):
                    read_pending()
                    st["moe"] = model.moe_stats()
                dt = time.perf_counter() - t0
                train_time, tokens = train_time + dt, tokens + tokens_per_step
                bar.update(1)
                bar.set_postfix_str(f"loss {loss_value:.4f}, {tokens_per_step / dt:,.0f} tok/s"
                                    + _moe_text(st["moe"]), refresh=False)
                if bar.disable and step % cfg.log_interval == 0:
                    print(f"step {step}/{cfg.max_iters}: loss {loss_value:.4f}, lr {opt.lr:.2e}, "
                          f"{1000 * dt:.1f} ms/step, {tokens / train_time:,.0f} tok/s"
                          + _moe_text(st["moe"]), flush=True)
                if step % cfg.eval_interval == 0:
                    last_eval = run_eval(step)
                if step % cfg.checkpoint_interval == 0:
                    save(step)
            except KeyboardInterrupt:
                if phase == "step":         # the step never happened: undo its batch draw
                    sampler.load_state_dict(before[0])
                    ts_random.set_state(before[1])
                # during the update the parameters are half updated: saving them would be wrong
                status = "aborted" if phase == "update" else "interrupted"
                break
            except TrainingDiverged:
                bar.close()
                raise
    bar.close()
    if status == "interrupted":
        read_pending()                  # a GPU's unread steps: never save a diverged model
        save(step)
        print(f"interrupted at step {step}; checkpoint saved to {ckpt_path} "
              f"(continue with --resume)", flush=True)
    elif status == "aborted":
        status = "interrupted"
        print(f"interrupted during the update of step {step + 1}; nothing saved, {kept()}", flush=True)
    else:
        if last_eval != step:
            run_eval(step)
        save(step)
    summary = {"status": status, "step": step, "val_loss": st["val_loss"],
               "val_bpb": None if st["val_loss"] is None else bits_per_byte(st["val_loss"]),
               "best_val_loss": st["best_val_loss"], "history": list(st["history"]),
               "tokens_per_s": tokens / train_time if train_time else None,
               "train_time_s": train_time, "out_dir": cfg.out_dir, "checkpoint": ckpt_path,
               "moe": st["moe"]}
    if status == "done" and cfg.sample_tokens:
        summary["sample"] = sample_text(model, "\n", cfg.sample_tokens, 0.8, 50, seed=0)
        print(f"---- sample ({cfg.sample_tokens} bytes, temperature 0.8, top_k 50) ----")
        print(summary["sample"], flush=True)
    return summary
