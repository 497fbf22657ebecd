"""The bench's sampling suites (tinysparse/bench/sampling.py): `--suite sampling` times generate
with and without the KV cache for the dense, MoE and adaptive models and fails when the cache
changes the tokens, then times tinysparse's cached decoding against the PyTorch twin's (one line
why when --no-torch); `--suite decode` is that comparison alone, and records its targets.

Speed is never asserted: each runs the suite on a model small enough to take a second or two
(bench_helpers.bench) and checks that it works and what it prints.
"""
import pytest

from bench_helpers import bench


# ----------------------------------------------------------------------------- sampling

def test_sampling_suite_times_generate_with_and_without_the_kv_cache(capsys):
    assert bench("--suite", "sampling") == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines()
            if line.split()[:1] in (["dense"], ["moe"], ["adaptive"])]
    assert [(r[0], r[1]) for r in rows] == [("dense", "7"), ("dense", "32"), ("moe", "7"),
                                            ("moe", "32"), ("adaptive", "7"), ("adaptive", "32")]
    assert all(r[-1] == "yes" for r in rows)           # cached and uncached drew the same tokens
    assert "config: vocab" not in out                  # the dense suite did not run


def test_sampling_suite_fails_when_the_cache_changes_the_tokens(capsys, monkeypatch):
    from tinysparse.bench import sampling
    real = sampling._timed_generate

    def broken(model, n_new, kv_cache, seed=0, **kw):  # a cache that loses the thread
        return real(model, n_new, kv_cache, seed=seed + int(bool(kv_cache)), **kw)

    monkeypatch.setattr(sampling, "_timed_generate", broken)
    assert bench("--suite", "sampling") == 1
    assert " NO" in capsys.readouterr().out


def test_sampling_suite_times_tinysparse_against_the_torch_twin_cache(capsys):
    pytest.importorskip("torch")
    from tinysparse.bench import targets
    targets.reset()
    assert bench("--suite", "sampling") == 0
    out = capsys.readouterr().out
    assert "pytorch tok/s" in out
    header = out.index("pytorch tok/s")
    rows = [line.split() for line in out[header:].split("\n\n")[0].splitlines()[1:]]
    assert [r[0] for r in rows] == ["7", "32"]                # block_size - 1, 4 x block_size
    # ts/pt is the median of the per-round ratios (the recorded targets), not the ratio of the
    # two rate columns: on a busy machine those part (test_the_decode_suite_records_... pins it)
    for r, key in zip(rows, ("decode_short", "decode_long")):
        ts_rate, pt_rate, ratio = float(r[1]), float(r[2]), float(r[3].rstrip("x"))
        assert ts_rate > 0 and pt_rate > 0 and ratio == pytest.approx(targets.results()[key], abs=0.005)


def test_sampling_suite_without_torch_says_why_in_one_line(capsys):
    assert bench("--suite", "sampling", "--no-torch") == 0
    out = capsys.readouterr().out
    assert "PyTorch comparison skipped (--no-torch)" in out and "pytorch tok/s" not in out


# ----------------------------------------------------------------------------- decode

def test_decode_suite_compares_cached_sampling_with_the_twin_and_records_it(capsys):
    pytest.importorskip("torch")
    from tinysparse.bench import targets
    assert bench("--suite", "decode", "--profile") == 0
    out = capsys.readouterr().out
    assert "pytorch tok/s" in out and "cached greedy generate calls" in out
    assert set(targets.results()) == {"decode_short", "decode_long"}
    assert not any(line.split()[:1] == ["dense"] for line in out.splitlines())  # nor sampling's table
