"""The targets of issue 16 (tinysparse/bench/targets.py) and the ratio each is measured by
(paired_ratio, bench/common.py): every bench run ends with the targets' table; a ratio is the
median of the per-round ratios of paired timings (a machine that slows for a while moves both
sides of a round alike), with its quartiles, and timings that do not pair are refused; the step
and decode suites record theirs that way (a rate's ratio is PyTorch's time over ours), and a
target is met by its own direction.

Speed is never asserted: each runs the suite on a model small enough to take a second or two
(bench_helpers.bench) and checks that it works and what it prints.
"""
import numpy as np
import pytest

from bench_helpers import bench


# ----------------------------------------------------------------------------- the table

def test_every_run_ends_with_the_targets_table(capsys):
    from tinysparse.bench import targets
    assert bench("--suite", "gmm") == 0
    out = capsys.readouterr().out
    table = out[out.index("Targets of issue 16"):].splitlines()[2:]
    assert len(table) == len(targets.TARGETS)
    measured = [line for line in table if line.split(". ", 1)[1].startswith("grouped matmul")]
    assert len(measured) == 3 and all(line.split()[-1] in ("yes", "no") for line in measured)
    assert all(line.rstrip().endswith("not run") for line in table if line not in measured)
    assert set(targets.results()) == {"gmm_fwd", "gmm_dx", "gmm_dw"}


# ----------------------------------------------------------------------------- paired ratios

def test_paired_ratio_is_the_median_of_the_per_round_ratios():
    from tinysparse.bench.common import paired_ratio
    # the machine slows tenfold over the last two rounds, both sides alike, and a burst of load
    # hits one side of round 3: the rounds' ratios are 1.1, 1.1, 4, 1.1, 1.2, while the ratio of
    # the two medians (40 / 20) says 2
    slow, fast = [11, 22, 40, 110, 240], [10, 20, 10, 100, 200]
    median, q25, q75 = paired_ratio(slow, fast)
    assert (median, q25, q75) == pytest.approx((1.1, 1.1, 1.2))
    assert np.median(slow) / np.median(fast) == pytest.approx(2.0)     # not what it returns
    assert paired_ratio([3.0], [2.0]) == pytest.approx((1.5, 1.5, 1.5))
    # the quartiles are NumPy's 25th and 75th percentiles (linear): 2 and 4 of ratios 1..5
    assert paired_ratio([5, 1, 4, 2, 3], [1] * 5) == (3.0, 2.0, 4.0)


SLOW, FAST = [11.0, 22.0, 40.0, 110.0, 240.0], [10.0, 20.0, 10.0, 100.0, 200.0]   # as above


def test_the_step_suite_records_the_median_of_its_per_step_ratios(capsys, monkeypatch):
    pytest.importorskip("torch")
    from tinysparse.bench import dense, targets
    runs = {"tinysparse": (SLOW, [4.6] * 5), dense.ARRAY_CODE: (SLOW, [4.6] * 5),
            "pytorch": (FAST, [4.6] * 5)}
    monkeypatch.setattr(dense, "time_alternating", lambda *a, **k: runs)
    targets.reset()
    assert bench("--suite", "step") == 0
    assert targets.results()["step"] == pytest.approx(1.1)          # not 40 / 20
    assert targets.spreads()["step"] == pytest.approx((1.1, 1.2))
    out = capsys.readouterr().out
    assert "1.10x (median of the per-step ratios, quartiles 1.10-1.20x), 2.00x (ratio" in out
    row = next(x for x in out.splitlines() if x.startswith("1. dense training step"))
    assert row.split()[-3:] == ["1.10x", "no", "1.10-1.20x"]


def test_the_decode_suite_records_rates_pytorch_time_over_ours(monkeypatch):
    pytest.importorskip("torch")
    from tinysparse.bench import sampling, targets
    tokens = np.zeros((1, 8), dtype=np.int64)
    monkeypatch.setattr(sampling, "torch_sampling_speed", lambda *a, **k: (
        {"tinysparse": FAST, "pytorch": SLOW}, {"tinysparse": tokens, "pytorch": tokens}))
    targets.reset()
    assert bench("--suite", "decode") == 0
    # a rate ratio: ours over PyTorch's tokens/s is PyTorch's time over ours, per round
    assert targets.results()["decode_short"] == pytest.approx(1.1)
    assert targets.results()["decode_long"] == pytest.approx(1.1)
    assert targets.spreads()["decode_long"] == pytest.approx((1.1, 1.2))


def test_paired_ratio_refuses_timings_that_do_not_pair():
    from tinysparse.bench.common import paired_ratio
    with pytest.raises(ValueError, match="got 1 and 3"):
        paired_ratio([1.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="got 0 and 0"):
        paired_ratio([], [])


# ----------------------------------------------------------------------------- meeting a target

def test_a_target_is_met_by_its_own_direction():
    from tinysparse.bench import targets
    targets.reset()
    targets.record("step", 0.9, (0.8, 1.05))
    targets.record("decode_short", 0.9)
    with pytest.raises(KeyError, match="no bench target 'nope'"):
        targets.record("nope", 1.0)
    import io
    import contextlib
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        targets.print_targets()
    lines = buf.getvalue().splitlines()
    step = next(line for line in lines if line.startswith("1. dense training step"))
    assert step.split()[-2:] == ["yes", "0.80-1.05x"]     # met by the median; quartiles after
    assert next(line for line in lines if "block-1 tokens" in line).endswith("no")   # a rate: >= 1
