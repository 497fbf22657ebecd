"""The generator states a checkpoint saves: NumPy's PCG64 states (bitgen_to_json and back) and
the device's SplitMix64 stream, at the edges of their ranges and just outside, each refusal word
for word."""
import json

import numpy as np
import pytest

from checkpoint_schema_helpers import P, good_state, refused, stream
from tinysparse.training.checkpoint_schema import (bitgen_from_json, bitgen_to_json,
                                                   device_stream_from_json, device_stream_to_json)


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
