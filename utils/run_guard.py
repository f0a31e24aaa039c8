"""Guards of a run's lifetime: plain names, a directory lock, children that die with their
parent (DESIGN.md section 7, the run contract).

- `check_plain_name`: config, run and sweep names become directory names below the results
  root; a name with a separator, `..` or a leading dot would write outside it (or hide).
- `refuse_symlinks`: the files of a run directory are written in place, never through a link.
- `DirLock`: an exclusive `fcntl.flock` on `{dir}/.lock`, held while a process works in the
  directory. The kernel drops it when the process dies (kill -9 included), so a crashed run
  never leaves it held; a second process refuses at once with one line.
- `file_lock`: an exclusive flock on one file for a `with` block, waiting or not (a sweep
  trial's lock, so that two runners never run the same trial at once).
- `record_stop_signals`: SIGTERM / SIGUSR1 during train.py's start-up are recorded, and the
  trainer stops cleanly before its first step, instead of the process dying half-way.
- `die_with_parent`: Linux `prctl(PR_SET_PDEATHSIG)` for child processes (sweep trials,
  generator workers), so that killing the parent, even with kill -9, ends them too.
"""
import contextlib
import ctypes
import errno
import logging
import os
import re
import signal
import sys

from utils.errors import UserError
from utils.fileio import describe_os_error

log = logging.getLogger(__name__)

_PLAIN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+=@-]*")
LOCK_NAME = ".lock"


def refuse_symlinks(paths, what):
    """UserError naming the first of `paths` that is a symbolic link (dangling or not).

    The files of a run directory or an output folder are written in place (a lock, an
    appended log): a link would make us truncate or append to a file elsewhere, outside the
    directories the user named. The directories the user named may themselves be links."""
    for path in paths:
        if os.path.islink(path):
            raise UserError(f"{path} is a symbolic link (to {os.readlink(path)}): refused, the "
                            f"files of a {what} are written in place; remove the link")


def check_plain_name(value, what):
    """`value` as a str if it is a plain file name (letters, digits, `_ . + = @ -`, not
    starting with a dot: no separator, no `..`); otherwise UserError naming `what`."""
    text = str(value)
    if not _PLAIN.fullmatch(text) or len(text) > 200:
        raise UserError(f"{what} must be a plain name (letters, digits, _ . + = @ -, not "
                        f"starting with '.'), got {text!r}")
    return text


class DirLock:
    """Exclusive lock of a directory for the lifetime of this object's process (or `release`).

    `DirLock(path, what).acquire()` creates `path` if needed, opens `{path}/.lock` and takes an
    exclusive non-blocking flock; if another process holds it, raises UserError("... is in
    use by another process (pid N) ..."). The holder's pid is written into the file for that
    message only: the flock itself, not the file's existence, is the lock.
    """

    def __init__(self, path, what="directory"):
        self.path = os.path.abspath(path)
        self.what = what
        self.file = None

    def acquire(self):
        import fcntl

        try:
            os.makedirs(self.path, exist_ok=True)
            f = self._open()
        except OSError as e:
            raise UserError(f"cannot write in {self.what} {self.path}: "
                            f"{describe_os_error(e)}") from None
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            f.seek(0)
            holder = f.read().strip() or "?"
            f.close()
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise UserError(f"{self.what} {self.path} is in use by another process (pid "
                            f"{holder}); wait for it to finish or stop it first") from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self.file = f
        return self

    def _open(self):
        """The lock file, created if needed; never through a symbolic link (UserError): the
        holder's pid is written into it."""
        path = os.path.join(self.path, LOCK_NAME)
        refuse_symlinks([path], self.what)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        return os.fdopen(fd, "r+")

    def held_elsewhere(self):
        """True if another process holds the lock now (probe: take and release it)."""
        import fcntl

        p = os.path.join(self.path, LOCK_NAME)
        if not os.path.lexists(p):
            return False
        with self._open() as f:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return True
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
            return False

    def release(self):
        if self.file is not None:
            self.file.close()   # closing the descriptor drops the flock
            self.file = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False



@contextlib.contextmanager
def file_lock(path, wait=True):
    """Hold an exclusive flock on file `path` (created if needed) for a `with` block: yields
    True, or False at once when another holder has it and `wait` is False. Each call opens
    its own descriptor, so it excludes threads of one process as well as other processes."""
    import fcntl

    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
_pending_stop = []   # stop signals received while only recorded (start-up of train.py)


def _record_stop(signum, frame):
    _pending_stop.append(signum)


def record_stop_signals():
    """From now on SIGTERM / SIGUSR1 only record themselves instead of ending the process
    (exit 143 / 138): train.py calls it first thing, so a stop request during its start-up
    (imports, data, model, resume) becomes a clean stop before the first step
    (`pending_stop_signal`, read by the trainer). Main thread only.

    Returns `restore()`: the previous handlers back, the record cleared (idempotent)."""
    _pending_stop.clear()
    old = {sig: signal.signal(sig, _record_stop) for sig in STOP_SIGNALS}

    def restore():
        while old:
            sig, handler = old.popitem()
            signal.signal(sig, handler)
        _pending_stop.clear()
    return restore


def pending_stop_signal():
    """The first stop signal recorded by `record_stop_signals` (None: none)."""
    return _pending_stop[0] if _pending_stop else None


_PR_SET_PDEATHSIG = 1
_prctl = []   # libc's prctl, resolved once in the parent (no dlopen between fork and exec)


def _libc_prctl():
    if not _prctl and sys.platform.startswith("linux"):
        try:
            _prctl.append(ctypes.CDLL(None, use_errno=True).prctl)
        except (OSError, AttributeError):
            _prctl.append(None)
    return _prctl[0] if _prctl else None


def die_with_parent(sig=signal.SIGKILL, parent_pid=None):
    """Ask the kernel to send `sig` to this process when its parent dies (Linux; no-op
    elsewhere: there children may outlive a killed parent). Call in the child (a pool
    initializer). If the parent `parent_pid` is already gone (it died before the call),
    exit at once."""
    prctl = _libc_prctl()
    if prctl is None:
        return
    prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)


def child_of_this_process(sig=signal.SIGTERM):
    """A subprocess `preexec_fn` that makes the child get `sig` when this process dies.

    The death signal is kept across exec; only async-signal-safe work happens in the child
    (prctl, getppid, _exit), which makes it usable from threads too."""
    prctl, parent = _libc_prctl(), os.getpid()
    if prctl is None:
        return None

    def preexec():
        prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)
    return preexec
