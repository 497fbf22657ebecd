"""What a checkpoint's two files must hold, checked field by field before anything is used.

checkpoint.py writes and reads the files; this module says what a valid ckpt.json and a valid
arrays file are. Every check raises CheckpointError with ONE line: the file, what is wrong in it,
and what to do. Nothing here runs code from a file: the JSON is parsed by the json module, the
arrays by safetensors (an 8-byte header length, a JSON header of names, dtypes, shapes and byte
offsets, then raw little-endian numbers; its parser refuses offsets that overlap, leave gaps or
run past the end), and the two are checked against each other and against the configs.
"""
import dataclasses
import json
import math
import re
import typing

import numpy as np
import safetensors

from ..gpt import GPTConfig
from .config import TrainConfig

FORMAT = "tinysparse-checkpoint"
VERSION = 2                 # version 1 was the pickle (ckpt.pkl), which is never opened
DTYPES = {"F32": np.dtype("<f4"), "F64": np.dtype("<f8")}   # safetensors' names; all we save
FIX = "copy the whole run folder again from where it came, or train anew"
_KINDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
          dict: "an object", list: "a list"}


class CheckpointError(ValueError):
    """A checkpoint is missing, damaged or does not fit; the one-line message says what to do."""


def refuse(path, problem, fix=FIX):
    """Raise the one-line CheckpointError: "<file> <problem>; <what to do>"."""
    raise CheckpointError(f"{path} {problem}; {fix}")


def _short(value):
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _dotted(where, key):
    return f"{where}.{key}" if where else key


def _is(value, kind):
    if kind in (int, float) and isinstance(value, bool):      # JSON true is not a number
        return False
    return isinstance(value, (int, float) if kind is float else kind)


def field(obj, key, kind, path, where="", optional=False):
    """obj[key], which must be of `kind` (None allowed when optional); `where` names obj in the
    file ("" for the top level, "rng.numpy", ...)."""
    name = _dotted(where, key)
    if key not in obj:
        refuse(path, f"has no {name}")
    value = obj[key]
    if not (value is None and optional) and not _is(value, kind):
        refuse(path, f"has {name} = {_short(value)}, which is not {_KINDS[kind]}")
    if kind is float and value is not None:
        return _float(value, path, name)
    return value


def _float(value, path, name):
    try:
        return float(value)         # a JSON integer of 400 digits is no float
    except OverflowError:
        refuse(path, f"has {name} = a number too large for a float")


# ----------------------------------------------------------------------------- generator states

def bitgen_to_json(state):
    """A NumPy PCG64 bit-generator state (np.random.default_rng's) as JSON. Its two 128-bit
    integers are decimal strings: exact in every JSON reader, also those that hold numbers as
    doubles (53 bits). tinysparse's generators are all PCG64; anything else is refused."""
    if state.get("bit_generator") != "PCG64":
        raise ValueError(f"only PCG64 generator states are saved, got {state.get('bit_generator')}")
    return {"bit_generator": "PCG64", "state": str(int(state["state"]["state"])),
            "inc": str(int(state["state"]["inc"])), "has_uint32": int(state["has_uint32"]),
            "uinteger": int(state["uinteger"])}


def _uint(text, bits, path, name):
    """A decimal string of an integer in [0, 2**bits)."""
    if not (isinstance(text, str) and text.isascii() and text.isdigit() and len(text) <= 40
            and int(text) < 2 ** bits):
        refuse(path, f"has {name} = {_short(text)}, which is not a decimal string of a "
                     f"{bits}-bit integer")
    return int(text)


def bitgen_from_json(obj, path, where):
    """Inverse of bitgen_to_json, every field checked: the state np.random's PCG64 accepts."""
    if not isinstance(obj, dict):
        refuse(path, f"has {where} = {_short(obj)}, which is not a generator state")
    if obj.get("bit_generator") != "PCG64":
        refuse(path, f"has {where}.bit_generator = {_short(obj.get('bit_generator'))}, but "
                     f"tinysparse's generators are \"PCG64\"")
    state = _uint(obj.get("state"), 128, path, f"{where}.state")
    inc = _uint(obj.get("inc"), 128, path, f"{where}.inc")
    if inc % 2 == 0:                # PCG's increment is always odd
        refuse(path, f"has an even {where}.inc, which no PCG64 generator has")
    has_uint32 = field(obj, "has_uint32", int, path, where)
    uinteger = field(obj, "uinteger", int, path, where)
    if has_uint32 not in (0, 1) or not 0 <= uinteger < 2 ** 32:
        refuse(path, f"has {where}.has_uint32 = {has_uint32} and .uinteger = {uinteger}; a "
                     f"PCG64 state has 0 or 1 and a 32-bit integer")
    return {"bit_generator": "PCG64", "state": {"state": state, "inc": inc},
            "has_uint32": has_uint32, "uinteger": uinteger}


