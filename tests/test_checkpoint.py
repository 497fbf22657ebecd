"""Checkpoint files (tinysparse/training/checkpoint.py, checkpoint_schema.py, convert.py): the
safetensors + JSON format, the atomic two-file commit, the refusals, and that no file a user may
receive is ever unpickled.

Every run here is a 1-layer, 16-wide GPT on a 20 kB synthetic corpus (milliseconds a step).
"""
import json
import os
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import pytest

from checkpoint_helpers import KINDS, arrays_path
from tinysparse.engine import random as ts_random
from tinysparse.training import load_run
from tinysparse.training import atomic
from tinysparse.training import checkpoint as ckpt_module
from tinysparse.training.checkpoint import CKPT_NAME, load_checkpoint, save_checkpoint
from tinysparse.training.checkpoint_schema import bitgen_from_json, bitgen_to_json
from tinysparse.training.data import BatchSampler, load_corpus


# ----------------------------------------------------------------------------- round trip

@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_is_exact_for_every_model_kind(ckpt_runs, tmp_path, kind):
    loaded = load_checkpoint(str(ckpt_runs[kind]))
    assert loaded["step"] == 4 and loaded["optimizer"]["step_count"] == 4
    biases = [n for n in loaded["model"] if n.endswith("router.bias")]
    assert bool(biases) == (kind == "moe-bias")                # buffers are saved too
    save_checkpoint(str(tmp_path), loaded)                     # save what was loaded ...
    again = load_checkpoint(str(tmp_path))                     # ... and it comes back exactly
    for key in ("step", "model_config", "train_config", "rng", "sampler", "best_val_loss",
                "val_loss", "history"):
        assert again[key] == loaded[key], key
    for name, a in loaded["model"].items():
        assert a.dtype == again["model"][name].dtype and np.array_equal(a, again["model"][name])
    for slot in ("m", "v"):
        assert all(np.array_equal(x, y) for x, y in zip(loaded["optimizer"][slot],
                                                        again["optimizer"][slot]))
    model, _, _ = load_run(str(tmp_path))
    original, _, _ = load_run(str(ckpt_runs[kind]))
    idx = np.random.default_rng(0).integers(0, 256, size=(2, 16))
    assert np.array_equal(model(idx)[0].data, original(idx)[0].data)


def test_generator_states_round_trip_exactly_through_json():
    ts_random.manual_seed(5)
    ts_random.generator().random(3, dtype=np.float32)          # leaves a buffered 32-bit half
    corpus = load_corpus("synthetic", 16, 20_000)
    sampler = BatchSampler(corpus, 4, 16, seed=3)
    sampler.train_batch()
    states = [ts_random.get_state(), *sampler.state_dict().values()]
    assert states[0]["has_uint32"] == 1 and states[0]["state"]["state"] > 2 ** 64
    for state in states:
        text = json.dumps(bitgen_to_json(state))
        assert bitgen_from_json(json.loads(text), "f", "rng") == state
    ts_random.set_state(bitgen_from_json(json.loads(json.dumps(bitgen_to_json(states[0]))),
                                         "f", "rng"))
    after = ts_random.generator().random(5)
    ts_random.set_state(states[0])
    assert np.array_equal(after, ts_random.generator().random(5))


# ----------------------------------------------------------------------------- atomic

def test_a_crash_between_the_two_writes_keeps_the_previous_checkpoint(ckpt_run, monkeypatch):
    before = load_checkpoint(str(ckpt_run))
    newer = {**before, "step": 99, "model": {k: a + 1 for k, a in before["model"].items()}}

    def crash(run_dir, text):
        raise OSError(28, "No space left on device")    # the arrays are written, ckpt.json not

    monkeypatch.setattr(ckpt_module, "_commit", crash)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(str(ckpt_run), newer)
    monkeypatch.undo()
    orphans = sorted(p.name for p in ckpt_run.glob("ckpt-000099-*.safetensors"))
    assert len(orphans) == 1                    # the new arrays are on disk, but never paired
    after = load_checkpoint(str(ckpt_run))      # with the old metadata: the old checkpoint loads
    assert after["step"] == before["step"]
    assert all(np.array_equal(after["model"][k], a) for k, a in before["model"].items())
    save_checkpoint(str(ckpt_run), newer)       # the next save cleans up
    assert load_checkpoint(str(ckpt_run))["step"] == 99
    names = sorted(p.name for p in ckpt_run.iterdir())
    assert [n for n in names if n.endswith(".safetensors")] == orphans
    assert not any(n.endswith(".tmp") for n in names)


