"""Tests for tinysparse/training/data.py and corpora.py: tokenizer, corpora, synthetic tasks, batches."""
import json
import os

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tinysparse.training import corpora, data

BatchSampler, ByteTokenizer, Corpus, get_batch, load_corpus = (
    data.BatchSampler, data.ByteTokenizer, data.Corpus, data.get_batch, data.load_corpus)
DataError, SyntheticTasks, exact_match_accuracy, stdlib_files = (
    corpora.DataError, corpora.SyntheticTasks, corpora.exact_match_accuracy, corpora.stdlib_files)

tok = ByteTokenizer()


# ----------------------------------------------------------------------------- tokenizer

@given(st.binary(max_size=512))
def test_tokenizer_round_trips_any_bytes(raw):
    ids = tok.encode(raw)
    assert ids.dtype == np.int64 and ids.shape == (len(raw),)
    assert tok.decode_bytes(ids) == raw


@given(st.text(max_size=200))
def test_tokenizer_round_trips_any_str(text):
    assert tok.decode(tok.encode(text)) == text


def test_tokenizer_unicode_and_vocab():
    text = "héllo wörld — λ 猫 🐍"
    ids = tok.encode(text)
    assert len(ids) == len(text.encode("utf-8")) and ids.max() < tok.vocab_size == 256
    assert tok.decode(ids) == text
    assert tok.decode(tok.encode("🐍")[:2]) == "\ufffd"       # half a character: no exception
    with pytest.raises(ValueError):
        tok.decode([256])


# ----------------------------------------------------------------------------- stdlib

def test_stdlib_corpus_is_deterministic_capped_and_python():
    a = load_corpus("stdlib", block_size=64, max_bytes=200_000)
    b = load_corpus("stdlib", block_size=64, max_bytes=200_000)
    assert isinstance(a, Corpus) and a.vocab_size == 256
    assert np.array_equal(a.train, b.train) and np.array_equal(a.val, b.val)
    assert a.train.dtype == np.uint8
    assert a.n_train_tokens + a.n_val_tokens == 200_000          # capped exactly
    assert a.n_val_tokens == 20_000                               # last 10% is val
    text = a.train.tobytes()
    assert b"def " in text and b"# ---- " in text


def test_stdlib_file_list_is_sorted_and_filtered():
    files = stdlib_files()
    assert files and files == sorted(files)
    assert all(f.endswith(".py") for f in files)
    banned = {"site-packages", "test", "tests", "idlelib", "lib2to3", "__pycache__"}
    for f in files:
        parts = f.split("/")[:-1]
        assert not banned & set(parts), f
        assert not any("venv" in p for p in parts), f


# ----------------------------------------------------------------------------- file:

def _message(spec, **kw):
    with pytest.raises(DataError) as e:
        load_corpus(spec, block_size=kw.pop("block_size", 8), **kw)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_file_corpus_loads(tmp_path):
    p = tmp_path / "t.txt"
    p.write_bytes(bytes(range(256)) * 4)
    c = load_corpus(f"file:{p}", block_size=16)
    assert np.array_equal(np.concatenate([c.train, c.val]), np.frombuffer(p.read_bytes(), np.uint8))
    assert c.n_val_tokens == round(1024 * 0.1)


def test_file_missing(tmp_path):
    p = tmp_path / "nope.txt"
    assert str(p) in _message(f"file:{p}")


def test_file_is_directory(tmp_path):
    msg = _message(f"file:{tmp_path}")
    assert str(tmp_path) in msg and "directory" in msg


def test_file_empty(tmp_path):
    p = tmp_path / "empty.txt"
    p.write_bytes(b"")
    msg = _message(f"file:{p}")
    assert str(p) in msg and "empty" in msg


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root can read a chmod 000 file")
def test_file_unreadable(tmp_path):
    p = tmp_path / "secret.txt"
    p.write_text("x" * 100)
    p.chmod(0)
    try:
        msg = _message(f"file:{p}")
        assert str(p) in msg and "permission" in msg
    finally:
        p.chmod(0o644)


def test_file_permission_error_message(tmp_path, monkeypatch):
    # Runs even as root (where chmod 000 does not stop reads): fake the OS refusing the read.
    p = tmp_path / "locked.txt"
    p.write_text("x" * 100)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(corpora, "open", refuse, raising=False)   # shadows the builtin there
    msg = _message(f"file:{p}")
    assert str(p) in msg and "permission" in msg


def test_file_too_short_for_one_block(tmp_path):
    p = tmp_path / "short.txt"
    p.write_bytes(b"abcde")                                        # 5 bytes, needs 9
    msg = _message(f"file:{p}", block_size=8)
    assert str(p) in msg and "5 bytes" in msg and "9" in msg and "--block-size" in msg


def test_file_too_short_to_split(tmp_path):
    p = tmp_path / "short.txt"
    p.write_bytes(b"x" * 12)                                       # one block fits, not two
    msg = _message(f"file:{p}", block_size=8)
    assert str(p) in msg and "18" in msg and "--block-size" in msg


def test_file_small_val_is_enlarged_to_one_block(tmp_path):
    p = tmp_path / "small.txt"
    p.write_bytes(b"y" * 40)                                       # 10% = 4 < block_size+1
    c = load_corpus(f"file:{p}", block_size=8)
    assert c.n_val_tokens == 9 and c.n_train_tokens == 31