DEVICE_STREAM = "SplitMix64"          # engine/random.py's device stream


def device_stream_to_json(state):
    """The device stream's state ({"seed", "counter"}, engine/random.py) as JSON, its integers
    as decimal strings (64-bit values are not exact in readers that hold numbers as doubles);
    None stays null."""
    if state is None:
        return None
    return {"bit_generator": DEVICE_STREAM, "seed": str(int(state["seed"])),
            "counter": str(int(state["counter"]))}


def device_stream_from_json(obj, path, where):
    """Inverse of device_stream_to_json, every field checked; null (a checkpoint written before
    the device stream was saved) is None."""
    if obj is None:
        return None
    if not isinstance(obj, dict):
        refuse(path, f"has {where} = {_short(obj)}, which is not a generator state")
    if obj.get("bit_generator") != DEVICE_STREAM:
        refuse(path, f"has {where}.bit_generator = {_short(obj.get('bit_generator'))}, but "
                     f"tinysparse's device stream is \"{DEVICE_STREAM}\"")
    unknown = sorted(set(obj) - {"bit_generator", "seed", "counter"})
    if unknown:
        refuse(path, f"has {where} fields this tinysparse does not know: {', '.join(unknown)}")
    return {"seed": _uint(obj.get("seed"), 64, path, f"{where}.seed"),
            "counter": _uint(obj.get("counter"), 64, path, f"{where}.counter")}


# ----------------------------------------------------------------------------- configs

def _options(hint):
    return typing.get_args(hint) or (hint,)                 # int | None -> (int, NoneType)


def _fits(value, hint):
    return any(value is None if kind is type(None) else _is(value, kind)
               for kind in _options(hint))


def _hint_text(hint):
    return " or ".join("null" if k is type(None) else _KINDS[k] for k in _options(hint))


def check_config(cls, values, path, where, unknown_ok):
    """A config dict whose every field has its dataclass type and which cls() accepts. A field
    left out takes its default (it may be newer than the file). Unknown keys: refused for the
    model (it would be another model), ignored for training settings."""
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(values) - set(hints))
    if unknown and not unknown_ok:
        refuse(path, f"has {where} fields this tinysparse does not know: {', '.join(unknown)}",
               "it was saved by a newer tinysparse: upgrade, or train anew")
    known = {k: v for k, v in values.items() if k in hints}
    for key, value in known.items():
        if not _fits(value, hints[key]):
            refuse(path, f"has {where}.{key} = {_short(value)}, which is not "
                         f"{_hint_text(hints[key])}")
    try:
        config = cls(**known)
    except (ValueError, TypeError, OverflowError) as e:
        refuse(path, f"has a {where} that {cls.__name__} refuses ({' '.join(str(e).split())})")
    return dataclasses.asdict(config)                       # every field, defaults filled in


# ----------------------------------------------------------------------------- ckpt.json

