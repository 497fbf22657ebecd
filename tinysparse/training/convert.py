"""Converting an old pickle checkpoint (ckpt.pkl) to the safetensors + JSON format, with consent.

    python -m tinysparse convert-checkpoint --out-dir out/tiny --i-trust-this-file

tinysparse used to save checkpoints with pickle. Unpickling runs whatever code the file asks
for, so this is the ONE place in the project that reads a pickle (a test greps the source to
keep it so), and only when the user says, with --i-trust-this-file, that they made the file
themselves. Even then the unpickler only lets through what an old checkpoint holds: dicts,
lists, numbers, strings and NumPy arrays (the idea of PyTorch's weights_only=True). The result
is written as a new checkpoint, loaded back through every check of load_checkpoint, and
ckpt.pkl is left as it was (delete it once the new checkpoint works).
"""
import io
import os
import pickle

from ..engine import random as ts_random
from ..gpt import GPT, GPTConfig
from .checkpoint import (ARRAYS_PATTERN, CKPT_NAME, LEGACY_NAME, CheckpointError,
                         load_checkpoint, load_state, save_checkpoint)

TRUST_FLAG = "--i-trust-this-file"

# What a pickled dict of NumPy arrays, ints, floats and strings refers to (NumPy 1 and 2 names).
_ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"),
            ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "scalar"), ("numpy.core.multiarray", "scalar"),
            ("numpy._core.numeric", "_frombuffer"), ("numpy.core.numeric", "_frombuffer")}


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """An unpickler that refuses every global except NumPy's array and scalar rebuilders."""

    def find_class(self, module, name):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"it asks for {module}.{name}, which no tinysparse "
                                         f"checkpoint holds")
        return super().find_class(module, name)


def _unpickle_trusted(path):
    """The object in the pickle at `path`; only ever called after the user's consent."""
    with open(path, "rb") as fh:
        data = fh.read()
    try:
        return _ArraysOnlyUnpickler(io.BytesIO(data)).load()
    except Exception as e:          # truncated, garbled, or asks for code: never partly used
        raise CheckpointError(f"{path} cannot be converted ({' '.join(str(e).split())}); it "
                              f"is not an old tinysparse checkpoint: train anew") from None


def _skeleton(model_config):
    """A model built (not trained) from the config, to learn its parameter names and shapes;
    the global generator is put back afterwards."""
    saved = ts_random.get_state()
    try:
        return GPT(GPTConfig(**model_config))
    finally:
        ts_random.set_state(saved)


def _new_format(old, legacy):
    """The dict save_checkpoint takes, from the dict the old TrainingRun.save pickled."""
    model = _skeleton(old["model_config"])
    own = {n: tuple(t.shape) for n, t in [*model.named_parameters(), *model.named_buffers()]}
    if {n: tuple(a.shape) for n, a in old["model"].items()} != own:
        raise CheckpointError(f"{legacy}: its arrays do not fit its model_config; train anew")
    params = [name for name, _ in model.named_parameters()]     # the optimizer's order
    return {"model": old["model"], "optimizer": {**old["optimizer"], "params": params},
            "model_config": old["model_config"], "train_config": old["train_config"],
            "step": old["step"], "rng": old["rng"], "sampler": old["sampler"],
            "best_val_loss": old["best_val_loss"], "val_loss": old.get("val_loss"),
            "history": list(old["history"])}


def convert_checkpoint(run_dir, trust=False):
    """Convert run_dir/ckpt.pkl into run_dir/ckpt.json + its arrays file; returns the new
    checkpoint's path. Refuses (CheckpointError) without trust=True, when there is nothing to
    convert, or when the pickle is not an old tinysparse checkpoint."""
    legacy = os.path.join(run_dir, LEGACY_NAME)
    if not os.path.isfile(legacy):
        raise CheckpointError(f"no old checkpoint at {legacy}; convert-checkpoint converts the "
                              f"{LEGACY_NAME} of a run folder: pass that folder as --out-dir")
    if os.path.exists(os.path.join(run_dir, CKPT_NAME)):
        raise CheckpointError(f"{run_dir} already has a checkpoint in the new format "
                              f"({CKPT_NAME}); nothing to convert (delete {CKPT_NAME} and its "
                              f"arrays file first to convert {LEGACY_NAME} anyway)")
    if not trust:
        raise CheckpointError(f"{legacy} is a pickle, and reading a pickle can run any code in "
                              f"it; convert it only if you made it yourself, by adding "
                              f"{TRUST_FLAG} (a checkpoint from anyone else: train anew)")
    old = _unpickle_trusted(legacy)
    try:
        path = save_checkpoint(run_dir, _new_format(old, legacy))   # fails before any write
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{legacy} is not an old tinysparse checkpoint ({type(e).__name__}: "
                              f"{' '.join(str(e).split())}); train anew") from None
    try:
        load_state(load_checkpoint(run_dir), _skeleton(old["model_config"]))   # every check
    except CheckpointError:
        for name in os.listdir(run_dir):                # leave the folder as it was
            if name == CKPT_NAME or ARRAYS_PATTERN.fullmatch(name):
                os.unlink(os.path.join(run_dir, name))
        raise
    return path
