"""Analysis script on synthetic results tables: lr chosen on validation, examples needed."""
import csv
import math
import subprocess
import sys

import numpy as np
import pytest

from utils import scaling_plots as sp
from utils import scaling_stats as st

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
    assert st.examples_needed(ns, errs, 0.2) == (8.0, "<=")
    assert st.examples_needed(ns, errs, 0.01) == (32.0, ">")
    # first crossing counts, unsorted input is sorted by n
    n, b = st.examples_needed([32, 8, 16], [0.02, 0.1, 0.04], 0.05)
    assert b == "=" and 8 < n < 16
    assert math.isclose(n, np.exp(np.log(8) + np.log(0.5) / np.log(0.4) * np.log(2)))
    assert st.ratio_with_bound(100, "=", 8192, ">") == (81.92, ">=")
    assert st.ratio_with_bound(8, "<=", 800, "=") == (100.0, ">=")
    assert st.ratio_with_bound(100, ">", 800, "=")[1] == "<="
    assert st.ratio_with_bound(100, ">", 800, ">")[1] == "?"


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
    res = sp.analyse([str(path)], str(tmp_path / "out"),
                     zero_shot=[f"small={summary}", "small|mixed=0.125"])
    assert set(res["files"]) >= {"data_png", "model_png", "params_png", "zero_shot"}
    assert any(line == "[small] zero-shot test rel. L2 0.25" for line in res["lines"])
    # ordered by parameter count, not alphabetically
    assert st.model_order(st.clean_rows(rows), res["selected"]) == ["small", "large"]
    # error at fixed n vs parameter count: one row per (size, approach, n), the chosen lr's
    with open(res["files"]["params"]) as f:
        table = {(r["model"], int(r["n_train"])): r for r in csv.DictReader(f)}
    assert len(table) == 2 * 5
    assert float(table[("large", 64)]["n_params"]) == 2.56e8
    assert float(table[("large", 64)]["test"]) == pytest.approx(0.2 * 64 ** -0.5)
    assert float(table[("small", 8)]["lr"]) == 1e-3
    with open(res["files"]["zero_shot"]) as f:
        zs = {(r["model"], r["pretraining"]): float(r["test"]) for r in csv.DictReader(f)}
    assert zs == {("small", "own"): 0.25, ("small", "mixed"): 0.125}


def test_panels_of_one_size_keep_command_line_order(tmp_path):
    specs = []
    for k, panel in enumerate(("K 2.5-7.5", "K 5-10", "K 10-20")):   # not alphabetical
        rows = _power_law_rows(0.3 + 0.1 * k, 0.5, NS[:3], approach="finetune")
        specs.append(_write(tmp_path / f"r{k}.csv", rows) + f"@model={panel}")
    res = sp.analyse(specs, str(tmp_path / "out"))
    rows = st.clean_rows([r for s in specs for r in st.read_results(s)])
    assert st.model_order(rows, res["selected"]) == ["K 2.5-7.5", "K 5-10", "K 10-20"]
    assert "params_png" not in res["files"]          # one size: no model-scaling figure
    assert "model_png" not in res["files"]


def test_other_pdes_of_one_size_are_not_a_model_scaling(tmp_path):
    """AD and Helmholtz models of one size differ by a few input-channel weights: no
    error-vs-parameters figure for them; a 4x size difference gets one."""
    def specs(params):
        out = []
        for k, (panel, n_params) in enumerate(params):
            rows = [{**r, "n_params": n_params}
                    for r in _power_law_rows(0.3, 0.5, NS[:3], approach="finetune")]
            out.append(_write(tmp_path / f"{panel}.csv", rows) + f"@model={panel}")
        return out
    panels = specs([("AD", 264273), ("Helmholtz", 263889)])
    res = sp.analyse(panels, str(tmp_path / "a"))
    assert not {"params_png", "model_png"} & set(res["files"])
    rows = st.clean_rows([r for s in panels for r in st.read_results(s)])
    assert st.model_order(rows, res["selected"]) == ["AD", "Helmholtz"]   # command order
    res = sp.analyse(specs([("small", 66000), ("large", 264000)]), str(tmp_path / "b"))
    assert {"params_png", "model_png"} <= set(res["files"])


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


# ----------------------------------------------------------------------------- statistics
SEED_FIELDS = FIELDS + ["approach", "model", "seed", "subset_hash"]


