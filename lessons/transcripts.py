"""Transcripts: every figure a chapter quotes comes from its own script's run, and stays so.

    python lessons/transcripts.py record 05        # full and quick runs of chapter 05 (make transcript-05)
    python lessons/transcripts.py record all       # every chapter (make transcripts)
    python lessons/transcripts.py check            # the chapters against their transcripts
    python lessons/transcripts.py sync 05          # copy re-measured times into chapter 05's quotes

Each chapter folder holds two transcripts, what its script printed (stdout) when it was recorded:

    transcript.txt         the full run: the run the chapter's text quotes
    transcript-quick.txt   the --quick run: what the tests compare every new quick run with

How a quoted figure is tied to its run (tests/test_lessons.py runs these checks):

1. The chapter's quotes come from transcript.txt. In README.md, the comment `<!-- transcript -->`
   on the line before an indented or fenced block or a table marks it as quoted output: every
   line of the block (every body row of a table, cells in order) must be a line of the
   transcript, with spaces collapsed ("..." lines elide). A figure in the prose is followed by
   `<!--t-->`: the number just before it must be a number of the transcript. The run's time is
   followed by `<!--runtime-->`: it must be the summary line's. After a new recording, `sync`
   copies the new measured values (times, rates; lines marked measured) into the quotes.
2. The quick run still prints what transcript-quick.txt holds: same lines, same numbers (within
   rounding: 0.1%, or 2 units of the last printed decimal; integers below 1000 exactly). Measured values (wall-clock times,
   rates) differ from run to run and are left out: a number followed by a time or rate unit
   (ms, s, tok/s, GFLOP/s, GB/s, ...) and every number of a line the script printed with
   `lesson.measured(...)` or as a measured check; those lines must still read the same, except
   for a timed check's outcome ([ok] or [not this run]) and the summary's list of timed claims
   that did not hold: a timing claim never fails a chapter, nor its transcript.
3. transcript.txt records the fingerprint of transcript-quick.txt recorded with it. A library
   change that moves a number moves the quick run (check 2 fails), the quick transcript is
   recorded anew, the full transcript's fingerprint no longer matches (check 3 fails), the full
   run is recorded anew, and the chapter's quotes must then match it (check 1): a moved figure
   cannot go unnoticed.

Recording sets TINYSPARSE_TRANSCRIPT=1, which makes lesson.measured() prefix its lines with "~ ",
so the transcript knows which lines hold measured values; a reader's run prints no marks.
"""
import argparse
import hashlib
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LESSONS = ROOT / "lessons"
FULL, QUICK = "transcript.txt", "transcript-quick.txt"
HEADER = "#| "                      # header lines of a transcript file (not output)
MEASURED = "~ "                     # prefix of a measured line (TINYSPARSE_TRANSCRIPT=1 only)
OUT = "<out>"                       # what the run's --out-dir becomes in a transcript

NUMBER = r"[-+]?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|\.\d+)(?:e[-+]?\d+)?"
UNITS = r"(?:ms/step|ms|µs|us|ns|s|min|tok/s|tokens/s|GFLOP/s|GB/s|MB/s|steps/s)"
TIMED = re.compile(rf"(?<![\w.]){NUMBER}\s?{UNITS}(?![\w/])")
NUM = re.compile(rf"(?<![\w.]){NUMBER}(?![\d])")


# ---- reading transcripts ---------------------------------------------------------------------------

def chapters():
    """The chapter folders that have a script: lessons/NN_topic/."""
    return sorted(p.parent for p in LESSONS.glob("[0-9][0-9]_*/run.py"))


def chapter(number):
    """The folder of chapter `number` ('05' or 5)."""
    found = [d for d in chapters() if d.name.startswith(f"{int(number):02d}_")]
    if not found:
        raise SystemExit(f"no chapter {number}: see `make help`")
    return found[0]


def split_header(text):
    """(header lines without the prefix, output lines) of a transcript file."""
    lines = text.splitlines()
    header = [ln[len(HEADER):] for ln in lines if ln.startswith(HEADER)]
    return header, [ln for ln in lines if not ln.startswith(HEADER)]


def header_value(header, key):
    for line in header:
        if line.startswith(key + ":"):
            return line[len(key) + 1:].strip()
    return None


def normalise(line):
    """A line as compared: out-dir and measured mark resolved, spaces collapsed."""
    return " ".join(line.replace(MEASURED, "", 1).split()) if line.startswith(MEASURED) \
        else " ".join(line.split())


def skeleton(line):
    """The line with its measured values (or, on a measured line, every number) masked."""
    if line.startswith(MEASURED):
        return NUM.sub("#", normalise(line))
    return TIMED.sub("<t>", normalise(line))


TIMED_OUTCOME = re.compile(r"^\[(?:ok|not this run)\] ")           # a timed check's outcome
TIMED_MISSES = re.compile(r"^(?:\d+ measured claim\(s\) did not hold|not this run: )")


