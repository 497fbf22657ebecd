"""Stopping and resuming a training run (tinysparse/training/loop.py; load_run in sampling.py):
a run resumed from its checkpoint, one stopped by an exception in the middle of a step or by
Ctrl-C and then resumed, and one whose losses are read only every few steps (as on a GPU) all
end bit for bit where a straight run does: parameters, AdamW moments, loss history, every
evaluation, generator positions; MoE models too (router biases, dropout draws). load_run gives
back the trained model ready to sample; a missing checkpoint and a resume with another model are
refused, each naming the way out.

The runs are resume_helpers' 20-step GPT with dropout 0.1; the fixture `straight` (conftest.py)
is the uninterrupted run they must reproduce. The checkpoint files themselves are tested in
test_checkpoint.py, a Ctrl-C at each point of a step in test_train_interrupt.py.
"""
import os
import signal

import numpy as np
import pytest

import tinysparse.training.loop as train_module
from tinysparse import optim
from tinysparse.training import load_run, train
from tinysparse.training.checkpoint import CKPT_NAME, CheckpointError, load_checkpoint
from tinysparse.training.data import BatchSampler
from resume_helpers import assert_same_state, ckpt_of, evaluations, model_config, train_config


# ----------------------------------------------------------------------------- loading a run

def test_load_run_restores_the_trained_model(tmp_path, straight):
    summary, ckpt = straight
    model, (mcfg, tcfg), loaded = load_run(os.path.dirname(summary["checkpoint"]))
    assert mcfg == model_config() and tcfg.max_iters == 20 and loaded["step"] == 20
    assert not model.training                       # ready to sample: eval mode
    for name, p in model.named_parameters():
        assert np.array_equal(p.data, ckpt["model"][name])


def test_missing_checkpoint_errors_name_the_way_out(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at .*make train"):
        load_checkpoint(str(tmp_path / "nowhere"))
    with pytest.raises(CheckpointError, match="--resume: no checkpoint"):
        train(model_config(), train_config(tmp_path / "empty"), resume=True)


# ----------------------------------------------------------------------------- resume

def test_resume_is_bit_identical_to_a_straight_run(tmp_path, straight):
    out = tmp_path / "split"
    first = train(model_config(), train_config(out, max_iters=10))   # same cosine horizon (20)
    assert first["step"] == 10 and ckpt_of(out)["step"] == 10
    second = train(model_config(), train_config(out, max_iters=20), resume=True)
    assert second["step"] == 20
    assert second["history"] == straight[0]["history"]   # the whole loss history, exactly
    assert_same_state(ckpt_of(out), straight[1])
    assert second["val_loss"] == straight[0]["val_loss"]
    assert evaluations(out) == evaluations(straight[0]["out_dir"])   # every evaluation, exactly
    assert [step for step, _, _ in evaluations(out)] == [0, 5, 10, 15, 20]


@pytest.mark.parametrize("kind", [
    dict(dropout=0.0, n_expert=4, top_k=2, balance="bias"),    # the router biases are buffers
    dict(dropout=0.1, n_expert=4, top_k=2),                     # dropout draws in a MoE model
], ids=["moe-bias", "moe-dropout"])
def test_resume_is_bit_identical_for_moe_models(tmp_path, kind):
    config = model_config(**kind)
    straight = train(config, train_config(tmp_path / "straight"))
    train(config, train_config(tmp_path / "split", max_iters=10))
    resumed = train(config, train_config(tmp_path / "split"), resume=True)
    assert resumed["history"] == straight["history"]
    assert evaluations(tmp_path / "split") == evaluations(tmp_path / "straight")
    a, b = ckpt_of(tmp_path / "split"), ckpt_of(tmp_path / "straight")
    assert_same_state(a, b)
    biases = [a["model"][n] for n in a["model"] if n.endswith("router.bias")]
    assert bool(biases) == (kind.get("balance") == "bias")
    assert all(np.any(bias != 0) for bias in biases)     # moved by balancing: worth saving


def test_resume_refuses_a_different_model(tmp_path, straight):
    out = os.path.dirname(straight[0]["checkpoint"])
    with pytest.raises(ValueError, match="--resume.*n_embd"):
        train(model_config(n_embd=32), train_config(out, max_iters=30), resume=True)


# ----------------------------------------------------------------------------- stopped and resumed

def test_keyboard_interrupt_saves_a_checkpoint_that_resumes_exactly(tmp_path, straight,
                                                                   monkeypatch, capsys):
    real_batch, calls = BatchSampler.train_batch, []

    def interrupt_on_8th_batch(self):
        calls.append(1)
        if len(calls) == 8:
            raise KeyboardInterrupt                 # mid-step: step 8 never happens
        return real_batch(self)

    monkeypatch.setattr(BatchSampler, "train_batch", interrupt_on_8th_batch)
    out = tmp_path / "interrupted"
    summary = train(model_config(), train_config(out))
    assert summary["status"] == "interrupted" and summary["step"] == 7
    assert f"interrupted at step 7; checkpoint saved to {out / CKPT_NAME}" in capsys.readouterr().out
    assert ckpt_of(out)["step"] == 7
    monkeypatch.undo()
    resumed = train(model_config(), train_config(out), resume=True)
    assert resumed["status"] == "done"
    assert_same_state(ckpt_of(out), straight[1])


def test_ctrl_c_stops_after_the_current_step(tmp_path, monkeypatch):
    real_step = optim.AdamW.step

    def step_then_ctrl_c(self):
        real_step(self)
        if self.step_count == 5:
            os.kill(os.getpid(), signal.SIGINT)     # what the terminal sends on Ctrl-C

    monkeypatch.setattr(optim.AdamW, "step", step_then_ctrl_c)
    before = signal.getsignal(signal.SIGINT)        # Python's default; ignored under nohup or &
    summary = train(model_config(), train_config(tmp_path))
    assert summary["status"] == "interrupted" and summary["step"] == 5
    assert ckpt_of(tmp_path)["step"] == 5
    assert signal.getsignal(signal.SIGINT) is before                   # the handler put back


# ----------------------------------------------------------------------------- deferred reads

def test_deferred_reads_as_on_a_gpu_give_the_same_run(tmp_path, straight, monkeypatch):
    # on a GPU the losses and norms are read every log_interval steps; the run must not change
    monkeypatch.setattr(train_module, "_sync_interval", lambda device, cfg: 3)
    summary = train(model_config(), train_config(tmp_path))
    assert summary["history"] == straight[0]["history"] and len(summary["history"]) == 20
    assert_same_state(ckpt_of(tmp_path), straight[1])
