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
   rounding: 0.1%, or 2 units of the last printed decimal; integers below 1000 exactly). Two
   numbers below 1e-5, the size of a rounding difference that another CPU's BLAS and SIMD
   change, agree when one is 0 or both have one sign within a factor 10; a row of chapter 03's
   attention heat maps may show one or two cells one shade off (transcript_lines.py has the
   rules and the measurements behind them). Measured values (wall-clock times,
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

The parts, beside this file (the command line):

    transcript_lines.py    the file's format, measured values masked, check 2
    transcript_quotes.py   checks 1 and 3, and sync
    transcript_record.py   recording
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the parts, run or loaded by path
# what main() uses, and what tests/test_lessons.py reaches through this module
from transcript_lines import (FULL, OUT, QUICK, ROOT, differences,  # noqa: E402,F401
                              fingerprint, split_header)
from transcript_quotes import check_chapter, quote_problems, sync_measured  # noqa: E402,F401
from transcript_record import _write, record  # noqa: E402,F401

LESSONS = ROOT / "lessons"


def chapters():
    """The chapter folders that have a script: lessons/NN_topic/."""
    return sorted(p.parent for p in LESSONS.glob("[0-9][0-9]_*/run.py"))


def chapter(number):
    """The folder of chapter `number` ('05' or 5)."""
    found = [d for d in chapters() if d.name.startswith(f"{int(number):02d}_")]
    if not found:
        raise SystemExit(f"no chapter {number}: see `make help`")
    return found[0]


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
