"""A training run's settings (TrainConfig, tinysparse/training/config.py) and the presets: the
values it refuses with an error naming the setting (issue 11's non-finite and meaningless values
also name the flag to fix), the schedules it warns about (a run that never leaves its warm-up, a
decay horizon not past the warm-up) and that a run prints that warning when it starts, and the
presets' advertised sizes (tiny-moe: the tiny model's compute per token with several times its
parameters).

The configs are resume_helpers'; test_train_config_applied.py checks how a run applies them.
"""
import math

import pytest

from tinysparse.gpt import GPT, GPTConfig
from tinysparse.training import PRESETS, TrainConfig, train
from resume_helpers import model_config, train_config


# ----------------------------------------------------------------------------- refused settings

def test_bad_configs_are_refused():
    for field, value in [("max_iters", 0), ("batch_size", -1), ("lr", 0.0), ("eval_iters", 0),
                         ("grad_clip", -1.0), ("device", "tpu")]:
        with pytest.raises(ValueError, match=field):
            train_config("x", **{field: value})


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


# ----------------------------------------------------------------------------- warnings

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


# ----------------------------------------------------------------------------- presets

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
