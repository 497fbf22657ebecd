"""The field checks of ckpt.json and the arrays file (tinysparse/training/checkpoint_schema.py),
one rule at a time, at the edges of each range and with the exact one-line message.

test_checkpoint_refusals.py damages whole run folders; here each check gets the values just
inside and just outside its range, where an off-by-one or a dropped condition changes the answer.
"""
import json

import numpy as np
import pytest
import safetensors.numpy

from tinysparse.gpt import GPTConfig
from tinysparse.training.checkpoint_schema import (FIX, VERSION, CheckpointError,
                                                   bitgen_from_json, bitgen_to_json, check_config,
                                                   decode_arrays, device_stream_from_json,
                                                   device_stream_to_json, field, parse_meta,
                                                   split_arrays)
from tinysparse.training.config import TrainConfig

P = "run/ckpt.json"


def refused(message, fix=FIX):
    return pytest.raises(CheckpointError, match="^" + _escape(f"{P} {message}; {fix}") + "$")


def _escape(text):
    import re
    return re.escape(text)


# ----------------------------------------------------------------------------- fields

def test_field_types():
    assert field({"a": 3}, "a", int, P) == 3
    value = field({"a": 3}, "a", float, P)
    assert value == 3.0 and type(value) is float           # a JSON integer is a number
    assert field({"a": None}, "a", float, P, optional=True) is None
    with refused("has a = true, which is not an integer"):
        field({"a": True}, "a", int, P)                     # JSON true is not a number
    with refused("has x.a = true, which is not a number"):
        field({"a": True}, "a", float, P, "x")
    with refused("has x.a = null, which is not a number"):
        field({"a": None}, "a", float, P, "x")
    with refused("has no x.b"):
        field({"a": 1}, "b", int, P, "x")
    with refused("has a = a number too large for a float"):
        field({"a": 10 ** 400}, "a", float, P)


def test_long_values_are_shortened_to_40_characters():
    forty = "x" * 38                                         # json.dumps adds the quotes: 40
    with refused(f"has a = {json.dumps(forty)}, which is not an integer"):
        field({"a": forty}, "a", int, P)
    longer = "y" * 39                                        # 41 characters: 37 and "..."
    with refused(f"has a = {json.dumps(longer)[:37]}..., which is not an integer"):
        field({"a": longer}, "a", int, P)


# ----------------------------------------------------------------------------- generator states

def good_state():
    return bitgen_to_json(np.random.default_rng(5).bit_generator.state)


def test_a_generator_state_at_the_edges_of_its_ranges():
    state = {**good_state(), "state": str(2 ** 128 - 1), "uinteger": 2 ** 32 - 1, "has_uint32": 1}
    back = bitgen_from_json(state, P, "rng")
    assert back["state"]["state"] == 2 ** 128 - 1 and back["uinteger"] == 2 ** 32 - 1
    assert bitgen_from_json({**good_state(), "state": "0", "uinteger": 0, "has_uint32": 0},
                            P, "rng")["state"]["state"] == 0
    forty = "0" + str(2 ** 128 - 1)                      # 40 digits: the longest accepted
    assert bitgen_from_json({**good_state(), "state": forty}, P, "rng")["state"]["state"] == \
        2 ** 128 - 1
    with pytest.raises(ValueError, match=r"^only PCG64 generator states are saved, got MT19937$"):
        bitgen_to_json(np.random.Generator(np.random.MT19937(1)).bit_generator.state)


