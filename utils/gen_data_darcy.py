#!/usr/bin/env python
"""Generate train/val/test datasets of Darcy flow: -div(a(x) grad u) = f, a a log-normal field.

Usage (from the repository root): python utils/gen_data_darcy.py --help
All logic lives in utils/gen_common.py (shared with the other generators); the facts of
Darcy flow are its entry in the registry utils/pdes.py.
"""
import os
import sys

# Standalone script: make the repository root importable, and keep each process on one
# thread (parallelism comes from --workers processes).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

from utils.gen_common import main  # noqa: E402

if __name__ == "__main__":
    main("darcy")
