"""Every chapter's script runs in quick mode, still prints what its transcript holds, and every
figure its chapter quotes is in the transcript of its full run (lessons/transcripts.py says how).

Chapters are discovered with a glob, so a new lessons/NN_topic/run.py is covered without editing
this file. The convention every lesson script follows, and this test relies on:

  * `--quick` makes the run short (seconds), checking the same things on smaller problems;
  * `--out-dir DIR` says where the script writes any files (plots, checkpoints). Every run.py
    accepts it, even one that writes nothing, so the test can always pass a temporary folder and
    never litter the repository;
  * the exit status is non-zero when a check the script demonstrates fails.
"""
import contextlib
import importlib.util
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
LESSON_SCRIPTS = sorted(ROOT.glob("lessons/[0-9][0-9]_*/run.py"))
_spec = importlib.util.spec_from_file_location("transcripts", ROOT / "lessons" / "transcripts.py")
transcripts = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(transcripts)

RECORD = "record both transcripts anew with `make transcript-{nn}` and update the chapter's quotes"


@pytest.mark.parametrize("script", LESSON_SCRIPTS, ids=[p.parent.name for p in LESSON_SCRIPTS])
def test_lesson_runs_quick_and_prints_its_transcript(script, tmp_path):
    env = dict(os.environ)
    env["NUMBA_ENABLE_CUDASIM"] = "1"  # chapters with CUDA kernels run them on the CPU simulator
    env["MPLBACKEND"] = "Agg"          # plots go to files, never to a window
    env["TINYSPARSE_TRANSCRIPT"] = "1"  # mark measured lines, as the recording did
    cmd = [sys.executable, str(script), "--quick", "--out-dir", str(tmp_path)]
    try:
        result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        pytest.fail(f"{script.relative_to(ROOT)} --quick took over 120 s; its output so far:\n{out}")
    if result.returncode != 0:
        pytest.fail(f"{script.relative_to(ROOT)} --quick exited with {result.returncode}\n"
                    f"---- stdout ----\n{result.stdout}\n---- stderr ----\n{result.stderr}")
    recorded = script.parent / transcripts.QUICK
    assert recorded.exists(), f"{recorded.relative_to(ROOT)} is missing; " + \
        RECORD.format(nn=script.parent.name[:2])
    now = [ln.rstrip().replace(str(tmp_path), transcripts.OUT) for ln in result.stdout.splitlines()]
    _, want = transcripts.split_header(recorded.read_text())
    problems = transcripts.differences(now, want)
    assert not problems, (f"{script.parent.name} --quick no longer prints its transcript; if the "
                          f"change is meant, {RECORD.format(nn=script.parent.name[:2])}:\n"
                          + "\n".join(problems))


@pytest.mark.parametrize("folder", [p.parent for p in LESSON_SCRIPTS],
                         ids=[p.parent.name for p in LESSON_SCRIPTS])
def test_every_quoted_figure_is_in_the_full_transcript(folder):
    problems = transcripts.check_chapter(folder)
    assert not problems, "\n".join(problems)


# ---- the transcript checks themselves: they must catch what they are for --------------------------

QUICK = ["== 1. Routing ====", "  val loss 3.1433 nats after 40 steps, 0.8 s",
         "  expert 12 takes 506 of 4096 slots", "~   numba 8.31 ms vs numpy 9.25 ms (1.11x)",
         "  [ok] the plan is right"]


def test_measured_values_are_left_out_of_the_comparison():
    rerun = [ln.replace("0.8 s", "1.4 s").replace("8.31", "12.02").replace("1.11x", "0.97x")
             for ln in QUICK]
    assert transcripts.differences(rerun, QUICK) == []
    assert transcripts.fingerprint(rerun) == transcripts.fingerprint(QUICK)


