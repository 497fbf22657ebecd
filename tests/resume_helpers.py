"""Shared by the tests of whole training runs that compare against a straight 20-step run
(test_train_resume.py, test_train_last_good_checkpoint.py, test_train_config.py,
test_train_learning.py, test_train_moe_run.py): the runs' configs (a 1-layer, 16-wide GPT with
dropout 0.1 on a 20 kB synthetic corpus: a step takes about a millisecond, so a whole 20-step run
with evaluations is well under a second), the checkpoint of a run folder, a bit-for-bit
comparison of two checkpoints, and the evaluations in a run's log. Not a test module: nothing
here is collected. The fixture `straight` (the 20-step reference run) is in conftest.py.
"""
import json
import os

import numpy as np

from tinysparse.gpt import GPTConfig
from tinysparse.training import TrainConfig
from tinysparse.training.checkpoint import LOG_NAME, load_checkpoint


def model_config(**kw):
    # dropout > 0: a resumed run must also restore the global generator that dropout draws from
    return GPTConfig(**{**dict(n_layer=1, n_head=2, n_embd=16, block_size=16, dropout=0.1), **kw})


def train_config(out_dir, **kw):
    base = dict(data="synthetic", max_bytes=20_000, batch_size=4, max_iters=20, lr=1e-2,
                warmup_iters=3, lr_decay_iters=20, eval_interval=5, eval_iters=2,
                checkpoint_interval=5, out_dir=str(out_dir), sample_tokens=0)
    return TrainConfig(**{**base, **kw})


def ckpt_of(out_dir):
    return load_checkpoint(str(out_dir))


def assert_same_state(a, b):
    """Bit-identical: parameters, AdamW moments, step, loss history, the validation losses,
    generator positions."""
    assert a["step"] == b["step"]
    assert a["model"].keys() == b["model"].keys()
    for name in a["model"]:
        assert np.array_equal(a["model"][name], b["model"][name]), name
    for slot in ("m", "v"):
        for x, y in zip(a["optimizer"][slot], b["optimizer"][slot]):
            assert np.array_equal(x, y), slot
    assert a["history"] == b["history"]
    assert (a["val_loss"], a["best_val_loss"]) == (b["val_loss"], b["best_val_loss"])
    assert a["rng"] == b["rng"] and a["sampler"] == b["sampler"]


def evaluations(out_dir):
    """(step, train loss, val loss) of every line of a run's log (its timings left out)."""
    return [(r["step"], r["train_loss"], r["val_loss"])
            for r in map(json.loads, open(os.path.join(out_dir, LOG_NAME)))]
