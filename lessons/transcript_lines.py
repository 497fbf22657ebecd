"""A transcript's lines: the file's format, a line's measured values masked, and check 2 of
lessons/transcripts.py (a new run against a transcript, within rounding).

A transcript file holds header lines (prefix "#| ") and the run's stdout; a line the script
printed with lesson.measured() starts with "~ " (TINYSPARSE_TRANSCRIPT=1 only). Comparisons
mask the measured values: a number followed by a time or rate unit, and every number of a
measured line. lessons/transcripts.py explains the scheme and re-exports these names.
"""
import hashlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FULL, QUICK = "transcript.txt", "transcript-quick.txt"
HEADER = "#| "                      # header lines of a transcript file (not output)
MEASURED = "~ "                     # prefix of a measured line (TINYSPARSE_TRANSCRIPT=1 only)
OUT = "<out>"                       # what the run's --out-dir becomes in a transcript

NUMBER = r"[-+]?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|\.\d+)(?:e[-+]?\d+)?"
UNITS = r"(?:ms/step|ms|µs|us|ns|s|min|tok/s|tokens/s|GFLOP/s|GB/s|MB/s|steps/s)"
TIMED = re.compile(rf"(?<![\w.]){NUMBER}\s?{UNITS}(?![\w/])")
NUM = re.compile(rf"(?<![\w.]){NUMBER}(?![\d])")


# ---- reading transcripts ---------------------------------------------------------------------------

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

# Numbers below this, on both sides, are the size of a rounding difference (a max error, a
# relative difference between two paths): they change with the CPU's BLAS kernels and SIMD
# width, not with the code. Measured: a check's relative difference 1.7e-07 on one 2-core x86
# machine and 2.8e-07 on another with AVX-512, a largest difference 7.45e-08 against 0. Such
# numbers agree when one is 0 or both have one sign and lie within a factor ROUNDING_FACTOR: a
# float64-sized error (1e-16) that turns float32-sized (1e-7) is still a difference.
ROUNDING_LEVEL = 1e-5
ROUNDING_FACTOR = 10.0


def _same_rounding_size(x, y):
    if x == 0 or y == 0:
        return True
    small, large = sorted((abs(x), abs(y)))
    return (x > 0) == (y > 0) and large <= ROUNDING_FACTOR * small


def _close(a, b):
    """Two printed numbers agree within rounding: 0.1%, or for a number with decimals 2 units of
    its last digit (another CPU's BLAS rounds differently); both below ROUNDING_LEVEL in size,
    they agree as _same_rounding_size says (and a transcript's 0 in e-notation, whose last digit
    has no scale, only so); an integer (a count, a step) must be the same below 1000."""
    x, y = float(a.replace(",", "")), float(b.replace(",", ""))
    if abs(x) < ROUNDING_LEVEL and abs(y) < ROUNDING_LEVEL:
        return _same_rounding_size(x, y)
    mantissa = b.split("e")[0]
    if "e" in b and y == 0:
        return False
    if "." not in mantissa:
        return abs(x - y) <= 1e-3 * abs(y)
    scale = 10 ** float(b.split("e")[1]) if "e" in b else 1.0
    return abs(x - y) <= max(2 * 10.0 ** -len(mantissa.split(".")[1]) * scale, 1e-3 * abs(y))


# The shades of a value 0..1 in lessons/03_transformer/recall.py's heat maps, and the form of
# one of their rows: "  t lab" then a cell "  X" per key (X a shade, or · where masked), the
# heads three spaces apart. A value on the edge of two shades lands on either, as the CPU's
# rounding falls: a row may differ from its transcript in SHADE_CELLS cells at most, each one
# shade off (more is a changed map, not rounding).
SHADES = " .:-=+*#%@"
HEAT_ROW = re.compile(r"^ +\d+ +\S+ [" + re.escape(SHADES) + "·]*$")
SHADE_CELLS = 2


def _unmarked(line):
    return line[len(MEASURED):] if line.startswith(MEASURED) else line


def _a_shade_apart(got, want):
    """True when the two lines are rows of one heat map (HEAT_ROW) that differ in 1 to
    SHADE_CELLS cells, each by one shade (trailing blank shades, which the run's rstrip drops,
    count as written)."""
    got, want = _unmarked(got).rstrip(), _unmarked(want).rstrip()
    if not (HEAT_ROW.match(got) and HEAT_ROW.match(want)):
        return False
    width = max(len(got), len(want))
    got, want = got.ljust(width), want.ljust(width)
    cells = [i for i in range(width) if got[i] != want[i]]
    return 0 < len(cells) <= SHADE_CELLS and all(
        got[i - 2:i] == want[i - 2:i] == "  " and got[i] in SHADES and want[i] in SHADES
        and abs(SHADES.index(got[i]) - SHADES.index(want[i])) == 1 for i in cells)


def differences(run_lines, transcript_lines, limit=8):
    """What differs between a run's output and a transcript's (measured values aside): a list of
    messages, empty when they agree."""
    run, ref = _compared(run_lines), _compared(transcript_lines)
    problems = []
    for i, (got, want) in enumerate(zip(run, ref)):
        if _a_shade_apart(got, want):
            continue
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
