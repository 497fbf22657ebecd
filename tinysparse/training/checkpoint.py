"""Checkpoints: arrays in a safetensors file, everything else in JSON. Loading one runs no code.

A run folder:

    out/tiny/
      ckpt.json                              the checkpoint; names its arrays file (written last)
      ckpt-000500-3f2a9c01b7de.safetensors   the checkpoint's arrays (step 500, SHA-256 3f2a9c...)
      config.json                            both configs, the parameter count, the corpus
      log.jsonl                              one JSON line per evaluation

What is in each file:
  * the arrays file (safetensors: a JSON header of names, dtypes and shapes, then raw numbers):
    `model/<name>` for every parameter AND buffer of model.state_dict() (e.g. the MoE routers'
    balancing biases, `blocks.0.ffn.router.bias`), and `optimizer/<slot>/<name>` for each
    optimizer state array (AdamW: `m` and `v`) of each parameter. float32 or float64 only.
  * ckpt.json: "format" and "version"; "step"; "arrays" (the arrays file's name, size in bytes
    and SHA-256); "model_config" and "train_config"; "optimizer" (step_count, lr, the slot names
    and the parameter names in the optimizer's order); "rng" ("numpy": the global host generator
    (init; dropout and router jitter on the CPU); "cupy": the device stream that dropout and
    router jitter draw from on a GPU, engine/random.py's SplitMix64 seed and counter as decimal
    strings; null in checkpoints written before it was saved);
    "sampler" (the batch sampler's train and val generators); "best_val_loss", "val_loss" and
    the per-step loss "history"; "train_flops" and "train_flops_matmul" (cumulative FLOPs of
    the training steps, counted by the ledger; absent in older runs). Generator states are
    PCG64 states, their 128-bit integers written as decimal strings, so a resumed run draws
    exactly what an unbroken one would.

Why not pickle: unpickling runs whatever code the file asks for, so a shared run folder could
run commands on the machine that samples from it. Hugging Face ships weights as safetensors and
PyTorch's torch.load defaults to weights_only=True since 2.6 for the same reason. A leftover
ckpt.pkl (tinysparse's old format) is never opened; `python -m tinysparse convert-checkpoint`
converts one the user made, with their consent (convert.py).

Atomic, although it is two files. One checkpoint = the arrays file + the ckpt.json naming it:
  1. the arrays go to a NEW file whose name holds the step and the first hex digits of its
     SHA-256, written atomically (atomic.py: temporary file, fsync, rename, fsync the folder);
     the previous arrays file is not touched;
  2. ckpt.json is replaced atomically: that rename is the commit. Before it, ckpt.json names
     the previous arrays file, which still exists; after it, the new one;
  3. then the arrays files ckpt.json does not name, and temporary files a killed process left
     (`.ckpt*.tmp`), are deleted.
A crash anywhere leaves a loadable checkpoint: the old one up to the commit, the new one after.
ckpt.json holds its arrays file's size and SHA-256, checked on every load, so new arrays are
never paired with old metadata, and a truncated, mixed-up or bit-flipped arrays file is refused.

Loading goes through ONE function, load_checkpoint(run_dir): `sample` (through load_run),
`train --resume`, and the ledger and map commands to come all read runs with it, so every check
it makes (checkpoint_schema.py: every field's type, the arrays' dtypes and shapes, the
safetensors header) holds for all of them. load_state() then copies a checkpoint into a model
and an optimizer, refusing arrays that do not fit the model the config describes. Every refusal
is a CheckpointError with one line naming the file and the fix.
"""
import json
import os
import re

import numpy as np
import safetensors.numpy

from ..engine import backend
from .atomic import atomic_write, sha256_hex
from .checkpoint_schema import (FORMAT, TRAIN_FLOPS, VERSION, CheckpointError, bitgen_to_json,
                                decode_arrays, device_stream_to_json, parse_meta, refuse,
                                split_arrays)

CKPT_NAME = "ckpt.json"          # the checkpoint inside a run folder; names its arrays file
ARRAYS_NAME = "ckpt-{step:06d}-{digest:.12}.safetensors"      # the arrays of one checkpoint
ARRAYS_PATTERN = re.compile(r"ckpt-\d{6,}-[0-9a-f]{12}\.safetensors")
TEMP_PATTERN = re.compile(r"\.ckpt[.-].*\.tmp")   # atomic_write's leftovers of a killed process
LEGACY_NAME = "ckpt.pkl"         # the old pickle format: never opened, only converted on request
CONFIG_NAME = "config.json"      # the run's configs, for people and other tools
LOG_NAME = "log.jsonl"           # one JSON line per evaluation

__all__ = ["CKPT_NAME", "LEGACY_NAME", "CONFIG_NAME", "LOG_NAME", "CheckpointError",
           "save_checkpoint", "load_checkpoint", "load_state"]


# ----------------------------------------------------------------------------- saving

