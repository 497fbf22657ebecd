"""A training step whose loss or gradient norm is not finite (tinysparse/training/loop.py): it
never reaches the update, and the run stops with a one-line error naming the step and the last
good checkpoint (the one a resumed run started from too); NumPy's floating-point warnings are off
inside the loop, which checks every value itself. On a GPU the losses are read from the device
only every few steps (deferred reads): the history still holds each step's own loss, and the
reads happen before every evaluation, so a diverged model is never evaluated and logged. The
small pieces of a step (_sync_interval, _host_floats, _moe_text) are checked directly.
"""
import math
from types import SimpleNamespace

import numpy as np
import pytest

import tinysparse.training.loop as loop
from tinysparse import optim
from tinysparse.gpt import GPT
from tinysparse.training import TrainingDiverged, train
from train_helpers import log_of, model_config, train_config


# ----------------------------------------------------------------------------- a non-finite step

@pytest.mark.parametrize("what", ["loss", "gradient norm"])
def test_a_non_finite_step_never_reaches_the_update(tmp_path, updates, monkeypatch, what):
    calls, real_forward, real_clip = [], GPT.forward, optim.clip_grad_norm

    def forward(self, idx, targets=None, ignore_index=None):
        logits, loss = real_forward(self, idx, targets, ignore_index)
        if targets is not None and self.training:
            calls.append(1)
            if what == "loss" and len(calls) == 3:
                loss.data = np.array(np.inf, dtype=loss.data.dtype)
        return logits, loss

    def clip(params, max_norm):
        norm = real_clip(params, max_norm)
        return math.nan if what == "gradient norm" and len(calls) == 3 else norm

    monkeypatch.setattr(GPT, "forward", forward)
    monkeypatch.setattr(optim, "clip_grad_norm", clip)
    value = "inf" if what == "loss" else "nan"
    with pytest.raises(TrainingDiverged, match=fr"^{what} is {value} at step 3; training stopped, "
                                               r"no checkpoint of this run was written yet; lower"):
        train(model_config(), train_config(tmp_path))
    assert len(calls) == 3 and len(updates) == 2      # the third step stopped before its update


def test_a_resumed_run_that_diverges_names_the_checkpoint_it_resumed_from(tmp_path, monkeypatch):
    train(model_config(), train_config(tmp_path, max_iters=4))
    monkeypatch.setattr(optim, "clip_grad_norm", lambda params, max_norm: math.inf)
    with pytest.raises(TrainingDiverged, match=r"gradient norm is inf at step 5; training "
                                               r"stopped, the last good checkpoint \(step 4\) is "
                                               r"kept in "):
        train(model_config(), train_config(tmp_path), resume=True)


def test_floating_point_warnings_are_silenced_inside_the_loop(tmp_path, monkeypatch):
    # the loop checks every loss and norm itself: NumPy's overflow/invalid/divide warnings
    # during a diverging step would only be noise before the one-line error
    seen, real = [], optim.AdamW.step

    def step(self):
        seen.append(np.geterr())
        real(self)

    monkeypatch.setattr(optim.AdamW, "step", step)
    train(model_config(), train_config(tmp_path, max_iters=2))
    assert all(e["over"] == e["invalid"] == e["divide"] == "ignore" for e in seen) and seen
    assert np.geterr()["over"] != "ignore" or np.geterr()["invalid"] != "ignore"   # restored


# ----------------------------------------------------------------------------- deferred reads

def test_the_steps_loss_history_is_each_steps_training_loss(tmp_path, monkeypatch):
    losses, real_forward = [], GPT.forward

    def forward(self, idx, targets=None, ignore_index=None):
        logits, loss = real_forward(self, idx, targets, ignore_index)
        if targets is not None and self.training:
            losses.append(float(loss.data))
        return logits, loss

    monkeypatch.setattr(GPT, "forward", forward)
    summary = train(model_config(), train_config(tmp_path, max_iters=5))
    assert summary["history"] == losses and len(losses) == 5
    monkeypatch.setattr(loop, "_sync_interval", lambda device, cfg: 100)   # read as on a GPU
    losses.clear()
    # eval and checkpoint at 3, then the last steps read only because the run ends at 5
    deferred = train(model_config(), train_config(tmp_path / "gpu", max_iters=5, eval_interval=3,
                                                  checkpoint_interval=3))
    assert deferred["history"] == losses == summary["history"]


def test_deferred_reads_happen_before_every_evaluation(tmp_path, monkeypatch):
    # as on a GPU: losses read every 100 steps, and before each evaluation (every 3 steps here),
    # so a diverged model is never evaluated and logged
    monkeypatch.setattr(loop, "_sync_interval", lambda device, cfg: 100)
    real = optim.AdamW.step

    def step_then_poison(self):
        real(self)
        if self.step_count == 5:                    # step 6's loss is the first NaN
            self.params[0].data[...] = np.nan

    monkeypatch.setattr(optim.AdamW, "step", step_then_poison)
    with pytest.raises(TrainingDiverged, match="loss is nan at step 6"):
        train(model_config(), train_config(tmp_path, eval_interval=3, checkpoint_interval=100))
    assert [r["step"] for r in log_of(tmp_path)] == [0, 3]


def test_the_pieces_of_a_step(capsys):
    assert loop._sync_interval("cpu", SimpleNamespace(log_interval=7)) == 1
    assert loop._sync_interval("cuda", SimpleNamespace(log_interval=7)) == 7
    assert loop._host_floats([1, 2.5]) == [1.0, 2.5]
    assert loop._host_floats([np.array(3.0), np.float32(0.25), 2]) == [3.0, 0.25, 2.0]
    assert loop._moe_text(None) == ""
    assert loop._moe_text({"max_over_mean_load": 1.314, "dropped_fraction": 0.004}) == \
        ", load 1.31 max/mean, dropped 0.4%"