def _outcome_masked(line):
    """A measured line's skeleton with a timed check's outcome masked."""
    return TIMED_OUTCOME.sub("[timed] ", skeleton(line))


def _compared(lines):
    """The lines a comparison looks at: blank lines and the summary's list of timed claims that
    did not hold on a run (present on some runs only) left out."""
    return [ln for ln in lines if ln.strip() and not (
        ln.startswith(MEASURED) and TIMED_MISSES.match(normalise(ln)))]


def fingerprint(output_lines):
    """sha256 of a run's output with its measured values masked (what check 2 compares)."""
    text = "\n".join(skeleton(ln) for ln in output_lines if ln.strip())
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ---- comparing a run with a transcript --------------------------------------------------------------

def _close(a, b):
    """Two printed numbers agree within rounding: 0.1%, or for a number with decimals 2 units of
    its last digit (another CPU's BLAS rounds differently); an integer (a count, a step) must
    be the same below 1000."""
    x, y = float(a.replace(",", "")), float(b.replace(",", ""))
    mantissa = b.split("e")[0]
    if "." not in mantissa:
        return abs(x - y) <= 1e-3 * abs(y)
    scale = 10 ** float(b.split("e")[1]) if "e" in b else 1.0
    return abs(x - y) <= max(2 * 10.0 ** -len(mantissa.split(".")[1]) * scale, 1e-3 * abs(y))


def differences(run_lines, transcript_lines, limit=8):
    """What differs between a run's output and a transcript's (measured values aside): a list of
    messages, empty when they agree."""
    run, ref = _compared(run_lines), _compared(transcript_lines)
    problems = []
    for i, (got, want) in enumerate(zip(run, ref)):
        same_text = _outcome_masked(got) == _outcome_masked(want) if want.startswith(MEASURED) else \
            NUM.sub("#", skeleton(got)) == NUM.sub("#", skeleton(want))
        numbers_ok = want.startswith(MEASURED) or all(
            _close(a, b) for a, b in zip(NUM.findall(skeleton(got)), NUM.findall(skeleton(want))))
        if not (same_text and numbers_ok):
            problems.append(f"line {i + 1}:\n    now:        {normalise(got)}\n"
                            f"    transcript: {normalise(want)}")
            if len(problems) >= limit:
                break
    if len(run) != len(ref) and len(problems) < limit:
        problems.append(f"the run printed {len(run)} lines, the transcript holds {len(ref)}")
    return problems


# ---- the chapter's quotes ----------------------------------------------------------------------------

def _blocks(readme_lines, with_index=False):
    """(line number, [lines]) of every block marked `<!-- transcript -->` (with_index: also the
    index of the block's first line)."""
    blocks, i = [], 0
    while i < len(readme_lines):
        if readme_lines[i].strip() == "<!-- transcript -->":
            j, body = i + 1, []
            if j < len(readme_lines) and readme_lines[j].startswith("```"):
                j += 1
                while j < len(readme_lines) and not readme_lines[j].startswith("```"):
                    body.append(readme_lines[j])
                    j += 1
            else:
                while j < len(readme_lines) and (readme_lines[j].startswith(("    ", "|"))):
                    body.append(readme_lines[j])
                    j += 1
            blocks.append((i + 1, body, j - len(body)) if with_index else (i + 1, body))
            i = j
        i += 1
    return blocks


def _table_rows(body):
    """Body rows of a markdown table as cell lists (header and separator rows dropped)."""
    rows = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in body]
    seps = [i for i, r in enumerate(rows) if all(set(c) <= set("-: ") for c in r)]
    return rows[seps[0] + 1:] if seps else rows


def quote_problems(readme_text, transcript_lines):
    """The chapter's quotes that its transcript does not hold: a list of messages."""
    lines = readme_text.splitlines()
    printed = [normalise(ln) for ln in transcript_lines]
    printed_set = set(printed)
    problems = []
    for at, body in _blocks(lines):
        if not body:
            problems.append(f"README line {at}: `<!-- transcript -->` marks no block")
        if body and body[0].startswith("|"):
            for cells in _table_rows(body):
                pattern = r"\s+".join(re.escape(tok) for c in cells if c for tok in c.split())
                if not any(re.search(rf"(?:^|\s){pattern}(?:\s|$)", p) for p in printed):
                    problems.append(f"README line {at}: table row {' | '.join(cells)!r} is not "
                                    f"in the transcript")
            continue
        for ln in body:
            text = " ".join(ln.split())
            if text and text != "..." and text not in printed_set:
                problems.append(f"README line {at}: {text!r} is not a line of the transcript")
    numbers = set(NUM.findall("\n".join(printed)))
    for n, line in enumerate(lines, 1):
        for match in re.finditer(rf"({NUMBER})[%x]?\s*<!--t-->", line):
            if match.group(1) not in numbers:
                problems.append(f"README line {n}: {match.group(1)} is not a number of the transcript")
        for match in RUN_TIME_TAG.finditer(line):
            if match.group(1) != run_time(transcript_lines):
                problems.append(f"README line {n}: the run took {run_time(transcript_lines)} s, "
                                f"not {match.group(1)} (`python lessons/transcripts.py sync` fixes it)")
    return problems


