"""Ctrl-C during a training run (tinysparse/training/loop.py): the first asks the loop to stop at
the next safe point and a second interrupts at once (the handler is installed only in the main
thread); a Ctrl-C during an update saves nothing and keeps the last good checkpoint, one after an
update saves the finished step, one after the batch was drawn undoes the draw (the resumed run
then trains on the same data as an unbroken one), and a run stopped before its first step
reports what it has.
"""
import json
import threading

import pytest

import tinysparse.training.loop as loop
from tinysparse import optim
from tinysparse.gpt import GPT
from tinysparse.training import train
from tinysparse.training.checkpoint import load_checkpoint
from train_helpers import model_config, train_config


def test_a_second_ctrl_c_interrupts_at_once_and_other_threads_keep_the_default():
    flag = loop._SigintFlag()
    flag._handle(2, None)
    assert flag.requested
    with pytest.raises(KeyboardInterrupt):
        flag._handle(2, None)
    entered = []

    def in_a_thread():
        with loop._SigintFlag() as f:               # signal handlers only in the main thread
            entered.append(f._old)

    thread = threading.Thread(target=in_a_thread)
    thread.start()
    thread.join()
    assert entered == [None]


# ----------------------------------------------------------------------------- what is saved

def test_ctrl_c_during_an_update_saves_nothing(tmp_path, monkeypatch, capsys):
    real = optim.AdamW.step

    def step(self):
        if self.step_count == 5:                    # the 6th update, half done
            raise KeyboardInterrupt
        real(self)

    monkeypatch.setattr(optim.AdamW, "step", step)
    summary = train(model_config(), train_config(tmp_path, max_iters=10))
    assert summary["status"] == "interrupted" and summary["step"] == 5
    assert load_checkpoint(str(tmp_path))["step"] == 4
    assert (f"interrupted during the update of step 6; nothing saved, the last good checkpoint "
            f"(step 4) is kept in {tmp_path / 'ckpt.json'}") in capsys.readouterr().out


def test_ctrl_c_after_an_update_saves_the_finished_step(tmp_path, monkeypatch, capsys):
    # an interrupt while evaluating (after step 4's update) leaves a consistent state: saved
    real = loop.evaluate

    def evaluate(model, corpus, cfg, block_size):
        if evaluate.calls == 1:
            raise KeyboardInterrupt
        evaluate.calls += 1
        return real(model, corpus, cfg, block_size)

    evaluate.calls = 0
    monkeypatch.setattr(loop, "evaluate", evaluate)
    summary = train(model_config(), train_config(tmp_path, checkpoint_interval=100))
    assert summary["status"] == "interrupted" and summary["step"] == 4
    assert load_checkpoint(str(tmp_path))["step"] == 4
    assert "interrupted at step 4; checkpoint saved" in capsys.readouterr().out


def test_a_ctrl_c_after_the_batch_was_drawn_undoes_the_draw(tmp_path, monkeypatch):
    # interrupted inside step 6's forward, after its batch was drawn: the checkpoint of step 5
    # must not skip that batch, or the resumed run trains on other data than an unbroken one
    calls, real_forward = [], GPT.forward

    def forward(self, idx, targets=None, ignore_index=None):
        if targets is not None and self.training:
            calls.append(1)
            if len(calls) == 6:
                raise KeyboardInterrupt
        return real_forward(self, idx, targets, ignore_index)

    monkeypatch.setattr(GPT, "forward", forward)
    summary = train(model_config(dropout=0.1), train_config(tmp_path / "split"))
    assert summary["status"] == "interrupted" and summary["step"] == 5
    monkeypatch.undo()
    resumed = train(model_config(dropout=0.1), train_config(tmp_path / "split"), resume=True)
    straight = train(model_config(dropout=0.1), train_config(tmp_path / "straight"))
    assert resumed["history"] == straight["history"]


# ----------------------------------------------------------------------------- stopping early

class RequestedFlag(loop._SigintFlag):
    """A Ctrl-C that arrived before the first step."""

    def __enter__(self):
        super().__enter__()
        self.requested = True
        return self


def test_a_run_stopped_before_its_first_step_reports_what_it_has(tmp_path, monkeypatch):
    train(model_config(), train_config(tmp_path, max_iters=4))
    meta = json.loads((tmp_path / "ckpt.json").read_text())
    meta["val_loss"] = None                         # a checkpoint that never evaluated
    (tmp_path / "ckpt.json").write_text(json.dumps(meta))
    monkeypatch.setattr(loop, "_SigintFlag", RequestedFlag)
    summary = train(model_config(), train_config(tmp_path, sample_tokens=5), resume=True)
    assert summary["status"] == "interrupted" and summary["step"] == 4
    assert summary["val_loss"] is None and summary["val_bpb"] is None
    assert summary["tokens_per_s"] is None and summary["train_time_s"] == 0.0
    assert "sample" not in summary                  # only a finished run samples
