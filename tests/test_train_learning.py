"""A training run learns, and its checkpoint samples (tinysparse/training/loop.py, sampling.py):
60 steps on the synthetic corpus bring the validation loss from about ln 256 down by more than a
nat, with bits per byte and the best loss in the summary agreeing with the log; sampling from the
straight run's checkpoint (the fixture `straight`, conftest.py) continues the prompt, the same
text for the same seed, and refuses temperature 0.

The runs are resume_helpers' GPT; test_sampling.py covers generation itself.
"""
import json
import os

import numpy as np
import pytest

from tinysparse.training import sample, train
from tinysparse.training.checkpoint import LOG_NAME
from resume_helpers import model_config, train_config


def test_validation_loss_decreases(tmp_path):
    summary = train(model_config(dropout=0.0),
                    train_config(tmp_path, max_iters=60, lr_decay_iters=None, eval_interval=20,
                                 eval_iters=4, lr=2e-2))
    log = [json.loads(line) for line in open(tmp_path / LOG_NAME)]
    assert [r["step"] for r in log] == [0, 20, 40, 60]
    assert log[0]["val_loss"] > 5.0                 # about ln 256 = 5.55 at the start
    assert log[-1]["val_loss"] < log[0]["val_loss"] - 1.0
    assert summary["val_bpb"] == pytest.approx(summary["val_loss"] / np.log(2))
    assert summary["best_val_loss"] == min(r["val_loss"] for r in log)


def test_sample_continues_the_prompt(straight):
    out = os.path.dirname(straight[0]["checkpoint"])
    text = sample(out, "add:", max_new_tokens=20, seed=3)
    assert text.startswith("add:") and len(text.encode("utf-8", "replace")) >= 4
    assert sample(out, "add:", max_new_tokens=20, seed=3) == text    # seeded: repeatable
    with pytest.raises(ValueError, match="temperature"):
        sample(out, "x", temperature=0.0)
