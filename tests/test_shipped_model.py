"""The pre-trained model shipped in pretrained/poisson_k1_5/ reproduces its model card.

Fresh test data are generated with the project's generator from the training distribution
the card records (PDE, coefficient range, grid, source lattice, sparsity) with a seed that
neither the training nor the card's test data used; the model's mean relative L2 error on them
must match the card's test error within 4 standard errors of the difference of two sample
means: 4 * std * sqrt(1/N_FRESH + 1/n_test), std = the card's per-sample standard deviation.
(Both means estimate the same expectation from independent samples; 4 standard errors would
be exceeded by chance with probability ~1e-4, and the data are deterministic for the seed.)
"""
import json
import math
import os

import h5py
import numpy as np

from utils.YParams import REPO_ROOT
from utils.gen_common import GenConfig, generate_split
from utils.pretrained import load_pretrained

SHIPPED = os.path.join(REPO_ROOT, "pretrained", "poisson_k1_5")
N_FRESH = 64
FRESH_SEED = 20261130


def test_shipped_model_reproduces_card_test_error(tmp_path):
    card = json.load(open(os.path.join(SHIPPED, "model_card.json")))
    weights = os.path.join(SHIPPED, card["weights"])
    assert os.path.getsize(weights) < 5e6            # small enough to live in the repository
    model = load_pretrained(weights, device="cpu")
    test = card["metrics"]["test"]
    assert model.info["metrics"]["test"] == test     # the file carries the card's numbers
    train = card["data"][0]
    assert FRESH_SEED not in (train["seed"], test["test_seed"])
    lo, hi = train["coef_range"]
    cfg = GenConfig(pde=train["pde"], n=train["n"], ng=train["ng"], sparse=train["sparse"],
                    lo=lo, hi=hi)
    path = str(tmp_path / "fresh_test.h5")
    generate_split(cfg, "test", N_FRESH, path, seed=FRESH_SEED, workers=1, chunk_size=64)
    with h5py.File(path, "r") as f:
        fields, tensor = f["fields"][:], f["tensor"][:]
    u = model.solve(fields[:, 0], tensor)
    err = (u - fields[:, 1]).reshape(N_FRESH, -1)
    rel = np.linalg.norm(err, axis=1) / np.linalg.norm(fields[:, 1].reshape(N_FRESH, -1), axis=1)
    tol = 4 * test["rel_l2_std"] * math.sqrt(1 / N_FRESH + 1 / test["n_test"])
    assert abs(rel.mean() - test["rel_l2_mean"]) <= tol, (rel.mean(), test["rel_l2_mean"], tol)
