"""The step suite's thread scaling (tinysparse/bench/scaling.py): the step on 1 thread and on
--threads, both frameworks taking turns, each run under its own thread count set outside its
timer; the table's medians, per-round ratios and speedups; the per-Function split under
--profile, whose rows add up to the step.

Speed is never asserted: the tables are checked on made-up timings, and the suite on a model
small enough to take a second or two (bench_helpers.bench).
"""
import math

import pytest

from tinysparse.bench import common, scaling
from bench_helpers import bench

# per-round ratios a/b of 1, 3 and 0.5 at 1 thread: their median is 1.0, the medians' ratio 2.0
TIMED = {("a", 1): ([10.0, 30.0, 20.0], []), ("b", 1): ([10.0, 10.0, 40.0], []),
         ("a", 4): ([8.0, 12.0, 10.0], []), ("b", 4): ([4.0, 5.0, 10.0], [])}


def test_scaling_rows_are_medians_and_per_round_ratios():
    rows, speedups = scaling.scaling_rows(TIMED, ["a", "b"], 4)
    assert [k for k, _, _ in rows] == [1, 4]
    assert rows[0][1] == [20.0, 10.0] and rows[1][1] == [10.0, 5.0]
    assert rows[0][2] == pytest.approx((1.0, 0.75, 2.0))     # not 20 / 10
    assert rows[1][2] == pytest.approx((2.0, 1.5, 2.2))      # rounds 2.0, 2.4, 1.0
    # a: rounds 1.25, 2.5, 2.0 (the medians' ratio, 20 / 10, would be 2.0); b: 2.5, 2.0, 4.0
    assert speedups[0] == pytest.approx((2.0, 1.625, 2.25))
    assert speedups[1] == pytest.approx((2.5, 2.25, 3.25))


def test_one_framework_has_no_ratio_column():
    rows, speedups = scaling.scaling_rows(TIMED, ["b"], 4)
    assert [r[2] for r in rows] == [None, None] and speedups[0][0] == pytest.approx(2.5)


def test_the_printed_table_holds_those_numbers(capsys):
    scaling.print_thread_scaling(TIMED, ["a", "b"], 4)
    lines = capsys.readouterr().out.splitlines()
    assert "the step on 1 thread and on 4, 3 timed steps each" in lines[1]
    assert lines[2] == "ms: medians; ratios and speedups: the median of the per-round ratios (quartiles)"
    assert lines[3].split() == ["threads", "a", "ms", "b", "ms", "a/b"]
    assert lines[4].split() == ["1", "20.00", "10.00", "1.00x", "(0.75-2.00)"]
    assert lines[5].split() == ["4", "10.00", "5.00", "2.00x", "(1.50-2.20)"]
    assert lines[6].split() == ["speedup", "1->4", "2.00x", "(1.62-2.25)", "2.50x", "(2.25-3.25)"]


def test_one_framework_prints_its_column_alone(capsys):
    scaling.print_thread_scaling(TIMED, ["b"], 4)
    lines = capsys.readouterr().out.splitlines()
    assert lines[3:] == [f"{'threads':<14}{'b ms':>24}", f"{'1':<14}{10.0:24.2f}",
                         f"{'4':<14}{5.0:24.2f}", f"{'speedup 1->4':<14}{'2.50x (2.25-3.25)':>24}"]


ONE = (10.0, {"Linear.backward": 4.0, "GELU.forward": 1.0, "Gone.forward": 0.5},
       [("engine", 1.0), ("optimizer", 0.5)])
MANY = (5.0, {"Linear.backward": 2.0, "GELU.forward": 2.5, "New.forward": 0.25, "Zero.forward": 0.0},
        [("engine", 0.25), ("optimizer", 0.0)])


def test_function_scaling_ranks_functions_then_buckets_then_the_step():
    rows = scaling.function_scaling(ONE, MANY, top=3)
    assert [r[0] for r in rows] == ["GELU.forward", "Linear.backward", "New.forward",
                                    "(2 more Functions)", "engine", "optimizer", "the whole step"]
    assert rows[0][1:] == pytest.approx((1.0, 2.5, 0.4))
    assert rows[1][1:] == pytest.approx((4.0, 2.0, 2.0))
    assert rows[2][1:] == pytest.approx((0.0, 0.25, 0.0))  # missing on 1 thread: 0 there
    assert rows[3][1:3] == pytest.approx((0.5, 0.0)) and math.isnan(rows[3][3])  # Gone + Zero
    assert rows[4][1:] == pytest.approx((1.0, 0.25, 4.0))
    assert rows[5][1:3] == pytest.approx((0.5, 0.0)) and math.isnan(rows[5][3])
    assert rows[6][1:] == pytest.approx((10.0, 5.0, 2.0))
    every = scaling.function_scaling(ONE, MANY, top=5)
    assert [r[0] for r in every[:5]] == ["GELU.forward", "Linear.backward", "New.forward",
                                         "Gone.forward", "Zero.forward"]      # ties by name
    assert "more Functions" not in " ".join(r[0] for r in every)
    assert every[3][:3] == ("Gone.forward", 0.5, 0.0) and math.isnan(every[3][3])  # none on n


def test_print_function_scaling_gives_ms_per_step_and_a_dash_for_no_time(capsys):
    scaling.print_function_scaling(ONE, MANY, 10, 2, 1)
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].split() == ["where", "the", "time", "goes", "1", "thread", "2", "threads",
                                "speedup"]
    assert lines[3].split() == ["GELU.forward", "100.00", "250.00", "0.40x"]    # top 1 only
    assert lines[4].split() == ["(4", "more", "Functions)", "450.00", "225.00", "2.00x"]
    assert lines[6].split() == ["optimizer", "50.00", "0.00", "-"]
    assert lines[-1].split() == ["the", "whole", "step", "1000.00", "500.00", "2.00x"]


