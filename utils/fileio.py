"""THE atomic file writers: every file the project writes goes through `atomic_path`.

A writer produces a temporary file beside the destination (same directory, so same file
system), flushes it to disk (fsync) and renames it onto the destination (`os.replace`, atomic
on POSIX): a reader sees the old file or the complete new one, never a truncated one, and an
interrupted or failing write leaves the old file intact and no temporary behind.

    with atomic_path("out/summary.json") as tmp:   # tmp: 'out/.summary.json.<pid>-<hex>.tmp.json'
        write_something(tmp)
    # renamed onto out/summary.json here; on an exception tmp is removed and nothing renamed

The temporary name keeps the destination's extension (np.save / savefig / h5py pick the
format from it) and is unique per process and call (threads of a sweep runner may write at
once).

A write that fails for lack of room or an I/O error (full disk, quota, file-size limit,
read-only file system) raises `utils.errors.StorageError` ("cannot write PATH: No space left
on device"), which every CLI reports as one line with exit status 3 (`writing` does the same
for writes that are not atomic, e.g. an append).
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import secrets

from utils.errors import StorageError


def _fsync_file(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory):
    """Make the rename itself durable (best effort: not every file system allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def describe_os_error(e) -> str:
    """Short reason of a failed write: the errno text ('No space left on device'), also for
    the RuntimeErrors of torch.save and h5py that carry the errno in their message."""
    code = getattr(e, "errno", None)
    if not code:
        m = re.search(r"errno = (\d+)", str(e))
        code = int(m.group(1)) if m else None
    return os.strerror(code) if code else (str(e).strip().splitlines() or [type(e).__name__])[0]


def _is_write_error(e) -> bool:
    """OSError, or the RuntimeError that torch.save / h5py raise when a write fails."""
    if isinstance(e, OSError):
        return True
    text = str(e).lower()
    return isinstance(e, RuntimeError) and ("write" in text or "errno" in text)


@contextlib.contextmanager
def writing(path, note=""):
    """Turn a failed write of `path` inside the block into StorageError (exit status 3)."""
    try:
        yield
    except (OSError, RuntimeError) as e:
        if not _is_write_error(e):
            raise
        raise StorageError(f"cannot write {path}: {describe_os_error(e)}{note}") from e


def temp_path_for(path) -> str:
    """A fresh hidden name beside `path` with the same extension."""
    d, base = os.path.split(os.path.abspath(os.fspath(path)))
    ext = os.path.splitext(base)[1]
    return os.path.join(d, f".{base}.{os.getpid()}-{secrets.token_hex(4)}.tmp{ext}")


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; on success fsync it and rename it onto `path`,
    on an exception (also KeyboardInterrupt) remove it and re-raise."""
    path = os.fspath(path)
    tmp = temp_path_for(path)
    try:
        with writing(path, "; nothing was replaced"):
            yield tmp
            _fsync_file(tmp)
            os.replace(tmp, path)
    except BaseException:
        # best effort: the error to report is the one above, not the clean-up's (on a
        # read-only file system removing even a missing file fails with EROFS)
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


def read_json(path):
    """The JSON document in `path`, or None when it is missing or unreadable (e.g. a run not
    finished yet, or one killed while writing)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def write_text_atomic(path, text: str) -> None:
    """Write `text` (UTF-8, newlines as given) to `path` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)


def write_json_atomic(path, obj, indent: int = 2) -> None:
    """JSON of `obj` (indented, trailing newline) to `path` atomically. NaN and inf are not
    JSON: they raise ValueError before anything is written (callers refuse them first)."""
    write_text_atomic(path, json.dumps(obj, indent=indent, allow_nan=False) + "\n")


def write_csv_atomic(path, rows, fields) -> None:
    """CSV with header `fields` and one line per dict of `rows` (other keys ignored)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fields), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buf.getvalue())


def save_npy_atomic(path, array) -> None:
    """np.save `array` to `path` atomically (`path` should end in .npy)."""
    import numpy as np

    with atomic_path(path) as tmp:
        np.save(tmp, array)


class _KeepWriteError(io.FileIO):
    """A file that remembers the OSError of a failed write: torch.save reports it only as
    "unexpected pos N vs M" (a RuntimeError without the errno, e.g. for EFBIG under a
    file-size limit), `torch_save_atomic` raises the real error instead."""

    error = None

    def write(self, b):
        try:
            return super().write(b)
        except OSError as e:
            self.error = e
            raise


def torch_save_atomic(obj, path) -> None:
    """torch.save `obj` to `path` atomically (checkpoints)."""
    import torch

    with atomic_path(path) as tmp, _KeepWriteError(tmp, "wb") as raw, \
            io.BufferedWriter(raw) as f:
        try:
            torch.save(obj, f)
        except RuntimeError:
            if raw.error is not None:
                raise raw.error from None
            raise


def savefig_atomic(fig, path, **savefig_kwargs) -> None:
    """fig.savefig(path, **kwargs) atomically (format from the extension of `path`)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, **savefig_kwargs)