def test_a_timed_claim_that_did_not_hold_this_time_is_not_a_difference(capsys, monkeypatch):
    """A timed check's outcome, and the summary's list of the timed claims that did not hold, are
    measured too: a busy machine must not fail the comparison (the claim's text still must match)."""
    from tinysparse import lesson
    monkeypatch.setattr(lesson, "TRANSCRIPT", True)
    runs = []
    for held in (True, False):
        monkeypatch.setattr(lesson, "FAILURES", [])
        monkeypatch.setattr(lesson, "MEASURED_MISSES", [])
        print("  expert 12 takes 506 of 4096 slots")
        lesson.check(held, "numba is faster than numpy", timed=True)
        lesson.summary(0.0)
        runs.append(capsys.readouterr().out.splitlines())
    held, missed = runs
    assert len(missed) > len(held)                        # the miss is listed in the summary
    assert transcripts.differences(missed, held) == [] and transcripts.differences(held, missed) == []
    other_claim = [ln.replace("numba is faster", "numba is slower") for ln in missed]
    assert transcripts.differences(other_claim, held), "a changed claim went unnoticed"
    moved = [ln.replace("506", "507") for ln in missed]
    assert transcripts.differences(moved, held), "a moved number went unnoticed"


@pytest.mark.parametrize("old, new", [("3.1433", "3.1501"), ("506", "512"), ("[ok] the plan", "[FAIL] the plan"),
                                      ("numba 8.31", "numpy 8.31"), ("after 40 steps", "after 41 steps")])
def test_a_moved_number_or_changed_text_is_caught(old, new):
    rerun = [ln.replace(old, new) for ln in QUICK]
    assert transcripts.differences(rerun, QUICK), f"{old} -> {new} went unnoticed"
    assert transcripts.fingerprint(rerun) != transcripts.fingerprint(QUICK)


def test_rounding_in_the_last_digit_is_not_a_difference():
    rerun = [ln.replace("3.1433", "3.1434") for ln in QUICK]
    assert transcripts.differences(rerun, QUICK) == []


@pytest.mark.parametrize("old, new", [("1.7e-07", "2.8e-07"), ("7.45e-08", "0.00e+00"),
                                      ("0.00e+00", "7.45e-08"), ("1.67e-16", "2.78e-16"),
                                      ("-3.0e-07", "-2.1e-06")])
def test_two_rounding_sized_numbers_are_not_a_difference(old, new):
    """Below 1e-5 on both sides a number sizes a rounding difference: another CPU's BLAS and SIMD
    move it (1.7e-07 on one 2-core machine, 2.8e-07 on an AVX-512 one, for the same check)."""
    line = f"  [ok] numba agrees with numpy to {old} (relative)"
    assert transcripts.differences([line.replace(old, new)], [line]) == []


@pytest.mark.parametrize("old, new", [("1.7e-07", "2.0e-05"), ("9.0e-06", "1.1e-05"),
                                      ("1.7e-07", "3.0e-04"), ("3.0e-16", "5.0e-06"),
                                      ("9.42e-08", "9.42e-10"), ("9.0e-06", "-9.0e-06"),
                                      ("0.00e+00", "1.0e-02"), ("0.0e+00", "2.0e-05")])
def test_a_rounding_sized_number_of_another_size_or_sign_is_caught(old, new):
    """A float64-sized error turned float32-sized, a hundredfold, a flipped sign, and a 0 in
    e-notation against a number past 1e-5 (its last digit has no scale: 0.02 passed before)."""
    line = f"  [ok] numba agrees with numpy to {old} (relative)"
    assert transcripts.differences([line.replace(old, new)], [line]), f"{old} -> {new}"


def _heat_rows(p):
    """The rows chapter 03 prints for attention p (n_head, T, T): recall.ascii_heatmaps."""
    spec = importlib.util.spec_from_file_location(
        "recall", ROOT / "lessons" / "03_transformer" / "recall.py")
    recall = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recall)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        recall.ascii_heatmaps(p, ["A1", "B2", "H5", "C7"], 2)
    return out.getvalue().splitlines()[2:]               # the rows, below the two header lines


P = np.tile(np.array([[1.0, 0, 0, 0], [0.5, 0.5, 0, 0], [0.2, 0.3, 0.11, 0], [0.1, 0.1, 0.4, 0.4]]),
            (2, 1, 1))                                   # (n_head=2, T=4, T=4), rows of P
