"""Logging setup shared by the entry points (rank 0 logs INFO, other ranks only warnings)."""
import logging
import os
import sys

_FORMAT = "%(asctime)s %(levelname)s %(message)s"


def config_logger(rank=None, level=logging.INFO):
    """Configure the root logger on stderr; ranks other than 0 log warnings and errors only."""
    if rank is None:
        rank = int(os.environ.get("RANK", 0))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    prefix = f"[rank {rank}] " if int(os.environ.get("WORLD_SIZE", 1)) > 1 else ""
    handler.setFormatter(logging.Formatter(prefix + _FORMAT, datefmt="%H:%M:%S"))
    root.addHandler(handler)
    root.setLevel(level if rank == 0 else logging.WARNING)
