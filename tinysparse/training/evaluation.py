"""Scoring a model: mean cross-entropy over fixed batches of each split, and bits per byte."""
import math

import numpy as np

from ..engine.backend import array_module, to_numpy
from ..engine.tensor import no_grad
from .data import get_batch


def bits_per_byte(nats):
    """Byte tokens: a token is a byte, so nats per token / ln 2 = bits per byte."""
    return nats / math.log(2)


def _to_host(scalars):
    """float64 values of 0-d arrays on either device, in one transfer (one wait on a GPU)."""
    xp = array_module(scalars[0])
    return to_numpy(xp.stack([s.reshape(()) for s in scalars])).astype(np.float64)


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
            losses = [model(*get_batch(data, cfg.batch_size, block_size, rng))[1].data
                      for _ in range(cfg.eval_iters)]
            out[split] = float(np.mean(_to_host(losses)))
    model.train()
    return out
