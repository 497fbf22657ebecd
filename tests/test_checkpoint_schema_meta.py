"""ckpt.json as a whole (checkpoint_schema.parse_meta): a good one reads back; every field out of
its range, of the wrong type, garbled JSON and a config GPTConfig refuses are named with the file
and the field's dotted name, in one line with the fix; the optional training FLOP counts."""
import json

import pytest

from checkpoint_schema_helpers import P, good_state, refused, stream
from tinysparse.gpt import GPTConfig
from tinysparse.training.checkpoint_schema import FIX, VERSION, parse_meta


def meta(**changes):
    base = {"format": "tinysparse-checkpoint", "version": VERSION, "step": 3,
            "arrays": {"file": "ckpt-000003-0123456789ab.safetensors", "bytes": 10,
                       "sha256": "0" * 64},
            "model_config": {}, "train_config": {},
            "optimizer": {"step_count": 3, "lr": 0.1, "slots": ["m", "v"], "params": ["w"]},
            "rng": {"numpy": good_state(), "cupy": None},
            "sampler": {"train": good_state(), "val": good_state()},
            "best_val_loss": 2.0, "val_loss": None, "history": [3.0, 2]}
    base.update(changes)
    return json.dumps(base).encode()


def test_a_good_ckpt_json_reads_back():
    out = parse_meta(meta(), P)
    assert out["step"] == 3 and out["val_loss"] is None and out["history"] == [3.0, 2.0]
    assert out["version"] == VERSION
    assert out["arrays"]["sha256"] == "0" * 64 and out["optimizer"]["params"] == ["w"]
    assert parse_meta(meta(step=0), P)["step"] == 0


@pytest.mark.parametrize("changes, message, fix", [
    (dict(version=VERSION + 1), f"has format version {VERSION + 1}, this tinysparse reads "
                                f"version {VERSION}", "use the tinysparse that wrote it, or train anew"),
    (dict(version=VERSION - 1), f"has format version {VERSION - 1}, this tinysparse reads "
                                f"version {VERSION}", FIX),
    (dict(step=-1), "has a negative step or an arrays.sha256 that is not 64 hex digits", FIX),
    (dict(arrays={"file": "f", "bytes": 1, "sha256": "A" * 64}),
     "has a negative step or an arrays.sha256 that is not 64 hex digits", FIX),
    (dict(history=[1.0, "2"]), "has a history entry that is not a number", FIX),
    (dict(history=[1.0, float("inf")]), "has a loss in its history that is not finite", FIX),
    (dict(rng={"numpy": good_state(), "cupy": 5}), "has rng.cupy = 5, which is not an object", FIX),
    (dict(optimizer={"step_count": 1, "lr": 0.1, "slots": ["m", "m"], "params": ["w"]}),
     "has an optimizer.slots that is not a list of distinct names", FIX),
    (dict(optimizer={"step_count": 1, "lr": 0.1, "slots": ["m"], "params": [""]}),
     "has an optimizer.params that is not a list of distinct names", FIX),
    (dict(format="other"), 'is not a tinysparse checkpoint (no "format": "tinysparse-checkpoint" '
                           'in it)', FIX),
    (dict(optimizer={"step_count": "1", "lr": 0.1, "slots": [], "params": []}),
     'has optimizer.step_count = "1", which is not an integer', FIX),
    (dict(optimizer={"step_count": 1, "slots": [], "params": []}), "has no optimizer.lr", FIX),
    (dict(optimizer={"step_count": 1, "lr": "0.1", "slots": [], "params": []}),
     'has optimizer.lr = "0.1", which is not a number', FIX),
])
def test_ckpt_json_outside_its_ranges(changes, message, fix):
    with refused(message, fix):
        parse_meta(meta(**changes), P)


def test_a_bad_device_stream_in_ckpt_json_is_named_with_its_file():
    with refused('has rng.cupy.counter = "x", which is not a decimal string of a 64-bit integer'):
        parse_meta(meta(rng={"numpy": good_state(), "cupy": stream(counter="x")}), P)
    assert parse_meta(meta(rng={"numpy": good_state(), "cupy": stream()}), P)["rng_cupy"] == \
        {"seed": 7, "counter": 3}


