"""Evaluation inside a training run (tinysparse/training/loop.py, evaluation.py): it scores the
train split on train and the val split on val, the same batches every time whatever other
generators drew meanwhile, without moving the run's own generators; the log, the checkpoint and
the summary take each split's score from it (the last and the best; a resumed run remembers the
best reached before it), the log has one line per evaluation and the last step once, bits per
byte are nats over ln 2, and a MoE run's evaluation lines end with its load balance.

MeanIdModel (train_helpers) 'scores' a batch with the mean of its ids, so swapped splits or an
unseeded evaluation generator give other numbers. test_evaluation.py covers a single evaluation
batch and the GPU path.
"""
import math
from types import SimpleNamespace

import numpy as np
import pytest

import tinysparse.training.loop as loop
from tinysparse.engine import random as ts_random
from tinysparse.training import train
from tinysparse.training.checkpoint import load_checkpoint
from tinysparse.training.evaluation import bits_per_byte, evaluate
from train_helpers import MeanIdModel, log_of, model_config, split_corpus, train_config


# ----------------------------------------------------------------------------- what is scored

def test_evaluation_scores_train_on_train_and_val_on_val():
    model = MeanIdModel()
    cfg = SimpleNamespace(seed=1, batch_size=3, eval_iters=2)
    assert evaluate(model, split_corpus(), cfg, 8) == {"train": 3.0, "val": 200.0}
    assert model.modes == ["eval", "train"] and model.training       # back in training mode


def test_evaluation_scores_the_same_batches_every_time_whatever_the_generators_did():
    corpus = SimpleNamespace(train=np.arange(256, dtype=np.uint8).repeat(3),
                             val=np.arange(256, dtype=np.uint8)[::-1].repeat(3))
    cfg = SimpleNamespace(seed=1, batch_size=2, eval_iters=3)
    first = evaluate(MeanIdModel(), corpus, cfg, 8)
    np.random.default_rng().random(7)                 # anything else drawing numbers meanwhile
    ts_random.generator().random(5)
    assert evaluate(MeanIdModel(), corpus, cfg, 8) == first
    # the windows are random (a ramp's windows have different means), so an unseeded generator
    # would give other numbers: that is what the equality above rules out
    rng = np.random.default_rng(0)
    assert len({float(corpus.train[i:i + 8].mean()) for i in rng.integers(0, 700, 10)}) > 1


def test_evaluation_does_not_move_the_training_generators(tmp_path):
    run = loop.TrainingRun(model_config(dropout=0.1), train_config(tmp_path))
    before = (run.sampler.state_dict(), ts_random.get_state())
    run.evaluate(0)
    assert (run.sampler.state_dict(), ts_random.get_state()) == before


def test_bits_per_byte_is_nats_over_ln_2():
    assert bits_per_byte(math.log(2) * 3) == pytest.approx(3.0, rel=1e-15)


# ----------------------------------------------------------------------------- where the scores go

def test_the_log_and_the_state_take_each_split_from_evaluation(tmp_path, monkeypatch, capsys):
    scores = iter([(5.0, 4.0), (3.0, 2.0), (2.5, 2.0), (1.5, 2.5)])     # (train, val) per call

    def fake_evaluate(model, corpus, cfg, block_size):
        train_loss, val_loss = next(scores)
        return {"train": train_loss, "val": val_loss}

    monkeypatch.setattr(loop, "evaluate", fake_evaluate)
    summary = train(model_config(), train_config(tmp_path, max_iters=10, eval_interval=4))
    log = log_of(tmp_path)
    assert [(r["step"], r["train_loss"], r["val_loss"]) for r in log] == [
        (0, 5.0, 4.0), (4, 3.0, 2.0), (8, 2.5, 2.0), (10, 1.5, 2.5)]
    assert [r["val_bpb"] for r in log] == [bits_per_byte(v) for v in (4.0, 2.0, 2.0, 2.5)]
    assert summary["val_loss"] == 2.5 and summary["best_val_loss"] == 2.0   # last and best
    assert summary["val_bpb"] == bits_per_byte(2.5)
    ckpt = load_checkpoint(str(tmp_path))
    assert (ckpt["val_loss"], ckpt["best_val_loss"]) == (2.5, 2.0)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("step ")]
    # "(best)" only where val improved: a tie (step 8) is not an improvement
    assert lines == [
        f"step      0: train 5.0000, val 4.0000 nats = {4 / math.log(2):.3f} bits/byte  (best)",
        f"step      4: train 3.0000, val 2.0000 nats = {2 / math.log(2):.3f} bits/byte  (best)",
        f"step      8: train 2.5000, val 2.0000 nats = {2 / math.log(2):.3f} bits/byte",
        f"step     10: train 1.5000, val 2.5000 nats = {2.5 / math.log(2):.3f} bits/byte"]


def test_a_resumed_run_remembers_the_best_val_loss_reached_before_it(tmp_path, monkeypatch):
    vals = iter([3.0, 1.0, 2.0])                                    # steps 0, 4 and, resumed, 8

    def fake_evaluate(model, corpus, cfg, block_size):
        return {"train": 9.0, "val": next(vals)}

    monkeypatch.setattr(loop, "evaluate", fake_evaluate)
    train(model_config(), train_config(tmp_path, max_iters=4))
    resumed = train(model_config(), train_config(tmp_path), resume=True)
    assert (resumed["best_val_loss"], resumed["val_loss"]) == (1.0, 2.0)
    assert len(resumed["history"]) == 8                              # the first 4 steps' too


def test_the_log_has_one_line_per_evaluation_and_the_last_step_once(tmp_path):
    train(model_config(), train_config(tmp_path, max_iters=8))           # 8 is an eval step
    assert [r["step"] for r in log_of(tmp_path)] == [0, 4, 8]
    train(model_config(), train_config(tmp_path, max_iters=7))           # a new run, same folder
    log = log_of(tmp_path)
    assert [r["step"] for r in log] == [0, 4, 7]                        # the old log is gone
    assert log[0]["tokens_per_s"] is None and all(r["tokens_per_s"] > 0 for r in log[1:])


def test_a_moe_runs_evaluation_lines_end_with_the_balance(tmp_path, capsys):
    train(model_config(n_expert=4, top_k=2), train_config(tmp_path))
    lines = [ln for ln in capsys.readouterr().out.splitlines() if " nats = " in ln]
    for r, line in zip(log_of(tmp_path)[1:], lines[1:]):
        assert line.endswith(loop._moe_text({"max_over_mean_load": r["moe_max_over_mean_load"],
                                             "dropped_fraction": r["moe_dropped_fraction"]}))
