"""What every chapter script (lessons/NN_topic/run.py) shares: checks that print their outcome and
count failures, section headers, and the closing summary whose return value is the exit status.

    from tinysparse.lesson import check, section, summary
    section("1. Gradients")
    check(abs(a - b) < 1e-9, "the two gradients agree")
    ...
    sys.exit(summary(start))          # 1 if any check failed, else 0

One script is one process, so one module-level list of failures serves it.
"""
import time

FAILURES = []


def check(ok, what):
    """Print a check's outcome and remember failures (the exit status reports them)."""
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
    return 1 if FAILURES else 0
