"""What a training run is told: TrainConfig (the loop's settings) and PRESETS (model and training
settings that go together). The command line turns every field into a flag (tinysparse/__main__.py);
train.py runs the loop.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from .._checks import check_int, check_number


@dataclass
class TrainConfig:
    data: str = "stdlib"            # corpus: stdlib | file:PATH | synthetic
    max_bytes: int | None = None    # cap on the corpus size in bytes (unset: stdlib 4 MB, a file whole)
    batch_size: int = 16            # sequences per step (B); a step sees B * block_size tokens
    max_iters: int = 5000           # optimizer steps in total (a resumed run counts from its step)
    lr: float = 2e-3                # peak learning rate, reached after the warm-up
    min_lr: float = 1e-4            # learning rate at the end of the cosine decay
    warmup_iters: int = 100         # steps of linear warm-up from ~0 to lr
    lr_decay_iters: int | None = None  # step where the cosine reaches min_lr (unset: max_iters)
    weight_decay: float = 0.1       # AdamW decoupled weight decay (matrices only, not gains/biases)
    grad_clip: float = 1.0          # clip the global gradient norm to this (0: no clipping)
    eval_interval: int = 250        # evaluate every this many steps (and at the start and the end)
    eval_iters: int = 20            # batches per evaluation (the same batches every time)
    log_interval: int = 100         # print a progress line every this many steps (no-TTY runs)
    checkpoint_interval: int = 500  # save a checkpoint every this many steps (and at the end)
    out_dir: str = "out/tiny"       # run folder: ckpt.json + arrays, config.json, log.jsonl
    seed: int = 1337                # seeds weight init, dropout and batch order
    device: str = "cpu"             # cpu | cuda | auto (cuda when a GPU is available)
    sample_tokens: int = 300        # bytes to sample after training (0: no sample)

    def __post_init__(self):
        """Refuse a field outside its domain before anything runs: a ValueError (TypeError for a
        wrong type) naming the field, its range and the flag that sets it."""
        def fix(name):
            return f"fix --{name.replace('_', '-')}"

        for name in ("batch_size", "max_iters", "eval_interval", "eval_iters", "log_interval",
                     "checkpoint_interval"):
            check_int(f"TrainConfig.{name}", getattr(self, name), low=1, hint=fix(name))
        for name in ("warmup_iters", "sample_tokens", "seed"):
            check_int(f"TrainConfig.{name}", getattr(self, name), low=0, hint=fix(name))
        for name in ("max_bytes", "lr_decay_iters"):        # unset (None) has a meaning
            if getattr(self, name) is not None:
                check_int(f"TrainConfig.{name}", getattr(self, name), low=1, hint=fix(name))
        check_number("TrainConfig.lr", self.lr, low=0, low_open=True, hint="try --lr 1e-3")
        check_number("TrainConfig.min_lr", self.min_lr, low=0, high=self.lr,
                     hint="fix --min-lr (the cosine decays from --lr down to it)")
        check_number("TrainConfig.weight_decay", self.weight_decay, low=0, hint=fix("weight_decay"))
        if self.lr * self.weight_decay >= 1:
            raise ValueError(f"TrainConfig.lr * weight_decay = {self.lr * self.weight_decay:g} "
                             f"must be below 1 (each AdamW step multiplies the weights by "
                             f"1 - lr*wd); lower --weight-decay (the usual value is 0.1)")
        check_number("TrainConfig.grad_clip", self.grad_clip, low=0,
                     hint="fix --grad-clip (0: no clipping)")
        if not self.out_dir:            # "" would write the checkpoint into the current folder
            raise ValueError("TrainConfig.out_dir must not be empty; fix --out-dir (e.g. out/run)")
        if self.device not in ("cpu", "cuda", "auto"):
            raise ValueError(f"TrainConfig.device must be cpu, cuda or auto, got {self.device!r}")

    def warnings(self):
        """Settings that are valid but probably not meant, as one-line messages (train() prints
        them before the first step)."""
        out = []
        if self.max_iters < self.warmup_iters:
            out.append(f"--max-iters {self.max_iters} is below --warmup-iters {self.warmup_iters}: "
                       f"the learning rate never leaves its warm-up (it ends at "
                       f"{self.lr * self.max_iters / self.warmup_iters:.2e}, not --lr {self.lr:g}); "
                       f"lower --warmup-iters")
        elif (self.lr_decay_iters or self.max_iters) <= self.warmup_iters < self.max_iters:
            out.append(f"--lr-decay-iters {self.lr_decay_iters} is not above --warmup-iters "
                       f"{self.warmup_iters}: there is no cosine decay, the learning rate drops "
                       f"from the warm-up straight to --min-lr; raise --lr-decay-iters")
        return out

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d):
        """From a saved dict; keys this version does not know are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


# A preset sets fields of both configs; explicit command-line flags override it.
PRESETS = {
    # 0.83M parameters; ~127 ms a step on 2 CPU cores (measured 2026-11-30 after the engine's
    # compiled loops, evaluations included): about 11 minutes.
    "tiny": {"model": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, dropout=0.0),
             "train": dict(batch_size=16, max_iters=5000, lr=2e-3, min_lr=1e-4, warmup_iters=100,
                           eval_interval=250, eval_iters=20, checkpoint_interval=500,
                           out_dir="out/tiny")},
    # tiny with a Mixture of Experts in every block: 16 experts of width 256, 2 per token, so a
    # token's FFN compute is tiny's (2 x 256 = 4 x 128) while the model holds 5.5x the parameters.
    "tiny-moe": {"model": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, dropout=0.0,
                               n_expert=16, top_k=2, d_expert=256),
                 "train": dict(batch_size=16, max_iters=5000, lr=2e-3, min_lr=1e-4, warmup_iters=100,
                               eval_interval=250, eval_iters=20, checkpoint_interval=500,
                               out_dir="out/tiny-moe")},
    # tiny-moe with Mixture-of-Depths on blocks 2 and 4 at capacity 0.25 (sampling: the causal
    # rule sigmoid(r) > 0.5). Chosen by chapter 09's measurements at equal steps: alone it gave the
    # best loss per FLOP (0.65x tiny-moe's sampled FLOPs, dense's val CE); null experts cost more
    # loss per FLOP saved, early exits cost FLOPs (a head per layer) at every threshold tried, and
    # stacking the mechanisms lost more than each alone. The others stay flags: --n-null,
    # --target-experts, --top-p, --exit-scale, --exit-threshold. Chapter 10 measured it as the
    # best sparse model by training leverage at equal loss (2.4x the dense frontier at width 64):
    # `make train` trains it (Makefile PRESET), with its ledger line against dense tiny, for 3000
    # steps: ~160 ms a step on 2 CPU cores (measured 2026-11-30), about 8 minutes.
    "tiny-adaptive": {"model": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, dropout=0.0,
                                    n_expert=16, top_k=2, d_expert=256, mod_capacity=0.25),
                      "train": dict(batch_size=16, max_iters=3000, lr=2e-3, min_lr=1e-4,
                                    warmup_iters=100, eval_interval=250, eval_iters=20,
                                    checkpoint_interval=500, out_dir="out/tiny-adaptive")},
    # ~10.7M parameters, for a GPU (--device cuda); the whole stdlib (~11 MB) as the corpus.
    "small": {"model": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, dropout=0.1),
              "train": dict(batch_size=64, max_iters=5000, lr=1e-3, min_lr=1e-4, warmup_iters=200,
                            eval_interval=250, eval_iters=50, checkpoint_interval=500,
                            max_bytes=64_000_000, out_dir="out/small", device="auto")},
}