def _host(array):
    """A C-contiguous NumPy copy of a NumPy or CuPy array, float32 or float64."""
    out = np.ascontiguousarray(backend.to_numpy(array))
    if out.dtype not in (np.float32, np.float64):
        raise TypeError(f"checkpoints hold float32/float64 arrays, got {out.dtype}")
    return out


def _split(ckpt):
    """(ckpt.json content without its "arrays" entry, {name: array}) of a checkpoint dict with
    the keys load_checkpoint returns. Fails before anything is written."""
    opt = ckpt["optimizer"]
    params = list(opt["params"])
    slots = sorted(k for k, v in opt.items()              # per-parameter arrays, e.g. m and v
                   if k not in ("params", "slots") and isinstance(v, (list, tuple)))
    arrays = {f"model/{name}": _host(a) for name, a in ckpt["model"].items()}
    for slot in slots:
        if len(opt[slot]) != len(params):
            raise ValueError(f"optimizer slot {slot!r} has {len(opt[slot])} arrays for "
                             f"{len(params)} parameters")
        arrays.update({f"optimizer/{slot}/{n}": _host(a) for n, a in zip(params, opt[slot])})
    val_loss = ckpt.get("val_loss")
    meta = {"format": FORMAT, "version": VERSION, "step": int(ckpt["step"]), "arrays": None,
            "model_config": dict(ckpt["model_config"]), "train_config": dict(ckpt["train_config"]),
            "optimizer": {"step_count": int(opt["step_count"]), "lr": float(opt["lr"]),
                          "slots": slots, "params": params},
            "rng": {"numpy": bitgen_to_json(ckpt["rng"]),
                    "cupy": device_stream_to_json(ckpt.get("rng_cupy"))},
            "sampler": {k: bitgen_to_json(ckpt["sampler"][k]) for k in ("train", "val")},
            "best_val_loss": float(ckpt["best_val_loss"]),
            "val_loss": None if val_loss is None else float(val_loss),
            "history": [float(x) for x in ckpt["history"]]}
    for key in TRAIN_FLOPS:            # optional: None (not counted) is written as null
        if ckpt.get(key) is not None:
            meta[key] = float(ckpt[key])
    return meta, arrays


def save_checkpoint(run_dir, ckpt):
    """Write a checkpoint into run_dir atomically (see the module docstring); returns the path of
    its ckpt.json. `ckpt` has the keys load_checkpoint returns: model (state dict), optimizer
    (state dict plus "params", the parameter names in its order), model_config, train_config,
    step, rng, rng_cupy (optional), sampler, best_val_loss, val_loss, history. Arrays may be
    NumPy or CuPy."""
    meta, arrays = _split(ckpt)
    data = safetensors.numpy.save(arrays, metadata={"format": FORMAT})
    digest = sha256_hex(data)
    name = ARRAYS_NAME.format(step=meta["step"], digest=digest)
    meta["arrays"] = {"file": name, "bytes": len(data), "sha256": digest}
    text = json.dumps(meta, indent=2) + "\n"   # before any write: what JSON cannot hold fails
    os.makedirs(run_dir, exist_ok=True)
    _write_arrays(run_dir, name, data)
    _commit(run_dir, text)
    _remove_stale(run_dir, keep=name)
    return os.path.join(run_dir, CKPT_NAME)


def _write_arrays(run_dir, name, data):
    """Step 1: the arrays under a new name; the previous checkpoint stays whole."""
    atomic_write(os.path.join(run_dir, name), lambda fh: fh.write(data))


def _commit(run_dir, text):
    """Step 2, the commit: replace ckpt.json, which names the new arrays file."""
    atomic_write(os.path.join(run_dir, CKPT_NAME), lambda fh: fh.write(text), mode="w")


def _remove_stale(run_dir, keep):
    """Step 3: delete arrays files ckpt.json no longer names and a killed process's temporary
    files. Best effort: a file that cannot be deleted is only wasted space, never read."""
    for entry in os.listdir(run_dir):
        stale = ARRAYS_PATTERN.fullmatch(entry) and entry != keep
        if stale or TEMP_PATTERN.fullmatch(entry):
            try:
                os.unlink(os.path.join(run_dir, entry))
            except OSError:
                pass


# ----------------------------------------------------------------------------- loading

