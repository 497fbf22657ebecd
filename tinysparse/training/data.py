"""Data: a byte tokenizer, three corpora and a batch sampler.

Nothing here downloads anything. The corpora are
  * ``stdlib``     the Python standard library's own source (default: real text on every machine),
  * ``file:PATH``  any text file the user names,
  * ``synthetic``  generated tasks (copy, reverse, sort, add) of mixed difficulty, so that routers
                   and adaptive compute have something to specialise on.
Tokens are bytes (vocab_size 256): no tokenizer to train, and any file round-trips exactly.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..engine.backend import array_module, to_device
from .corpora import DataError, SyntheticTasks, load_stdlib, read_text_file, stdlib_root

VOCAB_SIZE = 256
SYNTHETIC_BYTES = 220_000       # default synthetic corpus size: ~200k train + ~20k val
CORPUS_FORMS = "stdlib | file:PATH | synthetic"


# ----------------------------------------------------------------------------- tokenizer

class ByteTokenizer:
    """Token id = byte value. Text is UTF-8, so any string (and any byte string) is encodable."""

    vocab_size = VOCAB_SIZE

    def encode(self, text: str | bytes) -> np.ndarray:
        """str (UTF-8 encoded) or bytes -> int64 array of token ids in [0, 256).

        A str that carries bytes which are not UTF-8 as surrogate escapes (what os.fsdecode and
        sys.argv make of them on POSIX) encodes back to those bytes: the tokens are bytes, so
        every byte string is a valid input."""
        data = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else bytes(text)
        return np.frombuffer(data, dtype=np.uint8).astype(np.int64)

    def decode_bytes(self, ids) -> bytes:
        """Token ids -> the exact bytes. Inverse of encode() for any bytes."""
        ids = np.asarray(ids)
        # Refuse ids outside a byte instead of silently wrapping 256 -> 0.
        if ids.size and (ids.min() < 0 or ids.max() >= VOCAB_SIZE):
            raise ValueError(f"token ids must be in [0, {VOCAB_SIZE}); got {ids.min()}..{ids.max()}")
        return ids.astype(np.uint8).tobytes()

    def decode(self, ids) -> str:
        """Token ids -> text. A model may emit invalid UTF-8 (half a character), so bad bytes
        become U+FFFD instead of raising."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")


# ----------------------------------------------------------------------------- corpus

@dataclass
class Corpus:
    """Token ids of a training and a validation split. Stored as uint8 (1 byte per token:
    4 MB of text is 4 MB of memory); get_batch hands out int64."""

    name: str
    train: np.ndarray
    val: np.ndarray
    vocab_size: int = VOCAB_SIZE
    meta: dict = field(default_factory=dict)   # e.g. the stdlib file list

    @property
    def n_train_tokens(self) -> int:
        return int(len(self.train))

    @property
    def n_val_tokens(self) -> int:
        return int(len(self.val))

    def __repr__(self) -> str:
        return f"Corpus({self.name!r}, train={len(self.train):,}, val={len(self.val):,} tokens)"


def _split(data: np.ndarray, val_fraction: float, block_size: int, name: str) -> tuple:
    """Fixed split: the LAST val_fraction of the tokens is validation (no shuffling, so val text
    never leaks into train). Each part must hold one block plus its target: block_size+1 tokens."""
    need = block_size + 1
    n_val = max(int(round(len(data) * val_fraction)), need)
    if len(data) - n_val < need:
        raise DataError(f"{name} has {len(data):,} bytes, too few to split into train and val of "
                        f"at least block_size+1 = {need} bytes each (needs {2 * need:,}); "
                        f"use a smaller --block-size or a bigger file")
    return data[:-n_val], data[-n_val:]


def _to_tokens(raw: bytes) -> np.ndarray:
    return np.frombuffer(raw, dtype=np.uint8).copy()   # copy: frombuffer's view is read-only


# ----------------------------------------------------------------------------- load_corpus