P[1, 3, 3] = 0.12                                        # '.': the last cell printed


def _moved(cells):
    """The heat-map rows of P with each ((head, query, key), new value) set."""
    p = P.copy()
    for index, value in cells:
        p[index] = value
    return _heat_rows(p)


@pytest.mark.parametrize("cells", [[((0, 2, 2), 0.09)], [((0, 2, 2), 0.21)],
                                   [((0, 3, 3), 0.31), ((1, 3, 0), 0.05)],
                                   [((1, 3, 3), 0.08)]])
def test_one_or_two_cells_one_shade_off_are_not_a_difference(cells):
    """0.11 ('.') read as 0.09 (' ') or as 0.21 (':'); two cells of one row; the last cell of
    a row turned blank (the run's rstrip drops it, the row is shorter)."""
    want, got = _heat_rows(P), _moved(cells)
    assert got != want
    assert transcripts.differences(got, want) == []


@pytest.mark.parametrize("cells", [[((0, 2, 2), 0.31)],
                                   [((0, 3, 0), 0.2), ((0, 3, 1), 0.2), ((0, 3, 2), 0.3)],
                                   [((0, 3, q), 0.2) for q in range(4)] + [((1, 3, 0), 0.2)]])
def test_two_shades_off_or_a_changed_row_is_caught(cells):
    """A cell two shades off; three cells of a row one shade off each; a whole row moved."""
    assert transcripts.differences(_moved(cells), _heat_rows(P))


@pytest.mark.parametrize("old, new", [("[ok] x = y", "[ok] x - y"), ("0.5 * x", "0.5 + x"),
                                      ("==== 1. Title ====", "---- 1. Title ----"),
                                      ("3.0e-01", "3.0e=01")])
def test_a_shade_apart_outside_a_heat_map_is_a_difference(old, new):
    assert transcripts.differences([f"  {new}"], [f"  {old}"]), f"{old} -> {new}"


def test_a_heat_map_row_with_another_label_or_mask_is_caught():
    want = _heat_rows(P)
    assert transcripts.differences([want[2].replace("H5", "H6")], [want[2]])
    masked_shown = want[1][:want[1].index("·")] + "." + want[1][want[1].index("·") + 1:]
    assert transcripts.differences([masked_shown], [want[1]])


def test_a_missing_or_extra_line_is_caught():
    assert transcripts.differences(QUICK[:-1], QUICK)
    assert transcripts.differences(QUICK + ["  one more line"], QUICK)


README = """Some text.

<!-- transcript -->
    val loss 3.1433 nats after 40 steps, 0.8 s
    ...
    expert 12 takes 506 of 4096 slots

<!-- transcript -->
| | loss | slots |
|---|---|---|
| expert 12 | 506 | 4096 |

The loss fell to 3.1433<!--t--> nats.
"""
FULL = ["  val loss 3.1433 nats after 40 steps, 0.8 s", "  expert 12 takes 506 of 4096 slots",
        "  expert 12 506 4096"]


def test_quotes_that_match_the_transcript_pass():
    assert transcripts.quote_problems(README, FULL) == []


@pytest.mark.parametrize("old, new", [("3.1433 nats after", "3.1434 nats after"),
                                      ("| 506 |", "| 507 |"), ("3.1433<!--t-->", "3.15<!--t-->"),
                                      ("takes 506", "takes 560")])
def test_a_quote_the_transcript_does_not_hold_is_caught(old, new):
    assert transcripts.quote_problems(README.replace(old, new), FULL)


def test_the_full_transcript_must_come_with_its_quick_run(tmp_path):
    folder = tmp_path / "05_example"
    folder.mkdir()
    (folder / "README.md").write_text(README)
    transcripts._write(folder / transcripts.QUICK, ["run: x"], QUICK)
    transcripts._write(folder / transcripts.FULL, [f"quick fingerprint: {transcripts.fingerprint(QUICK)}"], FULL)
    assert transcripts.check_chapter(folder) == []
    transcripts._write(folder / transcripts.QUICK, ["run: x"], [ln.replace("506", "512") for ln in QUICK])
    assert any("another quick run" in p for p in transcripts.check_chapter(folder))


