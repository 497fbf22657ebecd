"""The `ledger` command and the training loop's counted FLOPs: a trained run's per-token report,
bad input as one error line, and log.jsonl's cumulative train_flops (loss against FLOPs)."""
import json

import numpy as np
import pytest

import tinysparse as ts
from tinysparse import ledger
from tinysparse.gpt import GPT
from tinysparse.training import train
from checkpoint_helpers import model_config, train_config
from test_cli import assert_one_line_error, run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 4-step dense run and a 4-step MoE run (evaluations at 0, 2 and 4)."""
    root = tmp_path_factory.mktemp("ledger")
    out = {}
    for kind, kw in (("dense", {}), ("moe", dict(n_expert=4, top_k=2))):
        train(model_config(**kw), train_config(root / kind))
        out[kind] = root / kind
    return out


def _log(run_dir):
    with open(run_dir / "log.jsonl") as f:
        return [json.loads(line) for line in f]


def _one_step_flops(cfg_kw, batch_size=4):
    """The counted FLOPs of one training step of model_config(**cfg_kw), counted here anew."""
    ts.manual_seed(0)
    model = GPT(model_config(**cfg_kw))
    idx = np.zeros((batch_size, model.config.block_size), dtype=np.int64)
    with ledger.count() as led:
        _, loss = model(idx, idx)
        loss.backward()
    return led.totals


def test_the_log_holds_cumulative_counted_training_flops(runs):
    """A dense step executes the same work every step, and a dropless top-k MoE routes exactly
    T*k rows every step, so the cumulative count at step s is s x one step's count."""
    for kind, kw in (("dense", {}), ("moe", dict(n_expert=4, top_k=2))):
        one = _one_step_flops(kw)
        records = _log(runs[kind])
        assert [r["step"] for r in records] == [0, 2, 4]
        for r in records:
            assert r["train_flops"] == pytest.approx(r["step"] * one.flops, rel=1e-12)
            assert r["train_flops_matmul"] == r["step"] * one.flops_matmul


def test_resume_continues_the_count(runs, tmp_path):
    import shutil
    run_dir = tmp_path / "run"
    shutil.copytree(runs["dense"], run_dir)
    train(model_config(), train_config(run_dir, max_iters=6), resume=True)
    one = _one_step_flops({})
    assert _log(run_dir)[-1]["step"] == 6
    assert _log(run_dir)[-1]["train_flops_matmul"] == 6 * one.flops_matmul


@pytest.mark.parametrize("kind", ["dense", "moe"])
def test_ledger_command_prints_the_per_token_report(runs, kind):
    proc = run("ledger", "--out-dir", runs[kind], "--batch-size", 2, "--train-step",
               "--no-roofline", timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for words in ("inference (forward), per token:", "training step (forward + backward)",
                  "2N + 4LTC", "6N + 12LTC", "read+written", "FLOP/byte", "energy, modelled",
                  "energy, measured:"):
        assert words in out, words
    assert ("MoE inference weight bytes vs batch" in out) == (kind == "moe")
    assert "Traceback" not in proc.stderr


def test_ledger_command_bad_input(tmp_path):
    assert_one_line_error(run("ledger", "--out-dir", tmp_path / "missing"),
                          "no checkpoint", "train one first")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "ckpt.json").write_text("{not json")
    assert_one_line_error(run("ledger", "--out-dir", tmp_path / "bad"), "not valid JSON")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "ckpt.json").write_text('{"format": "something-else"}')
    assert_one_line_error(run("ledger", "--out-dir", tmp_path / "other"),
                          "not a tinysparse checkpoint")


def test_ledger_command_refuses_a_bad_batch_size(runs):
    assert_one_line_error(run("ledger", "--out-dir", runs["dense"], "--batch-size", 0),
                          "--batch-size")
