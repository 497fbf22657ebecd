"""Training a Mixture-of-Experts GPT (tinysparse/training/loop.py, sampling.py): the summary, the
log and the progress lines report the load balance and the dropped fraction (a dense run has
none); two runs of the same seed agree to the last bit (routing is integer work from sorted
scores); and a model routed by expert_choice, which is not causal, is warned about in training
and in sampling, from the library and from the CLI.

The runs are resume_helpers' GPT with 4 experts, top-2; test_train_resume.py resumes MoE runs.
"""
import json

from tinysparse.training import train
from tinysparse.training.checkpoint import LOG_NAME
from resume_helpers import assert_same_state, ckpt_of, model_config, train_config


def test_moe_training_logs_load_balance_and_drops(tmp_path, capsys):
    summary = train(model_config(dropout=0.0, n_expert=4, top_k=2, capacity_factor=1.0),
                    train_config(tmp_path, max_iters=10, eval_interval=5, log_interval=5))
    moe = summary["moe"]
    assert 1.0 <= moe["max_over_mean_load"] <= moe["worst_layer_load"] <= 4.0
    assert 0.0 <= moe["dropped_fraction"] < 1.0
    log = [json.loads(line) for line in open(tmp_path / LOG_NAME)]
    assert all("moe_max_over_mean_load" in r and "moe_dropped_fraction" in r for r in log[1:])
    printed = capsys.readouterr().out
    assert "max/mean" in printed and "dropped" in printed     # the progress lines (no TTY here)
    dense = train(model_config(dropout=0.0), train_config(tmp_path / "dense", max_iters=2))
    assert dense["moe"] is None


def test_same_seed_same_numbers_for_a_moe_model(tmp_path):
    """Routing is integer work from sorted scores, so two MoE runs agree to the last bit."""
    config = model_config(dropout=0.0, n_expert=4, top_k=2, capacity_factor=1.25, balance="bias",
                          score="sigmoid")
    a = train(config, train_config(tmp_path / "a", max_iters=8))
    b = train(config, train_config(tmp_path / "b", max_iters=8))
    assert a["history"] == b["history"]
    assert_same_state(ckpt_of(tmp_path / "a"), ckpt_of(tmp_path / "b"))
    assert any(name.endswith("router.bias") for name in ckpt_of(tmp_path / "a")["model"])


def test_expert_choice_training_and_sampling_say_the_model_is_not_causal(tmp_path, capsys):
    from tinysparse.__main__ import main
    train(model_config(dropout=0.0, n_expert=4, top_k=2, router="expert_choice"),
          train_config(tmp_path, max_iters=2, sample_tokens=5))
    out, err = capsys.readouterr()
    warning = ("warning: router expert_choice is not causal: in training, which experts a token "
               "got depended on later tokens (the future leaks, chapter 08), so the losses are "
               "optimistic, and sampling, which has no future to read, runs a different function; "
               "use --router topk for a language model")
    assert warning in err.splitlines()
    assert "\n(not causal: router expert_choice is not causal" in out     # under the sample header
    assert main(["sample", "--out-dir", str(tmp_path), "--max-new-tokens", "5"]) == 0
    out, err = capsys.readouterr()
    assert err.splitlines() == [warning] and out.startswith("\n")
