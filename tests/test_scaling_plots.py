"""Analysis script on synthetic results tables: lr chosen on validation, examples needed."""
import csv
import math
import subprocess
import sys

import numpy as np
import pytest

from utils import scaling_plots as sp

FIELDS = ["trial", "lr", "subsample", "n_train", "best_val_rel_l2", "test_rel_l2_mean",
          "n_params", "status"]


def _write(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS + ["approach"], extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return str(path)


def _power_law_rows(a, b, ns, approach=None):
    """Two lrs per size: 1e-3 follows e = a n^-b on val AND test; 1e-4 is worse on
    validation (x1.5) but BETTER on test (x0.5): selecting on test would be wrong."""
    rows = []
    for n in ns:
        e = a * n ** -b
        rows.append(dict(lr=1e-3, n_train=n, best_val_rel_l2=e, test_rel_l2_mean=e,
                         status="done", approach=approach))
        rows.append(dict(lr=1e-4, n_train=n, best_val_rel_l2=1.5 * e,
                         test_rel_l2_mean=0.5 * e, status="done", approach=approach))
    return rows


NS = [2 ** k for k in range(3, 14)]          # 8 .. 8192 examples


def test_lr_chosen_on_validation_not_test(tmp_path):
    rows = [
        # n=64: validation prefers 1e-3, test would prefer 1e-4
        dict(lr=1e-3, n_train=64, best_val_rel_l2=0.05, test_rel_l2_mean=0.08),
        dict(lr=1e-4, n_train=64, best_val_rel_l2=0.06, test_rel_l2_mean=0.03),
        # n=128: two seeds of 1e-4 average to the best validation error
        dict(lr=1e-3, n_train=128, best_val_rel_l2=0.040, test_rel_l2_mean=0.010),
        dict(lr=1e-4, n_train=128, best_val_rel_l2=0.030, test_rel_l2_mean=0.050),
        dict(lr=1e-4, n_train=128, best_val_rel_l2=0.036, test_rel_l2_mean=0.070),
        # unfinished trials are ignored even with tempting numbers
        dict(lr=5e-4, n_train=64, best_val_rel_l2=0.001, test_rel_l2_mean=0.001,
             status="failed"),
    ]
    for r in rows:
        r.setdefault("status", "done")
    path = _write(tmp_path / "r.csv", rows)
    res = sp.analyse([path + "@approach=finetune"], str(tmp_path / "out"), prefix="t")
    sel = {s["n_train"]: s for s in res["selected"]}
    assert sel[64]["lr"] == 1e-3 and sel[64]["test"] == pytest.approx(0.08)
    assert sel[128]["lr"] == 1e-4 and sel[128]["test"] == pytest.approx(0.06)
    assert sel[128]["val"] == pytest.approx(0.033)
    assert sel[64]["n_lrs"] == 2
    with open(res["files"]["selected"]) as f:
        table = list(csv.DictReader(f))
    assert [(int(r["n_train"]), float(r["lr"])) for r in table] == [(64, 1e-3), (128, 1e-4)]


def test_examples_needed_exact_on_power_law(tmp_path):
    a_ft, b_ft, a_sc, b_sc, target = 0.2, 0.5, 3.0, 0.7, 1e-2
    ft = _write(tmp_path / "ft.csv", _power_law_rows(a_ft, b_ft, NS))
    sc = _write(tmp_path / "sc.csv", _power_law_rows(a_sc, b_sc, NS))
    res = sp.analyse([ft + "@approach=finetune,model=m1", sc + "@approach=scratch,model=m1"],
                     str(tmp_path / "out"), targets=[target], zero_shot=["0.3"])
    (row,) = res["examples"]
    n_ft = (a_ft / target) ** (1 / b_ft)      # 400
    n_sc = (a_sc / target) ** (1 / b_sc)      # ~3458
    assert row["finetune_bound"] == row["scratch_bound"] == row["ratio_bound"] == "="
    assert row["finetune_n"] == pytest.approx(n_ft, rel=1e-9)
    assert row["scratch_n"] == pytest.approx(n_sc, rel=1e-9)
    assert row["ratio"] == pytest.approx(n_sc / n_ft, rel=1e-9)
    with open(res["files"]["examples"]) as f:
        (written,) = list(csv.DictReader(f))
    assert float(written["ratio"]) == pytest.approx(n_sc / n_ft, rel=1e-9)
    assert any("ratio scratch/finetune 8.64" in line for line in res["lines"])
    with open(res["files"]["data_png"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_examples_needed_bounds():
    ns, errs = [8, 16, 32], [0.1, 0.05, 0.02]
    assert sp.examples_needed(ns, errs, 0.2) == (8.0, "<=")
    assert sp.examples_needed(ns, errs, 0.01) == (32.0, ">")
    # first crossing counts, unsorted input is sorted by n
    n, b = sp.examples_needed([32, 8, 16], [0.02, 0.1, 0.04], 0.05)
    assert b == "=" and 8 < n < 16
    assert math.isclose(n, np.exp(np.log(8) + np.log(0.5) / np.log(0.4) * np.log(2)))
    assert sp.ratio_with_bound(100, "=", 8192, ">") == (81.92, ">=")
    assert sp.ratio_with_bound(8, "<=", 800, "=") == (100.0, ">=")
    assert sp.ratio_with_bound(100, ">", 800, "=")[1] == "<="
    assert sp.ratio_with_bound(100, ">", 800, ">")[1] == "?"


def test_model_size_panels_and_zero_shot(tmp_path):
    rows = []
    for model, n_params, a in (("small", 6.4e4, 0.4), ("large", 2.56e8, 0.2)):
        for r in _power_law_rows(a, 0.5, NS[:5], approach="finetune"):
            rows.append({**r, "n_params": n_params, "model": model})
    path = tmp_path / "r.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS + ["approach", "model"], extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    summary = tmp_path / "zs.json"
    summary.write_text('{"test_rel_l2_mean": 0.25}')
    res = sp.analyse([str(path)], str(tmp_path / "out"), zero_shot=[f"small={summary}"])
    assert set(res["files"]) >= {"data_png", "model_png"}
    assert any(line == "[small] zero-shot test rel. L2 0.25" for line in res["lines"])
    # ordered by parameter count, not alphabetically
    assert sp._model_order(sp.clean_rows(rows), res["selected"]) == ["small", "large"]


def test_cli_errors_are_one_line(tmp_path):
    cmd = [sys.executable, "utils/scaling_plots.py", str(tmp_path / "missing.csv"),
           "--out_dir", str(tmp_path)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    assert p.returncode == 2
    assert p.stderr.strip().startswith("error: results table not found")
    assert len(p.stderr.strip().splitlines()) == 1
    bad = tmp_path / "bad.csv"
    bad.write_text("trial,lr\nx,1e-3\n")
    p = subprocess.run(cmd[:2] + [str(bad), "--out_dir", str(tmp_path)],
                       capture_output=True, text=True)
    assert p.returncode == 2 and "lacks column" in p.stderr
