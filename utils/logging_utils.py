"""THE logging set-up of the entry points (called once by utils/cli.py run_cli).

Library modules only use `logging.getLogger(__name__)` / `logging.info`; they never configure
logging. Rank 0 logs at the requested level, other ranks warnings and errors only, prefixed
with their rank under DDP.
"""
import logging
import os
import sys

_FORMAT = "%(asctime)s %(levelname)s %(message)s"


class _StderrHandler(logging.StreamHandler):
    """Writes to the CURRENT sys.stderr (which test runners and notebooks may swap)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ assigns it; always use sys.stderr
        pass


def config_logger(rank=None, level=logging.INFO):
    """Configure the root logger on stderr; ranks other than 0 log warnings and errors only.

    Calling it again replaces the handler it installed before (and only that one)."""
    if rank is None:
        rank = int(os.environ.get("RANK", 0))
    root = logging.getLogger()
    for h in list(root.handlers):
        if isinstance(h, _StderrHandler):
            root.removeHandler(h)
    handler = _StderrHandler()
    prefix = f"[rank {rank}] " if int(os.environ.get("WORLD_SIZE", 1)) > 1 else ""
    handler.setFormatter(logging.Formatter(prefix + _FORMAT, datefmt="%H:%M:%S"))
    root.addHandler(handler)
    root.setLevel(level if rank == 0 else logging.WARNING)
