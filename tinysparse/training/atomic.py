"""Files of a run folder written atomically: a crash or Ctrl-C mid-write never leaves half a file.

The recipe (the same one databases use):
  1. write the new content to a temporary file in the SAME folder (same file system),
  2. flush Python's buffer and fsync, so the bytes are on disk, not just in the page cache,
  3. os.replace(tmp, path): an atomic rename, so a reader sees the old file or the new one,
     never half of each; then fsync the folder so the rename itself survives a power cut.
If anything fails before step 3 the temporary file is deleted and the old file is untouched.
A process killed outright (SIGKILL, power loss) can leave the temporary file behind: it is named
`.NAME.<random>.tmp`, never read, and checkpoint.py removes its own at the next save.

checkpoint.py builds a two-file checkpoint out of these single-file steps; log.jsonl (one JSON
line per evaluation) is appended to, and rewritten atomically when a resumed run truncates it.
"""
import hashlib
import json
import os
import tempfile


def fsync_dir(folder):
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
    fsync_dir(folder)


def save_json(path, obj):
    """Write a small JSON file atomically (indented, for people to read). A non-finite float is
    written as Python's json writes it (Infinity, NaN), which Python's json reads back exactly."""
    text = json.dumps(obj, indent=2) + "\n"
    atomic_write(path, lambda fh: fh.write(text), mode="w")


def sha256_hex(data):
    """The SHA-256 of bytes, as 64 lowercase hex digits."""
    return hashlib.sha256(data).hexdigest()


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