@pytest.mark.parametrize("change, message", [
    ({"state": str(2 ** 128)}, "has rng.state = {s}, which is not a decimal string of a "
                               "128-bit integer"),
    ({"state": "-1"}, "has rng.state = {s}, which is not a decimal string of a 128-bit integer"),
    ({"state": "9" * 39}, "has rng.state = {s}, which is not a decimal string of a 128-bit "
                          "integer"),                         # 39 digits, above 2**128
    ({"state": "0" * 41}, "has rng.state = {s}, which is not a decimal string of a 128-bit "
                          "integer"),                         # small, but more than 40 digits
    ({"state": "١٢"}, "has rng.state = {s}, which is not a decimal string of a 128-bit integer"),
    ({"inc": "4"}, "has an even rng.inc, which no PCG64 generator has"),
    ({"inc": str(2 ** 128 + 1)}, "has rng.inc = {s}, which is not a decimal string of a "
                                 "128-bit integer"),
    ({"has_uint32": "1"}, 'has rng.has_uint32 = "1", which is not an integer'),
    ({"uinteger": 2.5}, "has rng.uinteger = 2.5, which is not an integer"),
    ({"has_uint32": 2}, "has rng.has_uint32 = 2 and .uinteger = {w}; a PCG64 state has 0 or 1 "
                        "and a 32-bit integer"),
    ({"uinteger": 2 ** 32}, "has rng.has_uint32 = {h} and .uinteger = 4294967296; a PCG64 state "
                            "has 0 or 1 and a 32-bit integer"),
    ({"uinteger": -1}, "has rng.has_uint32 = {h} and .uinteger = -1; a PCG64 state has 0 or 1 "
                       "and a 32-bit integer"),
    ({"bit_generator": "MT"}, 'has rng.bit_generator = "MT", but tinysparse\'s generators are '
                              '"PCG64"'),
])
def test_a_generator_state_outside_its_ranges(change, message):
    state = {**good_state(), **change}
    value = next(iter(change.values()))
    shown = json.dumps(value)                               # shortened past 40 characters
    text = message.format(s=shown if len(shown) <= 40 else shown[:37] + "...",
                          w=state["uinteger"], h=state["has_uint32"])
    with refused(text):
        bitgen_from_json(state, P, "rng")


def test_a_generator_state_without_its_integer():
    state = {k: v for k, v in good_state().items() if k != "uinteger"}
    with refused("has no rng.uinteger"):
        bitgen_from_json(state, P, "rng")


def test_a_generator_state_that_is_not_an_object():
    with refused("has rng = [1, 2], which is not a generator state"):
        bitgen_from_json([1, 2], P, "rng")


# ----------------------------------------------------------------------------- the device stream

def stream(**change):
    return {"bit_generator": "SplitMix64", "seed": "7", "counter": "3", **change}


def test_a_device_stream_at_the_edges_of_its_ranges():
    top = str(2 ** 64 - 1)                          # both integers are 64-bit: the largest fits
    assert device_stream_from_json(stream(seed=top, counter=top), P, "rng.cupy") == \
        {"seed": 2 ** 64 - 1, "counter": 2 ** 64 - 1}
    assert device_stream_from_json(stream(seed="0", counter="0"), P, "rng.cupy") == \
        {"seed": 0, "counter": 0}
    assert device_stream_from_json(None, P, "rng.cupy") is None     # saved before it existed
    state = {"seed": 2 ** 63 + 5, "counter": 2 ** 53 + 1}            # past a double's 53 bits
    assert device_stream_from_json(json.loads(json.dumps(device_stream_to_json(state))),
                                   P, "rng.cupy") == state


@pytest.mark.parametrize("obj, message", [
    (stream(seed=str(2 ** 64)), 'has rng.cupy.seed = "18446744073709551616", which is not a '
                                "decimal string of a 64-bit integer"),
    (stream(counter=str(2 ** 64)), 'has rng.cupy.counter = "18446744073709551616", which is not '
                                   "a decimal string of a 64-bit integer"),
    (stream(counter=3), "has rng.cupy.counter = 3, which is not a decimal string of a 64-bit "
                        "integer"),
    (stream(bit_generator="XORWOW"), 'has rng.cupy.bit_generator = "XORWOW", but tinysparse\'s '
                                     'device stream is "SplitMix64"'),
    ({"seed": "7", "counter": "3"}, "has rng.cupy.bit_generator = null, but tinysparse's device "
                                    'stream is "SplitMix64"'),
    (stream(offset="2", a="1"), "has rng.cupy fields this tinysparse does not know: a, offset"),
    ([1, 2], "has rng.cupy = [1, 2], which is not a generator state"),
])
def test_a_device_stream_outside_its_ranges_word_for_word(obj, message):
    with refused(message):
        device_stream_from_json(obj, P, "rng.cupy")


