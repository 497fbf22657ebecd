"""The step suite's thread scaling (tinysparse/bench/scaling.py): the step on 1 thread and on
--threads, both frameworks taking turns, each run under its own thread count; the table's
medians, per-round ratios and speedups; the per-Function split under --profile.

Speed is never asserted: the tables are checked on made-up timings, and the suite on a model
small enough to take a second or two (bench_helpers.bench).
"""
import math

import pytest

from tinysparse.bench import scaling
from bench_helpers import bench

# per-round ratios a/b of 1, 3 and 0.5 at 1 thread: their median is 1.0, the medians' ratio 2.0
TIMED = {("a", 1): ([10.0, 30.0, 20.0], []), ("b", 1): ([10.0, 10.0, 40.0], []),
         ("a", 4): ([8.0, 12.0, 10.0], []), ("b", 4): ([4.0, 5.0, 10.0], [])}


def test_scaling_rows_are_medians_per_round_ratios_and_speedups():
    rows, speedups = scaling.scaling_rows(TIMED, ["a", "b"], 4)
    assert [k for k, _, _ in rows] == [1, 4]
    assert rows[0][1] == [20.0, 10.0] and rows[1][1] == [10.0, 5.0]
    assert rows[0][2] == pytest.approx(1.0)              # not 20 / 10
    assert rows[1][2] == pytest.approx(2.0)              # rounds 1.0, 2.4, 2.0 -> 2.0
    assert speedups == pytest.approx([2.0, 2.0])          # 20 / 10 and 10 / 5


def test_one_framework_has_no_ratio_column():
    rows, speedups = scaling.scaling_rows(TIMED, ["b"], 4)
    assert [r[2] for r in rows] == [None, None] and speedups == pytest.approx([2.0])


def test_one_framework_prints_its_column_alone(capsys):
    scaling.print_thread_scaling(TIMED, ["b"], 4)
    lines = capsys.readouterr().out.splitlines()
    assert lines[2:] == [f"{'threads':<14}{'b ms':>16}", f"{'1':<14}{10.0:16.2f}",
                         f"{'4':<14}{5.0:16.2f}", f"{'speedup 1->4':<14}{2.0:15.2f}x"]


def test_the_printed_table_holds_those_numbers(capsys):
    scaling.print_thread_scaling(TIMED, ["a", "b"], 4)
    lines = capsys.readouterr().out.splitlines()
    assert "the step on 1 thread and on 4, 3 timed steps each" in lines[1]
    assert lines[2].split() == ["threads", "a", "ms", "b", "ms", "a/b"]
    assert lines[3].split() == ["1", "20.00", "10.00", "1.00x"]
    assert lines[4].split() == ["4", "10.00", "5.00", "2.00x"]
    assert lines[5].split() == ["speedup", "1->4", "2.00x", "2.00x"]


def test_function_scaling_ranks_by_time_on_many_threads():
    one = {"Linear.backward": 4.0, "GELU.forward": 1.0, "Gone.forward": 0.5}
    many = {"Linear.backward": 2.0, "GELU.forward": 2.5, "New.forward": 0.25, "Zero.forward": 0.0}
    rows = scaling.function_scaling(one, many, top=3)
    assert [r[0] for r in rows] == ["GELU.forward", "Linear.backward", "New.forward"]
    assert rows[0][1:] == pytest.approx((1.0, 2.5, 0.4))
    assert rows[1][1:] == pytest.approx((4.0, 2.0, 2.0))
    assert rows[2][1:] == pytest.approx((0.0, 0.25, 0.0))  # missing on 1 thread: 0 there
    gone, zero = scaling.function_scaling(one, many, top=6)[-2:]
    assert gone == ("Gone.forward", 0.5, 0.0, gone[3]) and math.isnan(gone[3])
    assert zero[0] == "Zero.forward" and math.isnan(zero[3])


def test_print_function_scaling_gives_ms_per_step(capsys):
    one = {"Linear.forward": 0.3, "GELU.forward": 0.1}
    scaling.print_function_scaling(one, {"Linear.forward": 0.2, "GELU.forward": 0.1}, 10, 2, 1)
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].split() == ["Linear.forward", "30.00", "20.00", "1.50x"]   # top 1 only
    assert lines[-2].split() == ["Function", "1", "thread", "2", "threads", "speedup"]


def test_the_profiles_run_on_1_thread_then_on_n(monkeypatch, capsys):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    seen = []

    def clocked(run, steps):
        seen.append(({i["num_threads"] for i in threadpoolctl.threadpool_info()
                      if i["user_api"] == "blas"}, steps))
        return 1.0, {"Linear.forward": 0.3 if len(seen) == 1 else 0.1, "engine: apply": 9.0}
    monkeypatch.setattr(scaling, "_clocked", clocked)
    scaling.profile_thread_scaling(None, None, None, None, 5, 2)
    assert seen == [({1}, 5), ({2}, 5)]
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].split() == ["Linear.forward", "60.00", "20.00", "3.00x"]  # only Functions


class FakeTorch:
    """torch's thread setting, recorded."""

    def __init__(self):
        self.threads, self.seen = 7, []

    def get_num_threads(self):
        return self.threads

    def set_num_threads(self, n):
        self.threads = n


def test_each_step_runs_on_its_own_thread_count_in_turns():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    torch, calls = FakeTorch(), []

    def step(name):
        def run():
            blas = {i["num_threads"] for i in threadpoolctl.threadpool_info()
                    if i["user_api"] == "blas"}
            calls.append((name, torch.threads, blas))
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


class FakeLoss:
    def item(self):
        return 1.0


def test_the_step_suite_prints_the_scaling_with_torch(capsys):
    pytest.importorskip("torch")
    assert bench("--suite", "step") == 0
    out = capsys.readouterr().out
    table = out[out.index("thread scaling: the step on 1 thread and on 2"):].splitlines()
    assert table[1].split()[-1] == "tinysparse/pytorch"
    assert table[2].split()[0] == "1" and table[2].endswith("x")
    assert table[4].startswith("speedup 1->2") and len(table[4].split()) == 4


def test_without_torch_it_scales_tinysparse_alone_and_profiles_per_thread_count(capsys):
    assert bench("--suite", "step", "--no-torch", "--profile") == 0
    out = capsys.readouterr().out
    table = out[out.index("thread scaling"):].splitlines()
    assert table[1] == f"{'threads':<14}{'tinysparse ms':>16}"
    assert len(table[2].split()) == 2 and table[4].startswith("speedup 1->2")
    split = out[out.index("profile per thread count"):].split("\n\n")[0].splitlines()
    assert split[1].split() == ["Function", "1", "thread", "2", "threads", "speedup"]
    rows = [line.split() for line in split[2:]]
    assert len(rows) == 8                                   # the top 8 of the step's Functions
    assert all(len(r) == 4 and r[0].endswith((".forward", ".backward")) and r[3].endswith("x")
               for r in rows)


def test_one_thread_has_no_scaling_to_show(capsys):
    assert bench("--suite", "step", "--no-torch", "--threads", "1", "--profile") == 0
    out = capsys.readouterr().out
    assert "thread scaling" not in out and "profile per thread count" not in out
