"""The chapter's quotes: checks 1 and 3 of lessons/transcripts.py, and `sync`.

Check 1: in a chapter's README.md, every line of a block marked `<!-- transcript -->` (every
body row of a table), every figure tagged `<!--t-->` and the run time tagged `<!--runtime-->`
is in transcript.txt. Check 3: transcript.txt carries the fingerprint of the
transcript-quick.txt beside it. After a new recording, sync_measured copies the measured values
(times, rates) into the quotes; a deterministic figure that moved is left for a person.
"""
import re

from transcript_lines import (FULL, MEASURED, NUM, NUMBER, QUICK, TIMED, fingerprint,
                              header_value, normalise, split_header)


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