def test_a_crash_while_writing_the_arrays_leaves_no_trace(ckpt_run, monkeypatch):
    before = sorted(os.listdir(ckpt_run))
    real_write = ckpt_module.atomic_write

    def write_half(path, write_fn, mode="wb"):
        def half(fh):
            fh.write(b"half an array")
            raise KeyboardInterrupt             # Ctrl-C mid-write
        return real_write(path, half, mode)

    monkeypatch.setattr(ckpt_module, "atomic_write", write_half)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(str(ckpt_run), {**load_checkpoint(str(ckpt_run)), "step": 7})
    monkeypatch.undo()
    assert sorted(os.listdir(ckpt_run)) == before and load_checkpoint(str(ckpt_run))["step"] == 4


SAVE_FOREVER = """
import sys
import numpy as np
from tinysparse.training.checkpoint import load_checkpoint, save_checkpoint
base = load_checkpoint(sys.argv[1])
for i in range(1, 10 ** 6):     # every array of checkpoint i holds the number i
    save_checkpoint(sys.argv[1], {**base, "step": i,
                                  "model": {k: np.full_like(a, i) for k, a in base["model"].items()}})
    if i == 1:
        print("saved", flush=True)
"""


@pytest.mark.skipif(os.name != "posix", reason="kills a process with SIGKILL")
@pytest.mark.parametrize("delay", [0.05, 0.2, 0.5])
def test_a_process_killed_while_saving_leaves_a_consistent_checkpoint(ckpt_run, delay):
    proc = subprocess.Popen([sys.executable, "-c", SAVE_FOREVER, str(ckpt_run)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "saved"     # then killed amid later saves
        time.sleep(delay)
    finally:
        proc.send_signal(signal.SIGKILL)        # no cleanup, no finally: as in a power cut
        proc.wait()
    ckpt = load_checkpoint(str(ckpt_run))
    assert ckpt["step"] >= 1
    for name, a in ckpt["model"].items():       # the arrays are that step's own
        assert np.all(a == ckpt["step"]), name


def test_leftovers_of_a_killed_process_are_ignored_then_removed(ckpt_run):
    (ckpt_run / ".ckpt.json.x1y2.tmp").write_text('{"format": "half')
    (ckpt_run / ".ckpt-000009-0123456789ab.safetensors.k3.tmp").write_bytes(b"\0" * 10)
    (ckpt_run / "ckpt-000009-0123456789ab.safetensors").write_bytes(b"never committed")
    loaded = load_checkpoint(str(ckpt_run))
    assert loaded["step"] == 4
    save_checkpoint(str(ckpt_run), loaded)
    assert sorted(os.listdir(ckpt_run)) == sorted([CKPT_NAME, arrays_path(ckpt_run).name,
                                                   "config.json", "log.jsonl"])


def test_a_save_that_json_cannot_hold_writes_nothing(ckpt_run):
    before = {p.name: p.read_bytes() for p in ckpt_run.iterdir()}
    bad = {**load_checkpoint(str(ckpt_run)), "step": 8, "train_config": {"data": object()}}
    with pytest.raises(TypeError):
        save_checkpoint(str(ckpt_run), bad)
    assert {p.name: p.read_bytes() for p in ckpt_run.iterdir()} == before


# ----------------------------------------------------------------------------- durability

@pytest.fixture
def disk_events(monkeypatch):
    """Every os.fsync and os.replace of the test, in order, with what was on disk at the time:
    ("fsync", inode, bytes on disk, is a folder) and ("replace", inode, bytes, target name);
    .temporaries: the names of the files renamed."""

    class Events(list):
        pass

    events, real_fsync, real_replace = Events(), os.fsync, os.replace

    def fsync(fd):
        st = os.fstat(fd)
        events.append(("fsync", st.st_ino, st.st_size, stat.S_ISDIR(st.st_mode)))
        real_fsync(fd)

    def replace(src, dst):
        st = os.stat(src)
        events.append(("replace", st.st_ino, st.st_size, os.path.basename(dst)))
        temporaries.append((src, dst))
        real_replace(src, dst)

    temporaries = []

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    events.temporaries = temporaries
    return events


def test_each_file_is_flushed_and_fsynced_before_its_rename_then_the_folder(ckpt_run, disk_events):
    save_checkpoint(str(ckpt_run), {**load_checkpoint(str(ckpt_run)), "step": 9})
    renames = [i for i, e in enumerate(disk_events) if e[0] == "replace"]
    assert [disk_events[i][3][:12] for i in renames] == ["ckpt-000009-", CKPT_NAME]  # arrays first
    previous = -1
    for i in renames:
        _, inode, size, _ = disk_events[i]
        synced = disk_events[previous + 1:i]
        # the temporary file itself, with every byte on disk (a missing flush leaves them in
        # Python's buffer: fewer bytes), is fsynced before the rename makes it the real file
        assert ("fsync", inode, size, False) in synced
        # ... and the folder right after, so that the rename survives a power cut
        assert disk_events[i + 1][0] == "fsync" and disk_events[i + 1][3]
        previous = i + 1
    assert len(disk_events) == 3 * len(renames)      # nothing else: one file fsync, one folder fsync
    # the temporaries are hidden, next to their file (the rename stays on one file system), named
    # as the next save cleans up after a kill
    for src, dst in disk_events.temporaries:
        assert os.path.dirname(os.path.abspath(src)) == os.path.dirname(os.path.abspath(dst))
        name = os.path.basename(src)
        assert name.startswith("." + os.path.basename(dst) + ".") and name.endswith(".tmp")
        assert ckpt_module.TEMP_PATTERN.fullmatch(name)


def test_small_files_are_written_the_same_way(tmp_path, disk_events):
    atomic.save_json(str(tmp_path / "config.json"), {"a": 1})
    (tmp_path / "log.jsonl").write_text('{"step": 0}\n{"step": 5}\n')
    atomic.truncate_log(str(tmp_path / "log.jsonl"), 0)
    sizes = {"config.json": len('{\n  "a": 1\n}\n'), "log.jsonl": len('{"step": 0}\n')}
    for i, event in enumerate(disk_events):
        if event[0] == "replace":
            assert event[2] == sizes[event[3]]
            assert ("fsync", event[1], event[2], False) == disk_events[i - 1]
            assert disk_events[i + 1][0] == "fsync" and disk_events[i + 1][3]
    assert json.loads((tmp_path / "config.json").read_text()) == {"a": 1}
    assert (tmp_path / "log.jsonl").read_text() == '{"step": 0}\n'


@pytest.mark.parametrize("umask, mode", [(0o027, 0o640), (0o002, 0o664)])
def test_a_checkpoint_file_gets_a_normal_files_mode_and_the_umask_is_kept(ckpt_run, umask, mode):
    old = os.umask(umask)
    try:
        save_checkpoint(str(ckpt_run), load_checkpoint(str(ckpt_run)))
        assert os.umask(umask) == umask                  # reading the umask put it back
    finally:
        os.umask(old)
    for path in (ckpt_run / CKPT_NAME, arrays_path(ckpt_run)):
        assert stat.S_IMODE(path.stat().st_mode) == mode, path     # 0o666 & ~umask, not 0o600


def test_truncating_the_log_keeps_the_lines_up_to_a_step(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text('{"step": 0}\n\n{"note": "no step"}\n{"step": 5}\n{"step": 10}\n')
    atomic.truncate_log(str(log), 5)                 # a resume from step 5
    assert log.read_text() == '{"step": 0}\n{"note": "no step"}\n{"step": 5}\n'
    atomic.truncate_log(str(log), 0)                 # from step 0; a line without one counts as 0
    assert log.read_text() == '{"step": 0}\n{"note": "no step"}\n'
    atomic.truncate_log(str(log), -1)                # a new run: nothing is kept
    assert log.read_text() == ""
    atomic.truncate_log(str(tmp_path / "none.jsonl"), 3)     # no log yet: nothing to do
    assert not (tmp_path / "none.jsonl").exists()


def test_a_folder_that_cannot_be_opened_or_synced_does_not_stop_a_save(ckpt_run, monkeypatch):
    # Windows cannot open a folder, some file systems refuse to fsync one: the save goes on
    real_open, real_fsync, closed = os.open, os.fsync, []

    def open_no_folder(path, flags, *args, **kwargs):
        if os.path.isdir(path) and not closed:
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, flags, *args, **kwargs)

    def fsync_files_only(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(22, "Invalid argument")
        real_fsync(fd)

    monkeypatch.setattr(os, "open", open_no_folder)
    save_checkpoint(str(ckpt_run), {**load_checkpoint(str(ckpt_run)), "step": 5})
    closed.append(True)                              # folders open again, fsync refuses them
    monkeypatch.setattr(os, "fsync", fsync_files_only)
    fds = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    save_checkpoint(str(ckpt_run), {**load_checkpoint(str(ckpt_run)), "step": 6})
    if fds is not None:
        assert len(os.listdir("/proc/self/fd")) == fds             # the folder's fd is closed
    assert load_checkpoint(str(ckpt_run))["step"] == 6
