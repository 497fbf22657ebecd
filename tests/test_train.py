"""Training loop and resume (tinysparse/training/loop.py); the checkpoint files themselves are
tested in test_checkpoint.py.

Every run here is a 1-layer, 16-wide GPT on a 20 kB synthetic corpus: a step takes about a
millisecond, so a whole 20-step run with evaluations is well under a second.
"""
import json
import math
import os
import signal
from types import SimpleNamespace

import numpy as np
import pytest

from tinysparse import optim
from tinysparse.training.checkpoint import CKPT_NAME, LOG_NAME, CheckpointError, load_checkpoint
from tinysparse.training.data import BatchSampler
from tinysparse.gpt import GPT, GPTConfig
import tinysparse.training.loop as train_module
from tinysparse.training import (PRESETS, TrainConfig, TrainingDiverged, load_run, sample, train)


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


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """20 steps in one go: the reference the interrupted and resumed runs must reproduce."""
    out = tmp_path_factory.mktemp("straight")
    summary = train(model_config(), train_config(out))
    return summary, ckpt_of(out)


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


# ----------------------------------------------------------------------------- failures

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


def test_deferred_reads_as_on_a_gpu_give_the_same_run(tmp_path, straight, monkeypatch):
    # on a GPU the losses and norms are read every log_interval steps; the run must not change
    monkeypatch.setattr(train_module, "_sync_interval", lambda device, cfg: 3)
    summary = train(model_config(), train_config(tmp_path))
    assert summary["history"] == straight[0]["history"] and len(summary["history"]) == 20
    assert_same_state(ckpt_of(tmp_path), straight[1])


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


def test_bad_configs_are_refused():
    for field, value in [("max_iters", 0), ("batch_size", -1), ("lr", 0.0), ("eval_iters", 0),
                         ("grad_clip", -1.0), ("device", "tpu")]:
        with pytest.raises(ValueError, match=field):
            train_config("x", **{field: value})


# ----------------------------------------------------------------------------- learning, sampling

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


def test_presets_have_the_advertised_sizes():
    tiny = GPT(GPTConfig(**PRESETS["tiny"]["model"])).num_parameters()
    assert 0.5e6 < tiny < 1.5e6
    c = GPTConfig(**PRESETS["small"]["model"])      # counted, not built: 12 L C^2 + V C
    assert 9e6 < 12 * c.n_layer * c.n_embd ** 2 + c.vocab_size * c.n_embd < 12e6
    for preset in PRESETS.values():
        TrainConfig(**preset["train"])              # every preset is a valid config


def test_tiny_moe_has_tiny_active_compute_and_several_times_its_parameters():
    tiny = GPT(GPTConfig(**PRESETS["tiny"]["model"]))
    moe = GPT(GPTConfig(**PRESETS["tiny-moe"]["model"]))
    T = PRESETS["tiny"]["model"]["block_size"]
    # equal FLOPs per token up to the router (C * E weights per layer, ~1%)
    assert moe.flops_per_token(T) == pytest.approx(tiny.flops_per_token(T), rel=0.02)
    assert moe.num_parameters() > 4 * tiny.num_parameters()


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


# ----------------------------------------------------------------------------- issue 11

@pytest.mark.parametrize("field, value, match", [
    ("weight_decay", math.nan, r"TrainConfig.weight_decay must be a finite number >= 0, got nan; fix --weight-decay"),
    ("grad_clip", math.nan, r"TrainConfig.grad_clip must be a finite number >= 0, got nan; fix --grad-clip"),
    ("grad_clip", math.inf, r"TrainConfig.grad_clip must be a finite number >= 0, got inf"),
    ("lr", math.inf, r"TrainConfig.lr must be a positive finite number, got inf; try --lr 1e-3"),
    ("min_lr", 0.1, r"TrainConfig.min_lr must be a finite number in \[0, 0.01\], got 0.1; fix --min-lr"),
    ("weight_decay", 100.0, r"TrainConfig.lr \* weight_decay = 1 must be below 1"),
    ("seed", -1, r"TrainConfig.seed must be an integer >= 0, got -1; fix --seed"),
    ("max_bytes", 0, r"TrainConfig.max_bytes must be an integer >= 1, got 0; fix --max-bytes"),
    ("warmup_iters", 2.5, r"TrainConfig.warmup_iters must be an integer >= 0, got 2.5"),
    ("out_dir", "", r"TrainConfig.out_dir must not be empty; fix --out-dir"),
])
def test_non_finite_and_meaningless_training_settings_are_refused(field, value, match):
    kwargs = {"out_dir": "x", field: value}
    with pytest.raises((ValueError, TypeError), match=match):
        train_config(**kwargs)