def _write_seeded(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=SEED_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return str(path)


def _seeded_rows(rng, a, b, ns, seeds=3, sigma=0.1, c=0.0, approach="finetune"):
    """Seed-level rows of e = (a n^-b + c) * exp(sigma N(0,1)) at lr 1e-3; lr 1e-4 is worse
    on validation (x1.5) and better on test (x0.5), lr 1e-2 worse on both (x2)."""
    rows = []
    for n in ns:
        for s in range(seeds):
            e = (a * n ** -b + c) * math.exp(sigma * rng.standard_normal())
            for lr, fv, ft in ((1e-4, 1.5, 0.5), (1e-3, 1.0, 1.0), (1e-2, 2.0, 2.0)):
                rows.append(dict(lr=lr, n_train=n, seed=s, best_val_rel_l2=fv * e,
                                 test_rel_l2_mean=ft * e, status="done", approach=approach,
                                 subset_hash=f"h{n}_{s}"))
    return rows


def test_t_interval_by_hand():
    mean, sd, lo, hi = st.t_interval([0.10, 0.12, 0.14])
    # sd = 0.02; t(0.975, 2 dof) = 4.302652729911275 (tables); half = t * sd / sqrt(3)
    half = 4.302652729911275 * 0.02 / math.sqrt(3)
    assert (mean, sd) == (pytest.approx(0.12), pytest.approx(0.02))
    assert (lo, hi) == (pytest.approx(0.12 - half, rel=1e-9), pytest.approx(0.12 + half, rel=1e-9))
    m1, *rest = st.t_interval([0.3])
    assert m1 == 0.3 and all(math.isnan(x) for x in rest)


def test_power_law_fit_recovers_exponent_and_interval_covers():
    """200 synthetic studies (8 sizes x 3 seeds, 10% log-normal seed noise) of e = 0.5 n^-0.6:
    the estimate is unbiased, and the 95% interval covers the true b about 95% of the time
    (deterministic RNG; >= 0.85 leaves room, <= 0.995 catches intervals that are too wide)."""
    rng = np.random.default_rng(0)
    ns = np.repeat(2.0 ** np.arange(3, 11), 3)
    bs, covered, widths = [], [], []
    for _ in range(200):
        errs = 0.5 * ns ** -0.6 * np.exp(0.1 * rng.standard_normal(ns.size))
        fit = st.fit_power_law(ns, errs, allow_floor=False)
        bs.append(fit["b"])
        covered.append(fit["b_low"] <= 0.6 <= fit["b_high"])
        widths.append(fit["b_high"] - fit["b_low"])
    assert abs(np.mean(bs) - 0.6) < 0.005
    assert 0.85 <= np.mean(covered) <= 0.995
    assert np.mean(widths) < 0.1


def test_power_law_interval_matches_linear_regression():
    """Without a floor the fit is ordinary least squares of log err on log n: estimate and
    t-interval of the slope equal scipy's linregress."""
    from scipy import stats
    rng = np.random.default_rng(5)
    ns = np.repeat(2.0 ** np.arange(3, 9), 2)
    errs = 0.5 * ns ** -0.6 * np.exp(0.1 * rng.standard_normal(ns.size))
    fit = st.fit_power_law(ns, errs, allow_floor=False)
    ref = stats.linregress(np.log(ns), np.log(errs))
    half = stats.t.ppf(0.975, ns.size - 2) * ref.stderr
    assert fit["b"] == pytest.approx(-ref.slope)
    assert (fit["b_low"], fit["b_high"]) == (pytest.approx(-ref.slope - half),
                                             pytest.approx(-ref.slope + half))
    assert fit["a"] == pytest.approx(math.exp(ref.intercept)) and fit["dof"] == ns.size - 2


def test_floor_kept_only_when_supported():
    rng = np.random.default_rng(1)
    ns = np.repeat(2.0 ** np.arange(3, 13), 3)
    kept, covered, cs = 0, [], []
    for _ in range(100):
        errs = (2.0 * ns ** -0.8 + 0.01) * np.exp(0.03 * rng.standard_normal(ns.size))
        fit = st.fit_power_law(ns, errs)
        if fit["form"] == "a*n^-b+c":
            kept += 1
            cs.append(fit["c"])
            covered.append(fit["b_low"] <= 0.8 <= fit["b_high"])
    assert kept >= 95
    assert abs(np.median(cs) - 0.01) < 0.001
    assert np.mean(covered) >= 0.85
    # no floor in the data: the floor is (almost) never kept
    false = sum(st.fit_power_law(ns, 2.0 * ns ** -0.8 * np.exp(
        0.03 * rng.standard_normal(ns.size)))["form"] == "a*n^-b+c" for _ in range(100))
    assert false <= 10
    # one seed: no interval, no floor
    one = st.fit_power_law(ns[::3], 2.0 * ns[::3] ** -0.8 + 0.01, with_interval=False)
    assert one["form"] == "a*n^-b" and math.isnan(one["b_low"])


def test_lr_chosen_on_mean_validation_over_seeds_with_edge_flag(tmp_path):
    rows = []
    # n=64: lr 1e-3 has the single best validation seed (0.01) but the worse mean (0.07),
    # and by far the best test errors; lr 3e-4 has the best mean validation error (0.05).
    for lr, vals, tests in ((1e-3, [0.01, 0.10, 0.10], [0.001, 0.001, 0.001]),
                            (3e-4, [0.05, 0.04, 0.06], [0.05, 0.07, 0.06]),
                            (1e-4, [0.2, 0.2, 0.2], [0.0001, 0.0001, 0.0001])):
        rows += [dict(lr=lr, n_train=64, seed=s, best_val_rel_l2=v, test_rel_l2_mean=t,
                      status="done") for s, (v, t) in enumerate(zip(vals, tests))]
    # n=128: the largest lr wins (high edge); n=256: only one lr (single)
    rows += [dict(lr=lr, n_train=128, seed=s, best_val_rel_l2=0.1 * lr ** 0.1,
                  test_rel_l2_mean=0.02, status="done") for lr in (1e-4, 1e-3) for s in range(2)]
    rows += [dict(lr=1e-3, n_train=256, seed=0, best_val_rel_l2=0.01, test_rel_l2_mean=0.01,
                  status="done")]
    path = _write_seeded(tmp_path / "r.csv", rows)
    res = sp.analyse([path + "@approach=finetune"], str(tmp_path / "out"))
    sel = {s["n_train"]: s for s in res["selected"]}
    assert sel[64]["lr"] == 3e-4 and sel[64]["val"] == pytest.approx(0.05)
    assert sel[64]["n_seeds"] == 3 and sel[64]["test"] == pytest.approx(0.06)
    half = 4.302652729911275 * 0.01 / math.sqrt(3)
    assert sel[64]["test_ci_low"] == pytest.approx(0.06 - half)
    assert sel[64]["test_ci_high"] == pytest.approx(0.06 + half)
    assert [sel[n]["lr_at_edge"] for n in (64, 128, 256)] == ["", "low", "single"]
    assert sel[128]["lr"] == 1e-4
    with open(res["files"]["selected"]) as f:
        table = {int(r["n_train"]): r for r in csv.DictReader(f)}
    assert table[64]["lr_at_edge"] == "" and table[128]["lr_at_edge"] == "low"
    assert float(table[64]["test_ci_high"]) == pytest.approx(0.06 + half)
    assert "t-interval" in table[64]["interval"]
    assert any("at the low edge" in line for line in res["lines"])
    with open(res["files"]["seeds"]) as f:
        seeds = [r for r in csv.DictReader(f) if r["n_train"] == "64"]
    assert [(r["seed"], float(r["lr"]), float(r["test"])) for r in seeds] == [
        ("0", 3e-4, 0.05), ("1", 3e-4, 0.07), ("2", 3e-4, 0.06)]
    # the high edge
    rows2 = [dict(r, best_val_rel_l2=0.1 / r["lr"]) for r in rows if r["n_train"] == 128]
    res2 = sp.analyse([_write_seeded(tmp_path / "r2.csv", rows2)], str(tmp_path / "out2"))
    assert res2["selected"][0]["lr_at_edge"] == "high" and res2["selected"][0]["lr"] == 1e-3


def test_effective_data_exact_on_power_laws(tmp_path):
    a_ft, b_ft, a_sc, b_sc = 0.2, 0.5, 3.0, 0.7
    ns = NS[:8]                                    # 8 .. 1024
    ft = _write(tmp_path / "ft.csv", _power_law_rows(a_ft, b_ft, ns))
    sc = _write(tmp_path / "sc.csv", _power_law_rows(a_sc, b_sc, ns))
    res = sp.analyse([ft + "@approach=finetune", sc + "@approach=scratch"],
                     str(tmp_path / "out"), targets=[0.01])
    fit = res["fits"][("model", "scratch")]
    assert fit["b"] == pytest.approx(b_sc, rel=1e-9) and fit["a"] == pytest.approx(a_sc)
    assert len(res["effective"]) == len(ns)
    for e in res["effective"]:
        n = e["n_train"]
        d_e = (a_sc / (a_ft * n ** -b_ft)) ** (1 / b_sc)   # scratch n with the same error
        assert e["scratch_equivalent_n"] == pytest.approx(d_e, rel=1e-9)
        assert e["effective_data"] == pytest.approx(d_e - n, rel=1e-9)
        assert e["extrapolated"] == int(d_e > 1024)
        assert math.isnan(e["D_T_low"])            # one seed: no interval
    with open(res["files"]["effective"]) as f:
        written = list(csv.DictReader(f))
    assert float(written[0]["effective_data"]) == pytest.approx(
        res["effective"][0]["effective_data"])
    with open(res["files"]["effective_png"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_fit_inverse_with_floor_and_never_reached():
    fit = {"a": 2.0, "b": 0.8, "c": 0.01, "form": "a*n^-b+c", "cov": None}
    n, se = st.fit_inverse(fit, 0.02)
    assert n == pytest.approx((0.01 / 2.0) ** (-1 / 0.8)) and math.isnan(se)
    assert st.fit_inverse(fit, 0.005)[0] == math.inf          # below the floor


def test_ratio_interval_covers_true_ratio():
    """Examples-needed ratio from the fits (delta method): covers the truth in most of 100
    synthetic studies with 3 seeds."""
    rng = np.random.default_rng(2)
    a_ft, b_ft, a_sc, b_sc, target = 0.2, 0.5, 3.0, 0.7, 0.02
    true = (a_sc / target) ** (1 / b_sc) / (a_ft / target) ** (1 / b_ft)
    ns = [2 ** k for k in range(3, 11)]
    covered, est = [], []
    for _ in range(100):
        rows = [r for r in _seeded_rows(rng, a_ft, b_ft, ns) if r["lr"] == 1e-3]
        rows += [dict(r, approach="scratch") for r in _seeded_rows(rng, a_sc, b_sc, ns)
                 if r["lr"] == 1e-3]
        selected, points = st.select_on_validation(st.clean_rows(rows))
        fits = st.fit_table(selected, points)
        (row,) = st.examples_table(selected, [target], fits=fits)
        est.append(row["ratio_fit"])
        # independent fits: the variances of log n add (se = half-width / t quantile)
        dofs = [fits[("model", k)]["dof"] for k in ("finetune", "scratch")]
        se = [math.log(row[f"{k}_n_fit_high"] / row[f"{k}_n_fit"]) / st._t_quantile(d)
              for k, d in zip(("finetune", "scratch"), dofs)]
        ratio_half = math.log(row["ratio_fit_high"] / row["ratio_fit"])
        assert ratio_half == pytest.approx(st._t_quantile(min(dofs)) * math.hypot(*se))
        covered.append(row["ratio_fit_low"] <= true <= row["ratio_fit_high"])
    assert abs(np.median(est) / true - 1) < 0.05
    assert 0.85 <= np.mean(covered) <= 0.995


def test_seeded_study_end_to_end(tmp_path, capsys):
    rng = np.random.default_rng(3)
    ns = [2 ** k for k in range(3, 11)]
    ft = _write_seeded(tmp_path / "ft.csv", _seeded_rows(rng, 0.2, 0.5, ns))
    sc = _write_seeded(tmp_path / "sc.csv", _seeded_rows(rng, 3.0, 0.7, ns, approach="scratch"))
    out = tmp_path / "out"
    sp.main([ft, sc, "--out_dir", str(out), "--prefix", "s", "--target", "0.02",
             "--zero_shot", "0.3", "--title", "synthetic", "--fit_min_n", "16"])
    stdout = capsys.readouterr().out
    for name in ("selected", "seeds", "fits", "examples_needed", "effective_data"):
        assert (out / f"s_{name}.csv").stat().st_size > 0
    for name in ("data_scaling", "effective_data"):
        assert (out / f"s_{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(out / "s_selected.csv") as f:
        sel = list(csv.DictReader(f))
    assert all(float(r["lr"]) == 1e-3 and r["n_seeds"] == "3" for r in sel)
    assert all(float(r["test_ci_low"]) < float(r["test"]) < float(r["test_ci_high"])
               for r in sel)
    with open(out / "s_fits.csv") as f:
        fits = {r["approach"]: r for r in csv.DictReader(f)}
    for approach, b in (("finetune", 0.5), ("scratch", 0.7)):
        assert float(fits[approach]["b_low"]) <= b <= float(fits[approach]["b_high"])
        assert float(fits[approach]["n_min"]) == 16                  # --fit_min_n
    assert "finetune: test err = " in stdout and "effective data transferred" in stdout
    with open(out / "s_seeds.csv") as f:
        seeds = list(csv.DictReader(f))
    assert len(seeds) == 2 * len(ns) * 3
    assert all(r["subset_hash"] == f"h{r['n_train']}_{r['seed']}" for r in seeds)


def test_subset_mismatch_across_lrs_is_reported(tmp_path, caplog):
    rows = [dict(lr=lr, n_train=8, seed=0, best_val_rel_l2=0.1, test_rel_l2_mean=0.1,
                 status="done", subset_hash=h) for lr, h in ((1e-3, "aa"), (1e-4, "bb"))]
    rows += [dict(r, n_train=16) for r in rows]
    with caplog.at_level("WARNING"):
        sp.analyse([_write_seeded(tmp_path / "r.csv", rows)], str(tmp_path / "out"))
    assert "lrs trained on different subsets ['aa', 'bb']" in caplog.text


def test_old_table_without_seed_has_point_estimates_only(tmp_path):
    path = _write(tmp_path / "old.csv", _power_law_rows(0.2, 0.5, NS[:6], approach="finetune"))
    res = sp.analyse([path], str(tmp_path / "out"))
    assert all(s["n_seeds"] == 1 and math.isnan(s["test_ci_low"]) for s in res["selected"])
    (fit,) = res["fits"].values()
    assert fit["b"] == pytest.approx(0.5) and math.isnan(fit["b_low"])
    with open(res["files"]["selected"]) as f:
        row = next(csv.DictReader(f))
    assert row["test_ci_low"] == "nan" and row["n_seeds"] == "1"
    with open(res["files"]["seeds"]) as f:
        assert {r["seed"] for r in csv.DictReader(f)} == {"0"}


def test_flat_fit_never_reaches_target_without_overflow():
    """A fit with b near 0 (tiny or noisy studies) puts the target at n = e^5000: 'never'."""
    for cov in (None, np.eye(2)):
        fit = {"a": 1.0, "b": 1e-4, "c": 0.0, "cov": cov, "form": "a*n^-b"}
        n, _ = st.fit_inverse(fit, 0.5)
        assert n == math.inf


def test_capped_while_improving_flag_in_tables(tmp_path, capsys):
    """The sweep column `capped_while_improving` (utils/trainer.py) is counted over the chosen
    lr's seeds: in the selected and seed tables, the summary lines and the CLI's table; a
    flag at another lr does not count; a table without the column counts 0. The step cap
    (`max_steps`) of the chosen lr's seeds is in both tables (empty without the column)."""
    rows = [dict(lr=lr, n_train=n, seed=s, best_val_rel_l2=0.1 if lr == 1e-3 else 0.2,
                 test_rel_l2_mean=0.05, status="done",
                 capped_while_improving=(n == 64 and s < 2) or lr == 1e-4,
                 max_steps=(10000 if n == 64 else 30000) + (lr != 1e-3))
            for n in (64, 128) for lr in (1e-4, 1e-3, 1e-2) for s in range(3)]
    path = str(tmp_path / "r.csv")
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=SEED_FIELDS + ["capped_while_improving",
                                                        "max_steps"])
        w.writeheader()
        w.writerows(rows)
    res = sp.analyse([path + "@approach=scratch"], str(tmp_path / "out"))
    sel = {s["n_train"]: s for s in res["selected"]}
    assert sel[64]["lr"] == sel[128]["lr"] == 1e-3
    assert (sel[64]["capped_while_improving"], sel[128]["capped_while_improving"]) == (2, 0)
    with open(res["files"]["selected"]) as f:
        assert [(r["capped_while_improving"], r["max_steps"]) for r in csv.DictReader(f)] == [
            ("2", "10000"), ("0", "30000")]
    with open(res["files"]["seeds"]) as f:
        assert [(r["capped_while_improving"], r["max_steps"])
                for r in csv.DictReader(f)][:4] == [
            ("True", "10000"), ("True", "10000"), ("False", "10000"), ("False", "30000")]
    assert [line for line in res["lines"] if "step cap" in line] == [
        "[model] scratch n_train=64: 2 of 3 seed(s) ended at the step cap while still "
        "improving (budget-limited, not converged)"]
    sp.main([path + "@approach=scratch", "--out_dir", str(tmp_path / "cli")])
    assert "capped 2/3" in capsys.readouterr().out
    old = sp.analyse([_write_seeded(tmp_path / "old.csv", rows)], str(tmp_path / "old"))
    assert all(s["capped_while_improving"] == 0 and s["max_steps"] == ""
               for s in old["selected"])