RUN_TIME_TAG = re.compile(rf"({NUMBER})(?=\s*s?\s*<!--runtime-->)")


def run_time(transcript_lines):
    """The seconds the run's summary line states ("0 failed check(s) in 118.0 s"), as printed."""
    for line in reversed(transcript_lines):
        found = re.search(r"failed check\(s\) in ([\d.]+) s", line)
        if found:
            return found.group(1)
    return None


# ---- keeping measured quotes in step with a new recording --------------------------------------------

def _loose(text):
    """A pattern for a quoted line or row whose numbers may have changed: text fixed, numbers free."""
    parts = NUM.split(" ".join(text.split()))
    return re.compile(r"(?:^|\s)" + f"({NUMBER})".join(
        r"\s+".join(re.escape(tok) for tok in part.split(" ")) for part in parts) + r"(?:\s|$)")


def sync_measured(readme_text, transcript_lines):
    """The README with its quotes brought in step with a new transcript where only measured values
    moved: a quoted line (or table row) that the transcript no longer holds, and whose text (its
    numbers aside) matches exactly one MEASURED transcript line, takes that line's numbers; the
    run time tagged <!--runtime--> takes the summary line's. Anything else is left for a person:
    a deterministic figure that moved is a change the text must discuss."""
    lines = readme_text.splitlines()
    # (line, its text with the numbers that may move masked): every number of a measured line,
    # only the timed values (a number with a time unit) of any other line
    measured = [(normalise(ln), NUM.sub("#", normalise(ln)) if ln.startswith(MEASURED)
                 else TIMED.sub("<t>", normalise(ln)))
                for ln in transcript_lines if ln.startswith(MEASURED) or TIMED.search(ln)]
    printed = {normalise(ln) for ln in transcript_lines}
    for _, body, first in _blocks(lines, with_index=True):
        for i, ln in enumerate(body, first):
            text = " ".join(ln.strip().strip("|").replace("|", " ").split()) if ln.startswith("|") \
                else " ".join(ln.split())
            if not text or text == "..." or text in printed or any(text in p for p in printed):
                continue
            pattern = _loose(text)
            hits = [pattern.search(m) for m, fixed in measured
                    if fixed == (NUM.sub("#", text) if "#" in fixed else TIMED.sub("<t>", text))]
            hits = [h for h in hits if h]
            if len(hits) != 1:
                continue
            new = iter(hits[0].groups())
            lines[i] = NUM.sub(lambda _m: next(new), ln)
    seconds = run_time(transcript_lines)
    text = "\n".join(lines) + ("\n" if readme_text.endswith("\n") else "")
    return RUN_TIME_TAG.sub(seconds, text) if seconds else text


def check_chapter(folder):
    """Checks 1 and 3 for one chapter (check 2 needs a run: tests/test_lessons.py)."""
    readme, full, quick = folder / "README.md", folder / FULL, folder / QUICK
    if not full.exists() or not quick.exists():
        return [f"{folder.name}: no transcripts; record them with `make transcript-{folder.name[:2]}`"]
    header, output = split_header(full.read_text())
    _, quick_output = split_header(quick.read_text())
    problems = []
    if header_value(header, "quick fingerprint") != fingerprint(quick_output):
        problems.append(f"{folder.name}: {FULL} was recorded with another quick run than "
                        f"{QUICK} holds; record both anew with `make transcript-{folder.name[:2]}`")
    problems += [f"{folder.name}/README.md: {p}" for p in quote_problems(readme.read_text(), output)]
    return problems


# ---- recording ---------------------------------------------------------------------------------------

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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record", help="run chapters in full and quick, write their transcripts")
    rec.add_argument("chapter", help="a chapter number (05) or 'all'")
    rec.add_argument("--out-dir", default=str(ROOT / "out" / "transcripts"))
    sub.add_parser("check", help="check every chapter's quotes against its transcripts")
    syn = sub.add_parser("sync", help="copy measured values (times, rates) of the transcripts "
                                      "into the chapters' quotes")
    syn.add_argument("chapter", nargs="?", default="all")
    args = parser.parse_args(argv)
    if args.command == "record":
        for folder in chapters() if args.chapter == "all" else [chapter(args.chapter)]:
            record(folder, args.out_dir)
        return 0
    if args.command == "sync":
        for folder in chapters() if args.chapter == "all" else [chapter(args.chapter)]:
            if (folder / FULL).exists():
                readme = folder / "README.md"
                _, output = split_header((folder / FULL).read_text())
                readme.write_text(sync_measured(readme.read_text(), output))
        args.command = "check"
    problems = [p for folder in chapters() for p in check_chapter(folder)]
    print("\n".join(problems) or "every chapter's quotes match its transcripts")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
