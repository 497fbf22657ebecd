"""The arrays file (safetensors; checkpoint_schema.decode_arrays and split_arrays): native,
writable float copies, every parameter paired with its optimizer slots, and a broken file, a
wrong dtype, a size that disagrees with the shape or arrays nobody described refused word for
word."""
import numpy as np
import safetensors.numpy

from checkpoint_schema_helpers import P, refused
from tinysparse.training.checkpoint_schema import decode_arrays, split_arrays


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
