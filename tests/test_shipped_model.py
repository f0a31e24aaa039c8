"""Every model shipped in pretrained/ reproduces its model card.

Fresh test data are generated with the project's generator from the training distribution
the card records (PDE, coefficient range, grid, source lattice, sparsity) with a seed that
neither the training nor the card's test data used; the model's mean relative L2 error on them
must match the card's test error within 4 standard errors of the difference of two sample
means: 4 * std * sqrt(1/N_FRESH + 1/n_test), std = the card's per-sample standard deviation.
(Both means estimate the same expectation from independent samples; 4 standard errors would
be exceeded by chance with probability ~1e-4, and the data are deterministic for the seed.)
A mixed-physics model's card holds one such result per PDE (`evaluations`); each is checked.
"""
import glob
import json
import math
import os

import h5py
import numpy as np
import pytest

from utils.YParams import REPO_ROOT
from utils.gen_pool import generate_split
from utils.gen_recipes import GenConfig
from utils.pretrained import load_pretrained

SHIPPED = sorted(os.path.dirname(p) for p in glob.glob(
    os.path.join(REPO_ROOT, "pretrained", "*", "model_card.json")))
N_FRESH = 64
FRESH_SEED = 20261130


def card_results(card):
    """The (training-distribution data dict, test result) pairs a card claims: metrics.test
    for a single-PDE model; for a mixed model, its evaluations on its training ranges (eval.py
    records a mixed run's test files of its PDE ranges, and no other, in its card)."""
    if card["pde"] != "mixed":
        return [(card["data"][0], card["metrics"]["test"])]
    out = [(data, r) for data in card["data"] for r in card.get("evaluations", {}).values()
           if r["pde"] == data["pde"] and r["coef_range"] == data["coef_range"]]
    assert out, "a mixed model's card must hold a test result on one of its training ranges"
    return out


def test_every_shipped_model_is_described():
    names = [os.path.basename(d) for d in SHIPPED]
    assert "poisson_k1_5" in names
    readme = open(os.path.join(REPO_ROOT, "pretrained", "README.md")).read()
    assert all(f"`{name}/`" in readme for name in names), names


@pytest.mark.parametrize("shipped", SHIPPED, ids=os.path.basename)
def test_shipped_model_reproduces_card_test_error(shipped, tmp_path):
    card = json.load(open(os.path.join(shipped, "model_card.json")))
    weights = os.path.join(shipped, card["weights"])
    assert os.path.getsize(weights) < 3e6            # small enough to live in the repository
    model = load_pretrained(weights, device="cpu")
    assert model.info["metrics"] == card["metrics"]  # the file carries the card's numbers
    for train, test in card_results(card):
        assert FRESH_SEED not in (train["seed"], test["test_seed"])
        lo, hi = train["coef_range"]
        cfg = GenConfig(pde=train["pde"], n=train["n"], ng=train["ng"], sparse=train["sparse"],
                        lo=lo, hi=hi)
        path = str(tmp_path / f"fresh_{train['pde']}.h5")
        generate_split(cfg, "test", N_FRESH, path, seed=FRESH_SEED, workers=1, chunk_size=64)
        with h5py.File(path, "r") as f:
            fields, tensor = f["fields"][:], f["tensor"][:]
        u = model.solve(fields[:, 0], tensor, pde=train["pde"])
        err = (u - fields[:, 1]).reshape(N_FRESH, -1)
        rel = np.linalg.norm(err, axis=1) / np.linalg.norm(fields[:, 1].reshape(N_FRESH, -1),
                                                           axis=1)
        tol = 4 * test["rel_l2_std"] * math.sqrt(1 / N_FRESH + 1 / test["n_test"])
        assert abs(rel.mean() - test["rel_l2_mean"]) <= tol, (train["pde"], rel.mean(),
                                                              test["rel_l2_mean"], tol)
