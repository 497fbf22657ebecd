"""What a training run tells its user: the progress bar or line, the evaluation line and
log.jsonl, the kept checkpoint, and the summary and sample at the end.

TrainingRun (loop.py) inherits these from RunReporting: the loop decides *when* (every step, every
eval_interval, at the end), these say *what*. They read the run's state (self.st, the step
count, the timing windows that loop.py keeps), record the scores they print in self.st, and
never touch the parameters.
"""
import sys

from tqdm import tqdm

from .atomic import append_log
from .evaluation import bits_per_byte
from .sampling import causality_warning, sample_text


def _moe_text(moe):
    """', load 1.31 max/mean, dropped 0.4%' for a MoE model's progress line; '' when dense."""
    if moe is None:
        return ""
    return f", load {moe['max_over_mean_load']:.2f} max/mean, dropped {moe['dropped_fraction']:.1%}"


class RunReporting:
    """The reports of a TrainingRun (see loop.py): evaluate, show_progress, finish, kept."""

    # ---- what a message says about the saved state ----------------------------------------------
    def kept(self):
        if self.saved_step is not None:
            return (f"the last good checkpoint (step {self.saved_step}) is kept in "
                    f"{self.ckpt_path}")
        return "no checkpoint of this run was written yet"

    # ---- evaluate and log ----------------------------------------------------------------------------
    def evaluate(self, step):
        """Score both splits, append a line to log.jsonl, print it; returns step."""
        losses = self._scores()
        best = losses["val"] < self.st["best_val_loss"]
        self.st["best_val_loss"] = min(self.st["best_val_loss"], losses["val"])
        self.st["val_loss"] = losses["val"]
        rate = self.tokens / self.train_time if self.train_time else None
        record = {"step": step, "train_loss": losses["train"], "val_loss": losses["val"],
                  "val_bpb": bits_per_byte(losses["val"]), "lr": self.opt.lr if step else None,
                  "tokens_per_s": rate, "train_flops": self.st["train_flops"],
                  "train_flops_matmul": self.st["train_flops_matmul"]}
        if self.moe is not None:        # load balance of the last training step
            record.update({f"moe_{k}": v for k, v in self.moe.items()})
        if self.writes:
            append_log(self.log_path, record)
        # tqdm.write: printed above a bar on a terminal, without breaking it (this module's tqdm:
        # a test that swaps loop.tqdm swaps the bar, not this line)
        tqdm.write(f"step {step:>6}: train {losses['train']:.4f}, val {losses['val']:.4f} nats "
                   f"= {bits_per_byte(losses['val']):.3f} bits/byte{'  (best)' if best else ''}"
                   + _moe_text(self.moe))
        sys.stdout.flush()              # show it now, also when stdout is a pipe (| tee log)
        return step

    # ---- progress ------------------------------------------------------------------------------------
    def show_progress(self, bar, dt):
        """The bar's postfix (on a terminal: the rate of the steps since the last read of the
        losses: every step on the CPU, log_interval steps on a GPU), or a printed line every
        log_interval steps (without a terminal). The line's ms/step and tok/s are both over the
        same window, the steps since the previous line: mean step time, and tokens / time.
        Every window ends with a read of the losses, which waits for the device: on a GPU the
        times are those of the work done, not of its queueing (the module docstring)."""
        step = self.step_count
        self.window_steps += 1
        self.window_time += dt
        self.read_steps += 1
        self.read_time += dt
        if step % self.sync_every == 0:     # step() has just read the losses: the device is done
            self.rate = self.tokens_per_step * self.read_steps / self.read_time
            self.read_steps, self.read_time = 0, 0.0
        bar.update(1)
        bar.set_postfix_str(f"loss {self.loss_value:.4f}, {self.rate:,.0f} tok/s"
                            + _moe_text(self.moe), refresh=False)
        if bar.disable and step % self.cfg.log_interval == 0:
            mean = self.window_time / self.window_steps
            print(f"step {step}/{self.cfg.max_iters}: loss {self.loss_value:.4f}, lr "
                  f"{self.opt.lr:.2e}, {1000 * mean:.1f} ms/step, "
                  f"{self.tokens_per_step / mean:,.0f} tok/s over the last "
                  f"{self.window_steps} steps" + _moe_text(self.moe), flush=True)
            self.window_steps, self.window_time = 0, 0.0

    # ---- the end -------------------------------------------------------------------------------------------
    def finish(self, status):
        """Save (or say why not), evaluate a finished run, sample; the summary dict."""
        step = self.step_count
        if status == "interrupted":
            self.read_pending()         # a GPU's unread steps: never save a diverged model
            self.save(step)
            print(f"interrupted at step {step}; checkpoint saved to {self.ckpt_path} "
                  f"(continue with --resume)", flush=True)
        elif status == "aborted":
            status = "interrupted"
            print(f"interrupted during the update of step {step + 1}; nothing saved, "
                  f"{self.kept()}", flush=True)
        else:
            if self.last_eval != step:
                self.evaluate(step)
            self.save(step)
        st = self.st
        summary = {"status": status, "step": step, "val_loss": st["val_loss"],
                   "val_bpb": None if st["val_loss"] is None else bits_per_byte(st["val_loss"]),
                   "best_val_loss": st["best_val_loss"], "history": list(st["history"]),
                   "tokens_per_s": self.tokens / self.train_time if self.train_time else None,
                   "train_time_s": self.train_time, "out_dir": self.cfg.out_dir,
                   "checkpoint": self.ckpt_path, "moe": self.moe,
                   "train_flops": st["train_flops"]}
        if status == "done" and self.cfg.sample_tokens:
            n = self.cfg.sample_tokens
            summary["sample"] = sample_text(self.model, "\n", n, 0.8, 50, seed=0)
            leak = causality_warning(self.mcfg)
            print(f"---- sample ({n} bytes, temperature 0.8, top_k 50) ----"
                  + (f"\n(not causal: {leak})" if leak else ""))
            print(summary["sample"], flush=True)
        return summary
