"""What GPT.forward and generate accept: token ids (B, T) and targets, checked before any compute.

A bad id would not fail on its own: NumPy reads -1 as the last row of the embedding table, and a
transposed (T, B) target array has the right size. So each is refused here with a one-line
ValueError that names the argument, the bad value or shape, and the fix.
"""
import numpy as np

from . import nn
from ._checks import check_int
from .engine.tensor import Tensor


def checked_ids(config, what, idx):
    """idx as an integer array (B, T) with 1 <= T <= block_size (any T >= 1 for generate's
    "prompt") and every id in [0, vocab_size). Checked where the array is (on the host for
    NumPy input, before any copy to a GPU)."""
    idx = idx.data if isinstance(idx, Tensor) else idx
    if not hasattr(idx, "dtype"):
        idx = np.asarray(idx)
    if idx.ndim != 2:
        fix = "; add a batch axis: idx[None, :]" if idx.ndim == 1 else ""
        raise ValueError(f"GPT {what} must be a 2-D array (B, T) of token ids, got shape "
                         f"{tuple(idx.shape)}{fix}")
    T = idx.shape[1]
    if T > config.block_size and what != "prompt":   # generate crops a long prompt
        raise ValueError(f"sequence length {T} exceeds block_size {config.block_size}")
    if T == 0:
        need = ("generate needs a prompt of at least one token" if what == "prompt"
                else "a sequence needs at least one")
        raise ValueError(f"GPT {what} has shape {tuple(idx.shape)}: no tokens; {need}")
    nn.check_ids(f"GPT {what}", idx, config.vocab_size, n_name="vocab_size=")
    return idx


def checked_targets(config, targets, shape, ignore_index):
    """targets as an integer array of idx's shape, every id in [0, vocab_size) or equal to
    ignore_index (None, or an integer outside that range: -1, -100)."""
    targets = targets.data if isinstance(targets, Tensor) else targets
    if not hasattr(targets, "dtype"):
        targets = np.asarray(targets)
    if tuple(targets.shape) != tuple(shape):      # a transposed (T, B) would be read silently
        raise ValueError(f"GPT targets have shape {tuple(targets.shape)} but idx has "
                         f"{tuple(shape)}; they must match: targets[b, t] is the token after "
                         f"idx[b, t]")
    if ignore_index is not None:
        check_int("GPT ignore_index", ignore_index)
        if 0 <= ignore_index < config.vocab_size:
            raise ValueError(f"GPT ignore_index={ignore_index} is a real token id "
                             f"(vocab_size {config.vocab_size}): the loss would skip "
                             f"that token everywhere; use -1 or -100")
    nn.check_ids("GPT targets", targets, config.vocab_size, ignore_index, "vocab_size=",
                 fix=lambda bad: f"; to leave padding out of the loss, pass ignore_index={bad}"
                 if bad < 0 else "")
    return targets