def load_corpus(spec: str, block_size: int, max_bytes: int | None = None,
                val_fraction: float = 0.1, seed: int = 0) -> Corpus:
    """Build the corpus that ``--data SPEC`` names: "stdlib", "file:PATH" or "synthetic".

    max_bytes caps the total size (stdlib default 4 MB, synthetic default ~220 kB, a file: whole).
    The split is fixed: the last val_fraction of the bytes is validation.
    """
    if not isinstance(block_size, (int, np.integer)) or block_size < 1:
        raise DataError(f"--block-size must be a positive integer, got {block_size!r}")
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    if max_bytes is not None and max_bytes < 1:
        raise DataError(f"--max-bytes must be positive, got {max_bytes}")

    if spec == "stdlib":
        raw, files = load_stdlib(max_bytes)
        train, val = _split(_to_tokens(raw), val_fraction, block_size, "the stdlib corpus")
        return Corpus("stdlib", train, val, meta={"root": stdlib_root(), "files": files})

    if spec.startswith("file:"):
        path = spec[len("file:"):]
        if not path:
            raise DataError("--data file: needs a path, e.g. --data file:notes.txt")
        data = _to_tokens(read_text_file(path, max_bytes))
        need = block_size + 1
        if len(data) < need:
            raise DataError(f"{path} has {len(data):,} bytes, but one block plus its target needs "
                            f"block_size+1 = {need} (and {2 * need} to also have a val split); "
                            f"use a smaller --block-size or a bigger file")
        train, val = _split(data, val_fraction, block_size, path)
        return Corpus(f"file:{path}", train, val, meta={"path": path})

    if spec == "synthetic":
        tasks = SyntheticTasks()
        total = SYNTHETIC_BYTES if max_bytes is None else max_bytes
        n_val = max(int(total * val_fraction), block_size + 1)
        # Train and val come from two independent streams of one SeedSequence: no seed+1 overlap
        # (seed 0's val is not seed 1's train), and val is freshly generated, not a tail of train.
        ss_train, ss_val = np.random.SeedSequence(seed).spawn(2)
        train = _to_tokens(tasks.text(total - n_val, np.random.default_rng(ss_train)))
        val = _to_tokens(tasks.text(n_val, np.random.default_rng(ss_val)))
        if len(train) < block_size + 1:
            raise DataError(f"synthetic corpus of {total:,} bytes is too small for block_size "
                            f"{block_size}; raise max_bytes or lower --block-size")
        return Corpus("synthetic", train, val, meta={"tasks": tasks.tasks, "seed": seed})

    raise DataError(f"unknown --data {spec!r}; valid forms: {CORPUS_FORMS}")


# ----------------------------------------------------------------------------- batches

def get_batch(data: np.ndarray, batch_size: int, block_size: int,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """batch_size random windows: x = data[i : i+T], y = data[i+1 : i+T+1] (next-token targets).

    The last valid start is len(data) - block_size - 1 (y's last token is then data[-1]);
    rng.integers excludes its upper bound, so the bound is len(data) - block_size.
    """
    n = len(data)
    if n < block_size + 1:
        raise DataError(f"data has {n} tokens; block_size {block_size} needs at least {block_size + 1}")
    starts = rng.integers(0, n - block_size, size=batch_size)
    idx = starts[:, None] + np.arange(block_size)                 # (B, T) positions
    x = data[idx].astype(np.int64)
    y = data[idx + 1].astype(np.int64)
    return x, y


def get_device_batch(data, batch_size: int, block_size: int, rng: np.random.Generator):
    """get_batch's windows from a corpus already on a GPU (`data`: a CuPy uint8 array): the same
    starts from the same generator, so the same tokens as on the CPU, but only the B starts cross
    to the device; the windows are cut there. x and y are uint8 (B, T): a byte is a token, and a
    uint8 id cannot be out of range for 256 tokens, so the model checks none of them (which on a
    GPU would wait for the device; nn.check_ids)."""
    n = data.shape[0]
    if n < block_size + 1:
        raise DataError(f"data has {n} tokens; block_size {block_size} needs at least {block_size + 1}")
    starts = rng.integers(0, n - block_size, size=batch_size)    # the host generator, as get_batch
    xp = array_module(data)
    idx = xp.asarray(starts)[:, None] + xp.arange(block_size + 1)  # (B, T+1) positions
    window = data[idx]                                              # (B, T+1) uint8
    return window[:, :-1], window[:, 1:]


class BatchSampler:
    """Draws train and val batches from a Corpus with two separate generators, so evaluating
    (any number of val batches) never changes which train batches come next.

    device 'cuda': the corpus is copied to the GPU once, at the first batch of each split, and
    batches are cut there (get_device_batch): the same tokens as on the CPU, as uint8."""

    def __init__(self, corpus: Corpus, batch_size: int, block_size: int, seed: int = 0,
                 device: str = "cpu"):
        self.corpus, self.batch_size, self.block_size = corpus, batch_size, block_size
        self.device = device
        self._on_device = {}                   # split -> the split's tokens on the device
        ss_train, ss_val = np.random.SeedSequence(seed).spawn(2)
        self.train_rng = np.random.default_rng(ss_train)
        self.val_rng = np.random.default_rng(ss_val)

    def _batch(self, split, rng):
        data = getattr(self.corpus, split)
        if self.device == "cpu":
            return get_batch(data, self.batch_size, self.block_size, rng)
        if split not in self._on_device:       # uploaded once
            self._on_device[split] = to_device(data, self.device)
        return get_device_batch(self._on_device[split], self.batch_size, self.block_size, rng)

    def train_batch(self) -> tuple[np.ndarray, np.ndarray]:
        return self._batch("train", self.train_rng)

    def val_batch(self) -> tuple[np.ndarray, np.ndarray]:
        return self._batch("val", self.val_rng)

    def state_dict(self) -> dict:
        """The generators' exact positions (PCG64 state dicts of ints and strings; checkpoints
        write them as JSON, checkpoint_schema.bitgen_to_json), so a resumed run draws
        bit-identical batches."""
        return {"train": self.train_rng.bit_generator.state,
                "val": self.val_rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.train_rng.bit_generator.state = state["train"]
        self.val_rng.bit_generator.state = state["val"]