def test_progress_line_reports_step_time_and_token_rate_over_the_same_steps(capsys):
    class Bar:                                   # tqdm without a terminal: lines are printed
        disable = True

        def update(self, n):
            pass

        def set_postfix_str(self, text, refresh):
            pass

    run = SimpleNamespace(step_count=0, cfg=SimpleNamespace(log_interval=2, max_iters=4),
                          loss_value=2.0, opt=SimpleNamespace(lr=1e-3), tokens_per_step=256,
                          moe=None, window_steps=0, window_time=0.0, tokens=0, train_time=0.0,
                          sync_every=1, read_steps=0, read_time=0.0, rate=float("nan"))
    for dt in (0.1, 0.3, 1.0, 1.0):
        run.step_count += 1
        run.tokens, run.train_time = run.tokens + 256, run.train_time + dt
        train_module.TrainingRun.show_progress(run, Bar(), dt)
    # mean step time and tokens / time of the same 2 steps: 256 / 0.2 s, then 256 / 1 s
    # (the old line said "1000.0 ms/step, 427 tok/s": the last step next to the run's average)
    assert capsys.readouterr().out.splitlines() == [
        "step 2/4: loss 2.0000, lr 1.00e-03, 200.0 ms/step, 1,280 tok/s over the last 2 steps",
        "step 4/4: loss 2.0000, lr 1.00e-03, 1000.0 ms/step, 256 tok/s over the last 2 steps"]


def test_progress_rate_on_a_gpu_covers_the_steps_since_the_last_read():
    """On a GPU (losses read every 2 steps here) a step returns before its work is done: the
    bar's rate is that of the window up to the last read, which waited for the device, never
    one step's queueing time."""
    shown = []

    class Bar:
        disable = False

        def update(self, n):
            pass

        def set_postfix_str(self, text, refresh):
            shown.append(text)

    run = SimpleNamespace(step_count=0, cfg=SimpleNamespace(log_interval=2, max_iters=4),
                          loss_value=2.0, opt=SimpleNamespace(lr=1e-3), tokens_per_step=256,
                          moe=None, window_steps=0, window_time=0.0, sync_every=2, read_steps=0,
                          read_time=0.0, rate=float("nan"))
    for dt in (0.001, 0.399, 0.001, 0.199):     # queued fast, then the read waits for the device
        run.step_count += 1
        train_module.TrainingRun.show_progress(run, Bar(), dt)
    assert shown == ["loss 2.0000, nan tok/s", "loss 2.0000, 1,280 tok/s",
                     "loss 2.0000, 1,280 tok/s", "loss 2.0000, 2,560 tok/s"]


def test_schedule_warnings():
    assert train_config("x").warnings() == []
    assert all(TrainConfig(**p["train"]).warnings() == [] for p in PRESETS.values())
    assert train_config("x", max_iters=2, warmup_iters=3, lr_decay_iters=None).warnings() == [
        "--max-iters 2 is below --warmup-iters 3: the learning rate never leaves its warm-up (it "
        "ends at 6.67e-03, not --lr 0.01); lower --warmup-iters"]
    assert train_config("x", warmup_iters=8, lr_decay_iters=5).warnings() == [
        "--lr-decay-iters 5 is not above --warmup-iters 8: there is no cosine decay, the learning "
        "rate drops from the warm-up straight to --min-lr; raise --lr-decay-iters"]


def test_a_run_that_never_leaves_warm_up_is_warned_about_at_the_start(tmp_path, capsys):
    train(model_config(), train_config(tmp_path, max_iters=2, warmup_iters=3))
    out, err = capsys.readouterr()
    assert [line for line in err.splitlines() if line.startswith("warning:")] == [
        "warning: --max-iters 2 is below --warmup-iters 3: the learning rate never leaves its "
        "warm-up (it ends at 6.67e-03, not --lr 0.01); lower --warmup-iters"]
    train(model_config(), train_config(tmp_path / "fine", max_iters=4))
    assert "warning" not in capsys.readouterr().err


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
