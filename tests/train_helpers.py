"""Shared by the training loop's tests (test_train_config_applied.py, test_train_evaluation.py,
test_train_divergence.py, test_train_interrupt.py, test_train_output.py) and test_evaluation.py:
the runs' configs (resume_helpers' 1-layer, 16-wide GPT without dropout, on a 20 kB synthetic
corpus, milliseconds a step: warm-up 3, cosine to step 6, 8 steps, evaluation and checkpoint
every 4), the run's log, the gradient's global norm, and a stand-in model whose 'loss' tells
which batches evaluation read. Not a test module: nothing here is collected. The fixture
`updates` (every AdamW update's lr and gradient norm) is in conftest.py.
"""
import json
import math
from types import SimpleNamespace

import numpy as np

from tinysparse.engine.tensor import Tensor
from tinysparse.gpt import GPTConfig
from tinysparse.training.checkpoint import LOG_NAME
from tinysparse.training.config import TrainConfig


def model_config(**kw):
    return GPTConfig(**{**dict(n_layer=1, n_head=2, n_embd=16, block_size=16, dropout=0.0), **kw})


def train_config(out_dir, **kw):
    base = dict(data="synthetic", max_bytes=20_000, batch_size=4, max_iters=8, lr=1e-2,
                min_lr=1e-3, warmup_iters=3, lr_decay_iters=6, eval_interval=4, eval_iters=2,
                checkpoint_interval=4, out_dir=str(out_dir), sample_tokens=0)
    return TrainConfig(**{**base, **kw})


def log_of(out_dir):
    return [json.loads(line) for line in open(out_dir / LOG_NAME)]


def global_norm(params):
    return math.sqrt(sum(float((p.grad.astype(np.float64) ** 2).sum())
                         for p in params if p.grad is not None))


class MeanIdModel:
    """A stand-in model whose 'loss' on a batch is the mean of its input ids: evaluation's result
    then tells which split and which windows it read."""

    def __init__(self):
        self.training, self.modes = True, []

    def eval(self):
        self.training = False
        self.modes.append("eval")

    def train(self, mode=True):
        self.training = mode
        self.modes.append("train")

    def __call__(self, x, y):
        assert not self.training
        return None, Tensor(np.array(float(x.mean())))


def split_corpus(train_value=3, val_value=200, n=400):
    return SimpleNamespace(train=np.full(n, train_value, np.uint8), val=np.full(n, val_value, np.uint8))
