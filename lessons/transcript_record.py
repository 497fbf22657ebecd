"""Recording a chapter's transcripts (`make transcript-NN`): its script run as a reader would,
quick twice (the two runs must agree, or a measured value is not marked) and then in full.

Recording sets TINYSPARSE_TRANSCRIPT=1, so lesson.measured() marks its lines; a transcript is
written atomically (a temporary file, then os.replace). lessons/transcripts.py explains what
the transcripts are for and re-exports these names.
"""
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from transcript_lines import FULL, HEADER, OUT, QUICK, ROOT, differences, fingerprint


def run_script(folder, quick, out_dir):
    """Run a chapter's script as the reader would; its stdout as lines, out-dir replaced by <out>."""
    env = {**os.environ, "TINYSPARSE_TRANSCRIPT": "1", "MPLBACKEND": "Agg"}
    cmd = [sys.executable, str(folder / "run.py"), "--out-dir", str(out_dir)] + (["--quick"] if quick else [])
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{folder.name} exited with {result.returncode}; not recorded:\n"
                         f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return [ln.rstrip().replace(str(out_dir), OUT) for ln in result.stdout.splitlines()]


def _write(path, header, lines):
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(f"{HEADER}{h}\n" for h in header) + "".join(f"{ln}\n" for ln in lines))
    os.replace(tmp, path)


def record(folder, out_root):
    """Record the quick run (twice: the two must agree, or a measured value is not marked), then
    the full run, which carries the quick run's fingerprint."""
    out = Path(out_root) / folder.name
    machine = (f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores, "
               f"Python {platform.python_version()}")
    quick = run_script(folder, True, out / "quick")
    again = run_script(folder, True, out / "quick")
    unstable = differences(again, quick)
    if unstable:
        raise SystemExit(f"{folder.name} --quick printed different numbers on two runs; mark the "
                         f"line with lesson.measured() or give the value a unit:\n"
                         + "\n".join(unstable))
    stamp = time.strftime("%Y-%m-%d")
    cmd = f"python lessons/{folder.name}/run.py"
    _write(folder / QUICK, [f"run: {cmd} --quick --out-dir {OUT}", f"recorded: {stamp}",
                            f"machine: {machine}"], quick)
    t0 = time.perf_counter()
    full = run_script(folder, False, out / "full")
    _write(folder / FULL, [f"run: {cmd} --out-dir {OUT}", f"recorded: {stamp}",
                           f"machine: {machine}", f"wall time: {time.perf_counter() - t0:.0f} s",
                           f"quick fingerprint: {fingerprint(quick)}"], full)
    print(f"{folder.name}: recorded ({len(full)} lines, {time.perf_counter() - t0:.0f} s)")