def test_the_shared_check_helpers_count_failures_into_the_exit_status(capsys, monkeypatch):
    from tinysparse import lesson
    monkeypatch.setattr(lesson, "FAILURES", [])
    monkeypatch.setattr(lesson, "MEASURED_MISSES", [])
    monkeypatch.setattr(lesson, "TRANSCRIPT", True)
    lesson.check(True, "holds")
    assert lesson.summary(0.0) == 0
    lesson.check(False, "is slower this time", timed=True)      # a timed claim never fails
    assert lesson.summary(0.0) == 0
    lesson.check(False, "does not hold")
    assert lesson.summary(0.0) == 1
    out = capsys.readouterr().out
    assert "[ok] holds" in out and "[FAIL] does not hold" in out and "FAILED: does not hold" in out
    assert "~   [not this run] is slower this time  (measured)" in out


def test_the_run_time_must_be_the_summary_lines_and_sync_copies_it():
    full = FULL + ["  0 failed check(s) in 118.0 s"]
    readme = README + "\nThe full run took 118.0<!--runtime--> s.\n"
    assert transcripts.quote_problems(readme, full) == []
    stale = readme.replace("118.0<!--runtime-->", "97.5<!--runtime-->")
    assert any("took 118.0 s, not 97.5" in p for p in transcripts.quote_problems(stale, full))
    assert transcripts.sync_measured(stale, full) == readme


def test_sync_copies_new_measured_values_into_quotes_and_leaves_the_rest():
    full = ["  val loss 3.1433 nats after 40 steps, 0.8 s", "~   numba 8.31 ms vs numpy 9.25 ms (1.11x)",
            "~   tiny 54.1 ms 1.9421"]
    readme = ("<!-- transcript -->\n    val loss 3.1433 nats after 40 steps, 0.6 s\n"
              "    numba 7.00 ms vs numpy 9.00 ms (1.29x)\n\n<!-- transcript -->\n"
              "| run | time | CE |\n|---|---|---|\n| tiny | 50.0 ms | 1.9421 |\n")
    synced = transcripts.sync_measured(readme, full)
    assert "0.8 s" in synced and "numba 8.31 ms vs numpy 9.25 ms (1.11x)" in synced
    assert "| tiny | 54.1 ms | 1.9421 |" in synced
    assert transcripts.quote_problems(synced, full) == []
    moved = readme.replace("3.1433 nats", "3.2000 nats")      # a deterministic figure moved
    assert "3.2000 nats" in transcripts.sync_measured(moved, full)


def test_chapter_07_names_the_fix_when_numba_cannot_compile(monkeypatch):
    """gpu_or_simulator.why_no_gpu on a machine with a GPU whose numba-cuda cannot compile (the
    child's kernel fails): the reason, and the fix for the NumPy 2.5 case (seen on a lent H200)."""
    spec = importlib.util.spec_from_file_location(
        "gpu_or_simulator", ROOT / "lessons" / "07_cuda_kernels" / "gpu_or_simulator.py")
    gos = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gos)
    monkeypatch.setattr(gos.glob, "glob", lambda pattern: ["/dev/nvidia0"])

    def child(stderr):
        return lambda *a, **k: subprocess.CompletedProcess(a, 1, "", stderr)

    monkeypatch.setattr(gos.subprocess, "run", child(
        "Traceback (most recent call last):\n  File x\nAttributeError: module 'numpy' has no "
        "attribute 'row_stack'\n"))
    assert gos.why_no_gpu() == (
        "a GPU may be here but Numba cannot run a kernel on it (AttributeError: module 'numpy' "
        "has no attribute 'row_stack'); pip install 'numpy<2.5' (numba-cuda 0.30 cannot compile "
        "with NumPy 2.5)")
    monkeypatch.setattr(gos.subprocess, "run", child("numba.cuda.cudadrv.error.CudaSupportError: "
                                                      "no driver\n"))
    assert gos.why_no_gpu().endswith("(numba.cuda.cudadrv.error.CudaSupportError: no driver); "
                                     "pip install -e '.[cuda]'")
