"""Keep glibc from returning large CPU activations to the OS after every training step.

Why: glibc's malloc serves every request above ``M_MMAP_THRESHOLD`` (dynamic, capped at
32 MiB on 64-bit) with a fresh ``mmap`` and ``munmap``s it on free. An FNO step at 128x128
allocates dozens of (B, 64, 128, 128) float32 activations (32 MiB each at B = 8) and the
spectra of the FFTs, so each step page-faults and zero-fills all of them again; freed heap
memory above ``M_TRIM_THRESHOLD`` is likewise given back and re-faulted. On CPU this costs
about 2x per step (measured by ``benchmarks/bench_train.py``).

Fix: raise the mmap threshold to the largest value ``mallopt`` takes (2 GiB - 1) and disable
trimming (``M_TRIM_THRESHOLD = -1``, documented in mallopt(3)), so the freed activations stay in
the heap and are reused by the next step. The resident memory then stays at the peak of one
step instead of oscillating; it is not a leak (the same chunks are reused every step).

Equivalent launch-time setting (what ``configure_malloc`` honours if already set):
``GLIBC_TUNABLES=glibc.malloc.mmap_threshold=2147483647:glibc.malloc.trim_threshold=17179869184``.
Opt out with ``FNO_NO_MALLOC_TUNING=1``.

``memory_available`` is the memory the checks before large allocations compare against (the
generators' buffers, a model's weights).
"""
import ctypes
import logging
import os
import platform
import sys

logger = logging.getLogger(__name__)

OPT_OUT_ENV = "FNO_NO_MALLOC_TUNING"

# mallopt(3) parameter numbers (glibc malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

# mallopt takes a C int: the largest threshold it can express. Larger single allocations are
# rare (> 2 GiB) and their page-fault cost is small relative to the work done on them.
MMAP_THRESHOLD = 2**31 - 1
TRIM_DISABLED = -1  # mallopt(3): "Setting M_TRIM_THRESHOLD to -1 disables trimming completely."

_applied = False


def memory_available():
    """Bytes of memory available to new allocations (Linux MemAvailable; None elsewhere)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _truthy(value):
    return value is not None and value.strip().lower() not in ("", "0", "false", "no", "off")


def _is_glibc_linux():
    return sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def configure_malloc():
    """Apply the glibc malloc settings to this process; return True if they are in effect.

    Returns False (and changes nothing) when: not Linux/glibc, ``FNO_NO_MALLOC_TUNING`` is
    set to a true value, ``GLIBC_TUNABLES`` already sets a ``glibc.malloc`` tunable (the user's
    choice wins), or ``mallopt`` rejects a value. Safe to call more than once.
    """
    global _applied
    if _applied:
        return True
    if _truthy(os.environ.get(OPT_OUT_ENV)):
        logger.info("malloc tuning disabled by %s", OPT_OUT_ENV)
        return False
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        logger.info("malloc tuning skipped: GLIBC_TUNABLES already sets glibc.malloc")
        return False
    if not _is_glibc_linux():
        logger.debug("malloc tuning skipped: not Linux/glibc")
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError) as exc:
        logger.warning("malloc tuning skipped: cannot load glibc mallopt (%s)", exc)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # Trim first: disabling it is harmless on its own; the mmap threshold is the main fix.
    ok = mallopt(M_TRIM_THRESHOLD, TRIM_DISABLED) == 1
    ok = ok and mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    if not ok:
        logger.warning("malloc tuning: mallopt rejected the settings; CPU steps may be slower")
        return False
    _applied = True
    logger.debug("malloc tuning applied: mmap_threshold=%d, trim disabled", MMAP_THRESHOLD)
    return True
