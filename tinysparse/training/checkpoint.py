"""Checkpoint files, written atomically: a crash or Ctrl-C mid-write never leaves a broken file.

The recipe (the same one databases use):
  1. write the new content to a temporary file in the SAME folder (same file system),
  2. flush Python's buffer and fsync, so the bytes are on disk, not just in the page cache,
  3. os.replace(tmp, path): an atomic rename, so a reader sees the old file or the new one,
     never half of each; then fsync the folder so the rename itself survives a power cut.
If anything fails before step 3 the temporary file is deleted and the old checkpoint is untouched.

Checkpoints are pickles (dicts of NumPy arrays, ints and strings). Unpickling can run code: load
only checkpoints you made yourself, never one from a stranger.
"""
import json
import os
import pickle
import tempfile

CKPT_NAME = "ckpt.pkl"      # the checkpoint inside a run folder
CONFIG_NAME = "config.json"  # the run's configs, for people and other tools
LOG_NAME = "log.jsonl"       # one JSON line per evaluation


class CheckpointError(ValueError):
    """A checkpoint is missing or unreadable; the one-line message says what to do."""


def _fsync_dir(folder):
    """Make a rename in `folder` durable. Not every platform can open a folder (Windows): skip."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask():
    mask = os.umask(0)      # the only way to read the umask is to set it; put it straight back
    os.umask(mask)
    return mask


def atomic_write(path, write_fn, mode="wb"):
    """Create or replace `path` atomically; write_fn(file) writes the content."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as fh:
            write_fn(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())     # mkstemp makes it 0600; give it a normal file's mode
        os.replace(tmp, path)
    except BaseException:          # also KeyboardInterrupt: never leave the temporary file behind
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(folder)


def save_checkpoint(path, obj):
    """Pickle `obj` to `path` atomically (the previous file stays intact if this fails)."""
    atomic_write(path, lambda fh: pickle.dump(obj, fh, protocol=pickle.HIGHEST_PROTOCOL))


def save_json(path, obj):
    """Write a small JSON file atomically (indented, for people to read)."""
    atomic_write(path, lambda fh: fh.write(json.dumps(obj, indent=2) + "\n"), mode="w")


def append_log(path, record):
    """Add one JSON line to the run's log (log.jsonl: one line per evaluation)."""
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")


def truncate_log(path, keep_until):
    """Keep only the log lines of steps <= keep_until: a resumed run redoes the steps after its
    checkpoint, and a new run (keep_until=-1) starts an empty log."""
    if not os.path.exists(path):
        return
    with open(path) as fh:
        lines = [ln for ln in fh if ln.strip() and json.loads(ln).get("step", 0) <= keep_until]
    atomic_write(path, lambda fh: fh.writelines(lines), mode="w")


def load_checkpoint(path):
    """Load a checkpoint dict; raise CheckpointError naming the problem and the fix."""
    folder = os.path.dirname(path) or "."
    if not os.path.exists(path):
        if os.path.isdir(folder):
            where = f"the folder {folder} has no {os.path.basename(path)}"
        else:
            where = f"there is no run folder {folder}"
        raise CheckpointError(f"no checkpoint at {path} ({where}); train one first with `make train` "
                              f"(python -m tinysparse train --out-dir {folder}) or pass --out-dir "
                              f"of an existing run")
    if os.path.isdir(path):
        raise CheckpointError(f"{path} is a folder, not a checkpoint file; pass the run folder "
                              f"that contains {CKPT_NAME} as --out-dir")
    try:
        with open(path, "rb") as fh:
            obj = pickle.load(fh)
    except OSError as e:
        raise CheckpointError(f"cannot read {path} ({e.strerror}); check its permissions") from None
    except Exception as e:         # truncated, not a pickle, or a pickle of classes we lack
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(e).__name__}: {e}); "
                              f"it may be truncated or from another program: delete it and "
                              f"train again") from None
    if not isinstance(obj, dict) or "model" not in obj or "model_config" not in obj:
        raise CheckpointError(f"{path} is not a tinysparse checkpoint (no model state in it); "
                              f"delete it and train again")
    return obj