def _missing(run_dir, resume):
    """The error for a run folder without ckpt.json; a legacy ckpt.pkl is named, never opened."""
    path, legacy = os.path.join(run_dir, CKPT_NAME), os.path.join(run_dir, LEGACY_NAME)
    if os.path.isdir(path):
        refuse(path, "is a folder, not a checkpoint file", "pass the run folder as --out-dir")
    if os.path.lexists(legacy):
        raise CheckpointError(
            f"{legacy} is a checkpoint in tinysparse's old pickle format, which is never opened "
            f"because unpickling can run any code in the file; if you made it yourself, convert "
            f"it with `python -m tinysparse convert-checkpoint --out-dir {run_dir} "
            f"--i-trust-this-file`, otherwise train anew (python -m tinysparse train --out-dir "
            f"{run_dir})")
    if os.path.isfile(run_dir):
        raise CheckpointError(f"{run_dir} is a file; pass the run folder that holds {CKPT_NAME} "
                              f"as --out-dir")
    if resume:
        raise CheckpointError(f"--resume: no checkpoint at {path}; drop --resume to start a new "
                              f"run, or pass the --out-dir of the run to continue")
    where = (f"the folder {run_dir} has no {CKPT_NAME}" if os.path.isdir(run_dir)
             else f"there is no run folder {run_dir}")
    raise CheckpointError(f"no checkpoint at {path} ({where}); train one first with `make train` "
                          f"(python -m tinysparse train --out-dir {run_dir}) or pass --out-dir "
                          f"of an existing run")


def _read(path, what):
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as e:
        refuse(path, f"cannot be read ({e.strerror})", f"check the {what}'s permissions")


def _read_arrays(run_dir, meta_path, entry):
    """The bytes of the arrays file ckpt.json names, after checking its name, size and SHA-256."""
    name = entry["file"]
    if not ARRAYS_PATTERN.fullmatch(name):
        refuse(meta_path, f"names the arrays file {name!r}, which is not a checkpoint file name "
                          f"(ckpt-STEP-HASH.safetensors, in the run folder)")
    path = os.path.join(run_dir, name)
    if not os.path.isfile(path):
        refuse(path, f"is missing ({CKPT_NAME} names it)")
    size = os.path.getsize(path)
    if size != entry["bytes"]:
        refuse(path, f"has {size} bytes where {CKPT_NAME} records {entry['bytes']}, so it is "
                     f"truncated or not the file this checkpoint wrote")
    data = _read(path, "arrays file")
    if sha256_hex(data) != entry["sha256"]:
        refuse(path, f"does not have the SHA-256 that {CKPT_NAME} records, so it was damaged or "
                     f"replaced")
    return path, data


def load_checkpoint(run_dir, resume=False):
    """The checkpoint in run_dir as a dict: model ({name: array}, parameters and buffers),
    optimizer (step_count, lr, params, and one list of arrays per slot, e.g. m and v), model_config,
    train_config, step, rng, rng_cupy (the device stream's state, or None), sampler,
    best_val_loss, val_loss, history, plus path and arrays_path.

    Everything is checked before it is returned (see checkpoint_schema.py); any problem raises
    CheckpointError with one line naming the file and the fix. resume=True only words the
    missing-checkpoint message for `train --resume`. Never opens a pickle."""
    path = os.path.join(run_dir, CKPT_NAME)
    if not os.path.isfile(path):
        _missing(run_dir, resume)
    meta = parse_meta(_read(path, "checkpoint"), path)
    arrays_path, data = _read_arrays(run_dir, path, meta.pop("arrays"))
    model, slots = split_arrays(decode_arrays(data, arrays_path), meta["optimizer"], arrays_path)
    meta["optimizer"].update(slots)
    return {**meta, "model": model, "path": path, "arrays_path": arrays_path}


def load_state(ckpt, model, optimizer=None):
    """Copy a loaded checkpoint into `model` (parameters and buffers) and, given, `optimizer`.
    Everything is checked before anything is copied: a CheckpointError leaves both unchanged."""
    own = {n: tuple(t.shape) for n, t in [*model.named_parameters(), *model.named_buffers()]}
    saved = {n: tuple(a.shape) for n, a in ckpt["model"].items()}
    if own != saved:
        missing, unexpected = sorted(set(own) - set(saved)), sorted(set(saved) - set(own))
        wrong = [f"model/{n} is {saved[n]}, the config makes {own[n]}" for n in sorted(own)
                 if n in saved and saved[n] != own[n]]
        if wrong:
            problem = wrong[0]
        elif missing:
            problem = "no array model/" + ", model/".join(missing[:3])
        else:
            problem = "unexpected model/" + ", model/".join(unexpected[:3])
        refuse(ckpt["arrays_path"],
               f"does not fit the model that {CKPT_NAME} describes ({problem})")
    if optimizer is not None:
        names = [n for n, _ in model.named_parameters()]
        if ckpt["optimizer"]["params"] != names:
            refuse(ckpt["path"], "has optimizer.params that do not list the model's parameters "
                                 "in order")
        if sorted(ckpt["optimizer"]["slots"]) != sorted(optimizer._slots()):
            refuse(ckpt["path"], f"has optimizer.slots = {ckpt['optimizer']['slots']}, but "
                                 f"{type(optimizer).__name__} keeps {list(optimizer._slots())}")
        optimizer.load_state_dict(ckpt["optimizer"])
    model.load_state_dict(ckpt["model"])