def test_unknown_spec_lists_valid_forms():
    msg = _message("wikipedia")
    assert "stdlib" in msg and "file:PATH" in msg and "synthetic" in msg
    _message("file:")


# ----------------------------------------------------------------------------- synthetic

def test_synthetic_answers_are_correct_and_all_tasks_present():
    examples = SyntheticTasks().generate(2000, np.random.default_rng(0))
    seen = set()
    for prompt, answer in examples:
        assert prompt.endswith("=") and "\n" not in answer
        task, arg = prompt[:-1].split(":")
        seen.add(task)
        if task == "copy":
            assert answer == arg and arg.isalpha()
        elif task == "rev":
            assert answer == arg[::-1]
        elif task == "sort":
            assert answer == "".join(sorted(arg)) and arg.isdigit()
        elif task == "add":
            a, b = arg.split("+")
            assert int(answer) == int(a) + int(b)
        else:
            pytest.fail(f"unexpected task {task}")
        assert 1 <= len(arg.split("+")[0]) <= 8
    assert seen == {"copy", "rev", "sort", "add"}
    lengths = {len(p) for p, _ in examples}
    assert len(lengths) > 8                                        # mixed difficulty


def test_synthetic_same_seed_same_data():
    a = load_corpus("synthetic", block_size=32, seed=3)
    b = load_corpus("synthetic", block_size=32, seed=3)
    c = load_corpus("synthetic", block_size=32, seed=4)
    assert np.array_equal(a.train, b.train) and np.array_equal(a.val, b.val)
    assert not np.array_equal(a.train[:1000], c.train[:1000])
    assert 150_000 < a.n_train_tokens < 250_000 and a.n_val_tokens > 10_000
    lines = a.train.tobytes().decode().splitlines()
    assert a.train.tobytes().endswith(b"\n")
    assert all(SyntheticTasks.solve(l[: l.index("=") + 1]) == l[l.index("=") + 1:] for l in lines)
    assert a.val.tobytes()[:500] not in a.train.tobytes()         # val is its own stream


def test_exact_match_accuracy():
    examples = SyntheticTasks().generate(200, np.random.default_rng(1))
    truth = dict(examples)
    perfect = exact_match_accuracy(lambda ps: [truth[p] + "\n" for p in ps], examples)
    assert perfect["overall"] == 1.0
    assert all(perfect[t] == 1.0 for t in SyntheticTasks.TASKS)
    wrong = exact_match_accuracy(lambda ps: [truth[p] + "!" for p in ps], examples)
    assert wrong["overall"] == 0.0 and all(wrong[t] == 0.0 for t in SyntheticTasks.TASKS)
    # Only copy right: overall equals the share of copy examples.
    only_copy = exact_match_accuracy(
        lambda ps: [truth[p] if p.startswith("copy:") else "" for p in ps], examples)
    share = np.mean([p.startswith("copy:") for p, _ in examples])
    assert only_copy["copy"] == 1.0 and only_copy["add"] == 0.0
    assert only_copy["overall"] == pytest.approx(share)


# ----------------------------------------------------------------------------- batches

def test_get_batch_shapes_and_shift():
    data = np.arange(100, dtype=np.uint8)
    x, y = get_batch(data, batch_size=5, block_size=7, rng=np.random.default_rng(0))
    assert x.shape == y.shape == (5, 7) and x.dtype == y.dtype == np.int64
    assert np.array_equal(x[:, 1:], y[:, :-1])
    assert np.array_equal(y, x + 1)                                # arange: next token = +1


def test_get_batch_only_possible_window():
    data = np.arange(9, dtype=np.uint8)                            # block_size + 1 tokens
    x, y = get_batch(data, batch_size=4, block_size=8, rng=np.random.default_rng(0))
    assert (x == np.arange(8)).all() and (y == np.arange(1, 9)).all()
    with pytest.raises(DataError):
        get_batch(data, batch_size=1, block_size=9, rng=np.random.default_rng(0))


def test_get_batch_reaches_both_ends():
    data = np.arange(20, dtype=np.uint8)
    x, y = get_batch(data, batch_size=2000, block_size=5, rng=np.random.default_rng(0))
    assert x[:, 0].min() == 0 and x[:, 0].max() == 20 - 5 - 1    # every start, no more
    assert y.max() == 19


def test_sampler_state_round_trip():
    corpus = load_corpus("synthetic", block_size=16, max_bytes=20_000)
    s = BatchSampler(corpus, batch_size=4, block_size=16, seed=0)
    s.train_batch(); s.val_batch()
    state = json.loads(json.dumps(s.state_dict()))                 # survives a JSON checkpoint
    expected = [s.train_batch(), s.val_batch(), s.train_batch()]
    r = BatchSampler(corpus, batch_size=4, block_size=16, seed=123)
    r.load_state_dict(state)
    got = [r.train_batch(), r.val_batch(), r.train_batch()]
    for (ex, ey), (gx, gy) in zip(expected, got):
        assert np.array_equal(ex, gx) and np.array_equal(ey, gy)


def test_sampler_val_does_not_disturb_train():
    corpus = load_corpus("synthetic", block_size=16, max_bytes=20_000)
    a = BatchSampler(corpus, 4, 16, seed=0)
    b = BatchSampler(corpus, 4, 16, seed=0)
    for _ in range(3):
        b.val_batch()
    assert np.array_equal(a.train_batch()[0], b.train_batch()[0])