def parse_meta(data, path):
    """The checked content of ckpt.json (bytes) as the dict checkpoint.py returns, but without
    the arrays; the arrays file's entry is under "arrays"."""
    try:
        meta = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        refuse(path, f"is not valid JSON, so it is truncated or garbled "
                     f"({' '.join(str(e).split())})")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        refuse(path, f"is not a tinysparse checkpoint (no \"format\": \"{FORMAT}\" in it)")
    version = field(meta, "version", int, path)
    if version != VERSION:
        refuse(path, f"has format version {version}, this tinysparse reads version {VERSION}",
               "use the tinysparse that wrote it, or train anew" if version > VERSION else FIX)
    out = {"version": version, "step": field(meta, "step", int, path)}
    entry = field(meta, "arrays", dict, path)
    out["arrays"] = {"file": field(entry, "file", str, path, "arrays"),
                     "bytes": field(entry, "bytes", int, path, "arrays"),
                     "sha256": field(entry, "sha256", str, path, "arrays")}
    if not re.fullmatch(r"[0-9a-f]{64}", out["arrays"]["sha256"]) or out["step"] < 0:
        refuse(path, "has a negative step or an arrays.sha256 that is not 64 hex digits")
    out["model_config"] = check_config(GPTConfig, field(meta, "model_config", dict, path), path,
                                       "model_config", unknown_ok=False)
    out["train_config"] = check_config(TrainConfig, field(meta, "train_config", dict, path), path,
                                       "train_config", unknown_ok=True)
    out["optimizer"] = _optimizer(field(meta, "optimizer", dict, path), path)
    rng = field(meta, "rng", dict, path)
    out["rng"] = bitgen_from_json(rng.get("numpy"), path, "rng.numpy")
    field(rng, "cupy", dict, path, "rng", optional=True)
    out["rng_cupy"] = device_stream_from_json(rng["cupy"], path, "rng.cupy")
    sampler = field(meta, "sampler", dict, path)
    out["sampler"] = {k: bitgen_from_json(sampler.get(k), path, f"sampler.{k}")
                      for k in ("train", "val")}
    out["best_val_loss"] = field(meta, "best_val_loss", float, path)
    out["val_loss"] = field(meta, "val_loss", float, path, optional=True)
    history = field(meta, "history", list, path)
    if not all(_is(x, float) for x in history):
        refuse(path, "has a history entry that is not a number")
    out["history"] = [_float(x, path, "a history entry") for x in history]
    if not all(math.isfinite(x) for x in out["history"]):
        refuse(path, "has a loss in its history that is not finite")
    for key in TRAIN_FLOPS:            # written since the ledger counts steps; older runs lack them
        value = field(meta, key, float, path, optional=True) if key in meta else None
        if value is not None and not (math.isfinite(value) and value >= 0):
            refuse(path, f"has {key} = {value}, which is not a finite count >= 0")
        out[key] = value
    return out


# cumulative FLOPs of the training steps so far, counted by the ledger (training/loop.py)
TRAIN_FLOPS = ("train_flops", "train_flops_matmul")


def _optimizer(opt, path):
    """{"step_count", "lr", "slots": names of per-parameter arrays, "params": parameter names}."""
    out = {"step_count": field(opt, "step_count", int, path, "optimizer"),
           "lr": field(opt, "lr", float, path, "optimizer")}
    for key in ("slots", "params"):
        names = field(opt, key, list, path, "optimizer")
        if not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
            refuse(path, f"has an optimizer.{key} that is not a list of distinct names")
        out[key] = names
    return out


# ----------------------------------------------------------------------------- the arrays file

def decode_arrays(data, path):
    """{name: NumPy array} from the bytes of a safetensors file; only float32/float64 arrays."""
    try:
        flat = safetensors.deserialize(data)
    except Exception as e:          # whatever safetensors' parser says about a malformed file
        refuse(path, f"is not a valid safetensors file ({' '.join(str(e).split())})")
    arrays = {}
    for name, info in flat:
        dtype = DTYPES.get(info["dtype"])
        if dtype is None:
            refuse(path, f"has array {name!r} of dtype {info['dtype']}; tinysparse saves only "
                         f"float32 and float64 ({' and '.join(DTYPES)})")
        shape = tuple(info["shape"])
        if len(info["data"]) != dtype.itemsize * int(np.prod(shape, dtype=np.int64)):
            refuse(path, f"has array {name!r} of {len(info['data'])} bytes for shape {shape}")
        arrays[name] = np.frombuffer(info["data"], dtype=dtype).reshape(shape).astype(
            dtype.newbyteorder("="))        # native byte order, and a writable copy
    return arrays


def split_arrays(arrays, optimizer, path):
    """(model state {name: array}, {slot: [array per parameter]}) from the flat file, where
    every parameter the optimizer lists has a model array and one array per slot of its shape."""
    model = {k[len("model/"):]: a for k, a in arrays.items() if k.startswith("model/")}
    slots, expected = {}, {f"model/{name}" for name in model}
    for name in optimizer["params"]:
        if name not in model:
            refuse(path, f"has no array model/{name}, a parameter that ckpt.json's optimizer lists")
    for slot in optimizer["slots"]:
        slots[slot] = []
        for name in optimizer["params"]:
            key = f"optimizer/{slot}/{name}"
            if key not in arrays:
                refuse(path, f"has no array {key}")
            if arrays[key].shape != model[name].shape:
                refuse(path, f"has {key} of shape {arrays[key].shape}, but its parameter "
                             f"model/{name} is {model[name].shape}")
            slots[slot].append(arrays[key])
            expected.add(key)
    extra = sorted(set(arrays) - expected)
    if extra:
        refuse(path, f"holds arrays that ckpt.json does not describe: {', '.join(extra[:3])}")
    return model, slots
