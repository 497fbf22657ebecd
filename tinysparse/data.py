"""Data: a byte tokenizer, three corpora and a batch sampler.

Nothing here downloads anything. The corpora are
  * ``stdlib``     the Python standard library's own source (default: real text on every machine),
  * ``file:PATH``  any text file the user names,
  * ``synthetic``  generated tasks (copy, reverse, sort, add) of mixed difficulty, so that routers
                   and adaptive compute have something to specialise on.
Tokens are bytes (vocab_size 256): no tokenizer to train, and any file round-trips exactly.
"""
from __future__ import annotations

import os
import sysconfig
from dataclasses import dataclass, field

import numpy as np

VOCAB_SIZE = 256
STDLIB_MAX_BYTES = 4_000_000    # default cap for the stdlib corpus (~4 MB of Python)
SYNTHETIC_BYTES = 220_000       # default synthetic corpus size: ~200k train + ~20k val
CORPUS_FORMS = "stdlib | file:PATH | synthetic"


class DataError(ValueError):
    """Bad user input about data: the one-line message names the problem and the fix.

    The CLI prints it without a traceback, so messages must stand on their own.
    """


# ----------------------------------------------------------------------------- tokenizer

class ByteTokenizer:
    """Token id = byte value. Text is UTF-8, so any string (and any byte string) is encodable."""

    vocab_size = VOCAB_SIZE

    def encode(self, text: str | bytes) -> np.ndarray:
        """str (UTF-8 encoded) or bytes -> int64 array of token ids in [0, 256)."""
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
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


# ----------------------------------------------------------------------------- stdlib corpus

_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3", "__pycache__",
              "encodings", "pydoc_data"}


def _skip_dir(name: str) -> bool:
    # Tests are huge and repetitive; idlelib/lib2to3 are apps, not library code; *venv* and
    # site-packages hold whatever the user installed, which would make the corpus machine-dependent.
    # encodings/ (generated codec tables) and pydoc_data/ (one huge string of docs) are data, not
    # code: they filled a fifth of the corpus and, sorted last, the whole validation split.
    return name in _SKIP_DIRS or "venv" in name


def stdlib_root() -> str:
    return sysconfig.get_paths()["stdlib"]


def stdlib_files(root: str | None = None) -> list[str]:
    """The stdlib's .py files as sorted relative POSIX paths. Sorting makes the corpus the same
    on every run regardless of the order the file system lists directories in."""
    root = root or stdlib_root()
    paths = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not _skip_dir(d)]   # prune: os.walk won't enter them
        for f in filenames:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(dirpath, f), root)
                paths.append(rel.replace(os.sep, "/"))
    return sorted(paths)


def load_stdlib(max_bytes: int | None = STDLIB_MAX_BYTES, root: str | None = None) -> tuple:
    """Concatenate stdlib files, each under a "# ---- path ----" header (so samples look like
    files), until max_bytes is reached. Returns (bytes, list of files used)."""
    root = root or stdlib_root()
    cap = STDLIB_MAX_BYTES if max_bytes is None else max_bytes
    chunks, used, total = [], [], 0
    for rel in stdlib_files(root):
        try:
            with open(os.path.join(root, rel), "rb") as fh:
                text = fh.read()
        except OSError:
            continue          # an unreadable file is skipped, the same way on every run
        if not text.endswith(b"\n"):
            text += b"\n"
        chunk = b"# ---- " + rel.encode() + b" ----\n" + text + b"\n"
        chunks.append(chunk)
        used.append(rel)
        total += len(chunk)
        if total >= cap:
            break
    if not chunks:
        raise DataError(f"no Python source found under {root}; use --data file:PATH or --data synthetic")
    return b"".join(chunks)[:cap], used


# ----------------------------------------------------------------------------- file corpus

def read_text_file(path: str, max_bytes: int | None = None) -> bytes:
    """Read a user's file, turning every OS failure into a DataError that says what to do."""
    shown = path
    path = os.path.expanduser(path)
    if not os.path.exists(path):
        raise DataError(f"{shown}: no such file; check the path (relative to {os.getcwd()})")
    if os.path.isdir(path):
        raise DataError(f"{shown} is a directory; name a text file, e.g. --data file:{shown}/notes.txt")
    try:
        with open(path, "rb") as fh:
            raw = fh.read() if max_bytes is None else fh.read(max_bytes)
    except PermissionError:
        raise DataError(f"{shown}: permission denied; make it readable (chmod +r) or copy it") from None
    except OSError as e:
        raise DataError(f"{shown}: cannot read ({e.strerror}); name a regular readable text file") from None
    if not raw:
        raise DataError(f"{shown} is empty; name a file that has text in it")
    return raw


# ----------------------------------------------------------------------------- synthetic tasks