# ----------------------------------------------------------------------------- configs

def test_configs_fill_defaults_and_treat_unknown_fields_by_kind():
    model = check_config(GPTConfig, {"n_layer": 2}, P, "model_config", unknown_ok=False)
    assert model == {**GPTConfig().to_dict(), "n_layer": 2}
    train = check_config(TrainConfig, {"max_iters": 7, "lr_decay_iters": None, "wizardry": 1},
                         P, "train_config", unknown_ok=True)
    assert train["max_iters"] == 7 and train["lr_decay_iters"] is None and "wizardry" not in train
    with refused("has model_config fields this tinysparse does not know: a, b",
                 "it was saved by a newer tinysparse: upgrade, or train anew"):
        check_config(GPTConfig, {"b": 1, "a": 2}, P, "model_config", unknown_ok=False)
    with refused('has train_config.lr_decay_iters = "5", which is not an integer or null'):
        check_config(TrainConfig, {"lr_decay_iters": "5"}, P, "train_config", unknown_ok=True)


# ----------------------------------------------------------------------------- ckpt.json

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


# ----------------------------------------------------------------------------- the arrays file

def test_decoded_arrays_are_native_writable_copies():
    big = np.arange(6, dtype=">f8").reshape(2, 3)         # stored little-endian by safetensors
    arrays = decode_arrays(safetensors.numpy.save({"model/w": big.astype("<f8"),
                                                   "model/b": np.ones(2, np.float32)}), P)
    assert arrays["model/w"].dtype == np.float64 and arrays["model/w"].dtype.isnative
    assert arrays["model/w"].flags.writeable and arrays["model/w"].shape == (2, 3)
    np.testing.assert_array_equal(arrays["model/w"], big)
    assert arrays["model/b"].dtype == np.float32


def test_split_arrays_pairs_every_parameter_with_its_slots():
    w, m = np.ones((2, 2), np.float32), np.zeros((2, 2), np.float32)
    model, slots = split_arrays({"model/w": w, "model/buf": w, "optimizer/m/w": m},
                                {"params": ["w"], "slots": ["m"]}, P)
    assert set(model) == {"w", "buf"} and slots == {"m": [m]}
    with refused("has no array model/x, a parameter that ckpt.json's optimizer lists"):
        split_arrays({"model/w": w}, {"params": ["x"], "slots": []}, P)


def test_arrays_file_refusals_word_for_word(monkeypatch):
    try:
        safetensors.deserialize(b"garbage")
    except Exception as e:                           # noqa: BLE001 - whatever the parser says
        said = " ".join(str(e).split())
    with refused(f"is not a valid safetensors file ({said})"):
        decode_arrays(b"garbage", P)
    ints = safetensors.numpy.save({"model/w": np.zeros(2, np.int32)})
    with refused("has array 'model/w' of dtype I32; tinysparse saves only float32 and float64 "
                 "(F32 and F64)"):
        decode_arrays(ints, P)
    # safetensors refuses a header whose shape and bytes disagree; a parser that did not would
    # still meet this check
    import tinysparse.training.checkpoint_schema as schema
    monkeypatch.setattr(schema.safetensors, "deserialize", lambda data: [
        ("model/w", {"dtype": "F32", "shape": [2, 3], "data": b"\0" * 20})])
    with refused("has array 'model/w' of 20 bytes for shape (2, 3)"):
        decode_arrays(b"", P)


def test_arrays_nobody_described_are_named_three_at_most():
    w = np.ones(1, np.float32)
    arrays = {"model/w": w, **{f"stray/{c}": w for c in "dcba"}}
    with refused("holds arrays that ckpt.json does not describe: stray/a, stray/b, stray/c"):
        split_arrays(arrays, {"params": ["w"], "slots": []}, P)
