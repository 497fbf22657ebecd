"""Where the text comes from: the Python standard library's source, a user's file, or generated
algorithmic tasks (copy, reverse, sort, add). data.py turns their bytes into a Corpus and batches.
Nothing here downloads anything.
"""
from __future__ import annotations

import os
import sysconfig

import numpy as np

STDLIB_MAX_BYTES = 4_000_000    # default cap for the stdlib corpus (~4 MB of Python)


class DataError(ValueError):
    """Bad user input about data: the one-line message names the problem and the fix.

    The CLI prints it without a traceback, so messages must stand on their own.
    """


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