class SyntheticTasks:
    """Algorithmic tasks as text, one example a line: ``copy:abc=abc``, ``rev:abc=cba``,
    ``sort:3142=1234``, ``add:123+45=168``. Lengths/digit counts are drawn from
    [min_len, max_len], so difficulty varies from example to example."""

    TASKS = ("copy", "rev", "sort", "add")
    LETTERS = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    DIGITS = np.array(list("0123456789"))

    def __init__(self, tasks=TASKS, min_len: int = 1, max_len: int = 8):
        unknown = set(tasks) - set(self.TASKS)
        if unknown or not tasks:
            raise DataError(f"unknown synthetic tasks {sorted(unknown)}; choose from {self.TASKS}")
        if not 1 <= min_len <= max_len <= 18:       # 18: addends must fit in int64
            raise DataError(f"need 1 <= min_len <= max_len <= 18, got {min_len}, {max_len}")
        self.tasks, self.min_len, self.max_len = tuple(tasks), min_len, max_len

    def _number(self, rng) -> int:
        n_digits = int(rng.integers(self.min_len, self.max_len + 1))
        return int(rng.integers(10 ** (n_digits - 1) if n_digits > 1 else 0, 10 ** n_digits))

    def _one(self, task: str, rng) -> str:
        if task == "add":
            return f"add:{self._number(rng)}+{self._number(rng)}="
        n = int(rng.integers(self.min_len, self.max_len + 1))
        alphabet = self.DIGITS if task == "sort" else self.LETTERS
        return f"{task}:{''.join(rng.choice(alphabet, size=n))}="

    def generate(self, n: int, rng: np.random.Generator) -> list[tuple[str, str]]:
        """n (prompt, answer) pairs; the prompt ends with '=', the answer has no newline."""
        picks = rng.integers(0, len(self.tasks), size=n)
        prompts = [self._one(self.tasks[i], rng) for i in picks]
        return [(p, self.solve(p)) for p in prompts]

    @staticmethod
    def solve(prompt: str) -> str:
        """The correct answer, computed from the prompt alone (the reference for grading)."""
        task, _, arg = prompt.rstrip("=").partition(":")
        if task == "copy":
            return arg
        if task == "rev":
            return arg[::-1]
        if task == "sort":
            return "".join(sorted(arg))
        if task == "add":
            a, b = arg.split("+")
            return str(int(a) + int(b))
        raise ValueError(f"not a synthetic prompt: {prompt!r}")

    def text(self, n_bytes: int, rng: np.random.Generator) -> bytes:
        """Whole example lines ("prompt" + "answer\\n") until about n_bytes."""
        lines, total = [], 0
        while total < n_bytes:
            for p, a in self.generate(256, rng):
                line = f"{p}{a}\n"
                lines.append(line)
                total += len(line)
                if total >= n_bytes:
                    break
        return "".join(lines).encode("ascii")


def exact_match_accuracy(model_answer_fn, examples: list[tuple[str, str]]) -> dict:
    """Grade a model on (prompt, answer) pairs. model_answer_fn(list of prompts) -> list of answer
    strings. Returns {"overall": acc, "<task>": acc, ...}; surrounding whitespace (e.g. the
    newline that ends a generated line) is ignored, otherwise the answer must match exactly."""
    if not examples:
        raise ValueError("exact_match_accuracy needs at least one example")
    prompts = [p for p, _ in examples]
    answers = list(model_answer_fn(prompts))
    if len(answers) != len(examples):
        raise ValueError(f"model_answer_fn returned {len(answers)} answers for {len(examples)} prompts")
    hits: dict[str, list[bool]] = {}
    for (p, truth), got in zip(examples, answers):
        hits.setdefault(p.partition(":")[0], []).append(str(got).strip() == truth)
    result = {"overall": float(np.mean([h for v in hits.values() for h in v]))}
    result.update({task: float(np.mean(v)) for task, v in sorted(hits.items())})
    return result


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


class BatchSampler:
    """Draws train and val batches from a Corpus with two separate generators, so evaluating
    (any number of val batches) never changes which train batches come next."""

    def __init__(self, corpus: Corpus, batch_size: int, block_size: int, seed: int = 0):
        self.corpus, self.batch_size, self.block_size = corpus, batch_size, block_size
        ss_train, ss_val = np.random.SeedSequence(seed).spawn(2)
        self.train_rng = np.random.default_rng(ss_train)
        self.val_rng = np.random.default_rng(ss_val)

    def train_batch(self) -> tuple[np.ndarray, np.ndarray]:
        return get_batch(self.corpus.train, self.batch_size, self.block_size, self.train_rng)

    def val_batch(self) -> tuple[np.ndarray, np.ndarray]:
        return get_batch(self.corpus.val, self.batch_size, self.block_size, self.val_rng)

    def state_dict(self) -> dict:
        """The generators' exact positions (plain dicts of ints/strings: picklable, JSON-able),
        so a resumed run draws bit-identical batches."""
        return {"train": self.train_rng.bit_generator.state,
                "val": self.val_rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.train_rng.bit_generator.state = state["train"]
        self.val_rng.bit_generator.state = state["val"]