class FakeTorch:
    """torch's thread setting, recorded."""

    def __init__(self):
        self.threads = 7

    def get_num_threads(self):
        return self.threads

    def set_num_threads(self, n):
        self.threads = n


class FakeLoss:
    def item(self):
        return 1.0


def _blas_threads():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    return {i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"}


def test_each_step_runs_on_its_own_thread_count_in_turns():
    torch, calls = FakeTorch(), []

    def step(name):
        def run():
            calls.append((name, torch.threads, _blas_threads()))
            return FakeLoss()
        return run

    timed = scaling.time_thread_scaling({"ts": step("ts"), "pt": step("pt")}, 2, warmup=1,
                                        iters=3, settle=0, torch=torch)
    assert sorted(timed) == [("pt", 1), ("pt", 2), ("ts", 1), ("ts", 2)]
    assert all(len(ms) == 3 and len(losses) == 4 for ms, losses in timed.values())
    # one round: both frameworks on 1 thread, then both on 2, then again
    assert [(n, k) for n, k, _ in calls[:4]] == [("ts", 1), ("pt", 1), ("ts", 2), ("pt", 2)]
    assert len(calls) == 16
    assert all(blas == {k} for _, k, blas in calls)
    assert torch.threads == 7                             # put back after every step


def test_a_steps_setting_is_in_place_outside_its_timer(monkeypatch):
    events = []

    class Clock:
        @staticmethod
        def perf_counter():
            events.append("clock")
            return float(len(events))

        @staticmethod
        def sleep(seconds):
            events.append("pause")

    class Setting:
        def __enter__(self):
            events.append("set")

        def __exit__(self, *exc):
            events.append("unset")

    def run():
        events.append("step")
        return FakeLoss()

    monkeypatch.setattr(common, "time", Clock)
    common.time_alternating({"a": run, "b": run}, 0, 1, 0.1, setting={"a": Setting, "b": Setting})
    assert events == ["set", "pause", "clock", "step", "clock", "unset"] * 2


@pytest.mark.parametrize("n", [1, 0])
def test_scaling_needs_more_than_one_thread(n):
    with pytest.raises(ValueError, match=f"compares 1 thread with n > 1, got n={n}"):
        scaling.time_thread_scaling({"ts": FakeLoss}, n, 0, 1, 0, None)
    with pytest.raises(ValueError, match=f"compares 1 thread with n > 1, got n={n}"):
        scaling.profile_thread_scaling(None, None, None, None, 1, n)


def test_the_profiles_take_turns_on_1_thread_and_on_n_and_add_up(monkeypatch, capsys):
    seen = []

    def clocked(run, steps, optimizer):
        seen.append((_blas_threads(), steps, optimizer))
        fast = len(seen) % 2 == 0                         # the second of each pair: n threads
        return (0.5 if fast else 1.0), {"Linear.forward": 0.1 if fast else 0.3,
                                        "engine: apply": 0.2, "optimizer": 0.05}
    monkeypatch.setattr(scaling, "clocked", clocked)
    opt = object()
    scaling.profile_thread_scaling(None, opt, None, None, 3, 2)
    assert seen == [({1}, 1, opt), ({2}, 1, opt)] * 3
    lines = capsys.readouterr().out.splitlines()
    assert lines[3].split() == ["Linear.forward", "300.00", "100.00", "3.00x"]
    assert lines[4].split()[:3] == ["engine", "(tensor.py", "backward/apply)"]
    assert lines[4].split()[3:] == ["200.00", "200.00", "1.00x"]
    assert lines[5].split() == ["optimizer", "(object", "step,", "zero_grad)", "50.00", "50.00",
                                "1.00x"]                                 # opt's class named
    assert lines[6].split()[-3:] == ["450.00", "150.00", "3.00x"]        # model code, the rest
    assert lines[7].split() == ["the", "whole", "step", "1000.00", "500.00", "2.00x"]


def test_the_step_suite_prints_the_scaling_with_torch(capsys):
    pytest.importorskip("torch")
    assert bench("--suite", "step") == 0
    out = capsys.readouterr().out
    table = out[out.index("thread scaling: the step on 1 thread and on 2, 2 timed"):].splitlines()
    assert table[2].split()[-1] == "tinysparse/pytorch"
    assert table[3].split()[0] == "1" and table[3].endswith(")")
    assert table[5].startswith("speedup 1->2") and len(table[5].split()) == 6


def test_without_torch_it_scales_tinysparse_alone_and_profiles_per_thread_count(capsys):
    assert bench("--suite", "step", "--no-torch", "--profile") == 0
    out = capsys.readouterr().out
    table = out[out.index("thread scaling"):].splitlines()
    assert table[2] == f"{'threads':<14}{'tinysparse ms':>24}"
    assert len(table[3].split()) == 2 and table[5].startswith("speedup 1->2")
    split = out[out.index("profile per thread count"):].split("\n\n")[0].splitlines()
    assert split[1].split()[-5:] == ["1", "thread", "2", "threads", "speedup"]
    rows = [line.split() for line in split[2:]]
    assert len(rows) == 8 + 1 + 3 + 1       # the top 8 Functions, the rest, 3 buckets, the step
    assert all(r[0].endswith((".forward", ".backward")) for r in rows[:8])
    assert rows[-1][:3] == ["the", "whole", "step"]


def test_one_thread_says_there_is_no_scaling_to_show(capsys):
    assert bench("--suite", "step", "--no-torch", "--threads", "1", "--profile") == 0
    out = capsys.readouterr().out
    assert "thread scaling: not measured (--threads 1: no other thread count to compare)" in out
    assert "profile per thread count" not in out
