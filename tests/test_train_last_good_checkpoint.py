"""A training run whose loss turns NaN (tinysparse/training/loop.py) stops with TrainingDiverged,
naming the step and the last good checkpoint, and keeps that checkpoint untouched (finite
parameters, the history up to it); also when the losses are read from the device only every few
steps, as on a GPU: the losses since the last read are read before a save, so a diverged model is
never saved.

The runs are resume_helpers' 20-step GPT; test_train_divergence.py covers the diverged step itself
(the update it never reaches, the warnings, the pieces of a step).
"""
import numpy as np
import pytest

import tinysparse.training.loop as train_module
from tinysparse import optim
from tinysparse.training import TrainingDiverged, train
from resume_helpers import ckpt_of, model_config, train_config


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    real_step = optim.AdamW.step

    def step_then_poison(self):
        real_step(self)
        if self.step_count == 7:                    # parameters become NaN after update 7
            self.params[0].data[...] = np.nan

    monkeypatch.setattr(optim.AdamW, "step", step_then_poison)
    with pytest.raises(TrainingDiverged, match=r"loss is nan at step 8.*checkpoint \(step 5\) is kept"):
        train(model_config(), train_config(tmp_path))
    ckpt = ckpt_of(tmp_path)
    assert ckpt["step"] == 5 and len(ckpt["history"]) == 5
    assert all(np.isfinite(a).all() for a in ckpt["model"].values())


def test_deferred_reads_still_stop_before_saving_a_diverged_model(tmp_path, monkeypatch):
    monkeypatch.setattr(train_module, "_sync_interval", lambda device, cfg: 100)
    real_step = optim.AdamW.step

    def step_then_poison(self):
        real_step(self)
        if self.step_count == 7:        # steps 6, 7, 8 are read together before the save at 8
            self.params[0].data[...] = np.nan

    monkeypatch.setattr(optim.AdamW, "step", step_then_poison)
    with pytest.raises(TrainingDiverged, match=r"loss is nan at step 8.*checkpoint \(step 4\) is kept"):
        train(model_config(), train_config(tmp_path, checkpoint_interval=4))
    ckpt = ckpt_of(tmp_path)
    assert ckpt["step"] == 4 and all(np.isfinite(a).all() for a in ckpt["model"].values())