def test_the_training_flop_counts_read_back_and_are_optional():
    """train_flops and train_flops_matmul: a count (0 included) is read as a float; a run from
    before the ledger counted steps has neither key, and null means not counted."""
    out = parse_meta(meta(train_flops=3 * 10 ** 18, train_flops_matmul=0), P)
    assert out["train_flops"] == 3e18 and out["train_flops_matmul"] == 0.0
    assert type(out["train_flops_matmul"]) is float
    old = parse_meta(meta(), P)
    assert old["train_flops"] is None and old["train_flops_matmul"] is None
    assert parse_meta(meta(train_flops=None), P)["train_flops"] is None


@pytest.mark.parametrize("changes, message", [
    (dict(train_flops=-1), "has train_flops = -1.0, which is not a finite count >= 0"),
    (dict(train_flops_matmul=-0.5), "has train_flops_matmul = -0.5, which is not a finite count "
                                    ">= 0"),
    (dict(train_flops=float("inf")), "has train_flops = inf, which is not a finite count >= 0"),
    (dict(train_flops_matmul=float("nan")), "has train_flops_matmul = nan, which is not a "
                                            "finite count >= 0"),
    (dict(train_flops="5"), 'has train_flops = "5", which is not a number'),
])
def test_a_training_flop_count_that_is_no_count_is_refused(changes, message):
    with refused(message):
        parse_meta(meta(**changes), P)


def test_unknown_training_settings_in_ckpt_json_are_ignored():
    out = parse_meta(meta(train_config={"max_iters": 7, "wizardry": 1}), P)
    assert out["train_config"]["max_iters"] == 7 and "wizardry" not in out["train_config"]


def _arrays(**change):
    return {"file": "f", "bytes": 1, "sha256": "0" * 64, **change}


def _optimizer(**change):
    return {"step_count": 1, "lr": 0.1, "slots": [], "params": [], **change}


@pytest.mark.parametrize("changes, message", [
    (dict(version="2"), 'has version = "2", which is not an integer'),
    (dict(arrays=[]), "has arrays = [], which is not an object"),
    (dict(arrays=_arrays(file=1)), "has arrays.file = 1, which is not a string"),
    (dict(arrays=_arrays(bytes="1")), 'has arrays.bytes = "1", which is not an integer'),
    (dict(arrays=_arrays(sha256=5)), "has arrays.sha256 = 5, which is not a string"),
    (dict(model_config=5), "has model_config = 5, which is not an object"),
    (dict(train_config=[]), "has train_config = [], which is not an object"),
    (dict(train_config={"max_iters": "7"}),
     'has train_config.max_iters = "7", which is not an integer'),
    (dict(optimizer=_optimizer(slots="m")), 'has optimizer.slots = "m", which is not a list'),
    (dict(rng=5), "has rng = 5, which is not an object"),
    (dict(sampler=5), "has sampler = 5, which is not an object"),
    (dict(sampler={"train": 5, "val": good_state()}),
     "has sampler.train = 5, which is not a generator state"),
    (dict(best_val_loss="2"), 'has best_val_loss = "2", which is not a number'),
    (dict(val_loss="2"), 'has val_loss = "2", which is not a number'),
    (dict(history={}), "has history = {}, which is not a list"),
    (dict(history=[1.0, 10 ** 400]), "has a history entry = a number too large for a float"),
])
def test_each_ckpt_json_field_is_refused_by_its_own_name(changes, message):
    """The file and the field's dotted name in every message (a dropped path or `where` fails)."""
    with refused(message):
        parse_meta(meta(**changes), P)


def _message_of(error, call):
    with pytest.raises(error) as caught:
        call()
    return " ".join(str(caught.value).split())


def test_garbled_json_and_refused_configs_quote_the_parser_and_the_config():
    text = _message_of(json.JSONDecodeError, lambda: json.loads("{"))
    with refused(f"is not valid JSON, so it is truncated or garbled ({text})"):
        parse_meta(b"{", P)
    text = _message_of(ValueError, lambda: GPTConfig(n_layer=0))
    with refused(f"has a model_config that GPTConfig refuses ({text})"):
        parse_meta(meta(model_config={"n_layer": 0}), P)
