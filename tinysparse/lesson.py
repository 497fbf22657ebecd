"""What every chapter script (lessons/NN_topic/run.py) shares: checks that print their outcome and
count failures, measured lines and claims, section headers, and the closing summary whose return
value is the exit status.

    from tinysparse.lesson import check, measured, section, summary
    section("1. Gradients")
    check(abs(a - b) < 1e-9, "the two gradients agree")
    measured(f"  numba {t_numba:.2f} ms, numpy {t_numpy:.2f} ms")        # a wall-clock line
    check(t_numba < t_numpy, "numba is faster", timed=True)              # a claim about timings
    ...
    sys.exit(summary(start))          # 1 if any check failed, else 0

Measured values (times, rates, speed-ups) change from run to run and from machine to machine.
A line that holds one is printed with measured(), and a claim that rests on one is a timed
check: it prints whether it held on this run and never fails the script (a slow or busy machine
is not a broken chapter). When lessons/transcripts.py records a run (TINYSPARSE_TRANSCRIPT=1),
measured lines carry a "~ " mark so the transcript checks compare their text, not their numbers.

One script is one process, so module-level lists serve it.
"""
import os
import time

FAILURES = []
MEASURED_MISSES = []
TRANSCRIPT = os.environ.get("TINYSPARSE_TRANSCRIPT") == "1"


def measured(text=""):
    """Print a line (or lines) holding measured values: times, rates, ratios of times."""
    for line in str(text).split("\n"):
        print(("~ " if TRANSCRIPT else "") + line)


def check(ok, what, timed=False):
    """Print a check's outcome and remember failures (the exit status reports them). A timed
    check (a claim about measured times) reports whether it held on this run, never fails."""
    if timed:
        measured(f"  [{'ok' if ok else 'not this run'}] {what}  (measured)")
        if not ok:
            MEASURED_MISSES.append(what)
        return
    print(f"  [{'ok' if ok else 'FAIL'}] {what}")
    if not ok:
        FAILURES.append(what)


def section(title):
    print(f"\n== {title} " + "=" * max(0, 74 - len(title)))


def summary(start, note=""):
    """Print the failed checks and the time since `start` (perf_counter); return the exit status."""
    section("Summary")
    print(f"  {len(FAILURES)} failed check(s) in {time.perf_counter() - start:.1f} s{note}")
    for what in FAILURES:
        print(f"  FAILED: {what}")
    if MEASURED_MISSES:
        measured(f"  {len(MEASURED_MISSES)} measured claim(s) did not hold on this run (timings "
                 f"vary with the machine and its load):")
        for what in MEASURED_MISSES:
            measured(f"  not this run: {what}")
    return 1 if FAILURES else 0
