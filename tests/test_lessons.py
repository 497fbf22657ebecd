"""Every chapter's script runs, in quick mode, and reports success.

Chapters are discovered with a glob, so a new lessons/NN_topic/run.py is covered without editing
this file. The convention every lesson script follows, and this test relies on:

  * `--quick` makes the run short (seconds), checking the same things on smaller problems;
  * `--out-dir DIR` says where the script writes any files (plots, checkpoints). Every run.py
    accepts it, even one that writes nothing, so the test can always pass a temporary folder and
    never litter the repository;
  * the exit status is non-zero when a check the script demonstrates fails.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LESSON_SCRIPTS = sorted(ROOT.glob("lessons/*/run.py"))


@pytest.mark.parametrize("script", LESSON_SCRIPTS, ids=[p.parent.name for p in LESSON_SCRIPTS])
def test_lesson_runs_quick(script, tmp_path):
    env = dict(os.environ)
    env["NUMBA_ENABLE_CUDASIM"] = "1"  # chapters with CUDA kernels run them on the CPU simulator
    env["MPLBACKEND"] = "Agg"          # plots go to files, never to a window
    cmd = [sys.executable, str(script), "--quick", "--out-dir", str(tmp_path)]
    try:
        result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        pytest.fail(f"{script.relative_to(ROOT)} --quick took over 120 s; its output so far:\n{out}")
    if result.returncode != 0:
        pytest.fail(f"{script.relative_to(ROOT)} --quick exited with {result.returncode}\n"
                    f"---- stdout ----\n{result.stdout}\n---- stderr ----\n{result.stderr}")


def test_the_shared_check_helpers_count_failures_into_the_exit_status(capsys, monkeypatch):
    from tinysparse import lesson
    monkeypatch.setattr(lesson, "FAILURES", [])
    lesson.check(True, "holds")
    assert lesson.summary(0.0) == 0
    lesson.check(False, "does not hold")
    assert lesson.summary(0.0) == 1
    out = capsys.readouterr().out
    assert "[ok] holds" in out and "[FAIL] does not hold" in out and "FAILED: does not hold" in out
