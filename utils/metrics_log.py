"""A run's metrics.jsonl: one JSON object per validation check, the run's training history.

One job: the file's rows. `read_metrics` gives them (benchmarks and tools read runs with
it). The trainer (rank 0) appends the row of every check with `append_metrics`, before that
check's checkpoint, so a crash in between only repeats the check on resume. On (re)start
`truncate_metrics` makes the file agree with the checkpoint the run starts from: it keeps
the rows of the checks that checkpoint has passed, drops later ones (they will be run again)
and any torn line (a crash in the middle of an append).
"""
import json
import logging
import os

from utils.fileio import write_text_atomic, writing


def read_metrics(path):
    """The rows of metrics.jsonl at `path`, a list of dicts in check order ([] for a missing
    file); blank lines are skipped, a torn line (an interrupted append) raises ValueError."""
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def append_metrics(path, row):
    """Append the dict `row` as one JSON line to `path` (created if needed, never through a
    symbolic link); a failed write raises StorageError (utils/fileio.writing)."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    with writing(path), os.fdopen(os.open(path, flags, 0o644), "a") as f:
        f.write(json.dumps(row) + "\n")


def truncate_metrics(path, iters, epoch):
    """Make metrics.jsonl at `path` agree with a checkpoint after `iters` optimizer steps and
    `epoch` completed epochs (0 and 0: a fresh start, no row kept): keep the rows of the
    checks it has passed (`iters` <= iters, or for a row without `iters` `epoch` <= epoch),
    drop later ones and torn lines (one warning); rewritten atomically only when changed."""
    if not os.path.isfile(path):
        return
    with open(path) as f:
        text = f.read()
    keep, torn = [], 0
    for line in text.splitlines():
        try:
            row = json.loads(line)
            passed = (int(row["iters"]) <= iters if "iters" in row
                      else int(row["epoch"]) <= epoch)
        except (ValueError, TypeError, KeyError):
            torn += line.strip() != ""
            continue
        if passed:
            keep.append(line + "\n")
    if torn:
        logging.warning("%s: dropped %d unreadable line(s) (an interrupted write)", path, torn)
    if "".join(keep) != text:
        write_text_atomic(path, "".join(keep))
