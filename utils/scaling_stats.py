"""Scaling-study statistics: sweep results tables -> the numbers of the analysis.

Reading (`read_results`, `clean_rows`), the learning-rate choice on validation
(`select_on_validation`, by the rule of `utils/lr_choice.py`), t-intervals over seeds,
power-law fits, examples needed for a target error and the effective data transferred. No
plotting (`utils/scaling_figures.py`) and no files (`utils/scaling_plots.py`, the CLI).

Input: rows of the `results.csv` tables written by `utils/sweeps.py` (one row per trial with
at least `n_train`, `lr`, `best_val_rel_l2`, `test_rel_l2_mean`; optional `seed`,
`subset_hash`, `status`, `approach`, `model`, `n_params`). A table without a `seed` column
(older sweeps) is read as one seed (`seed` = 0): every number is then a point estimate and
every interval is empty (NaN in the CSVs, no band in the figures).

What is computed, per panel (model) and approach (finetune / scratch):

* Learning-rate choice. For each (model, approach, n_train) the lr is chosen on the
  VALIDATION error averaged over seeds (repeated rows of one lr and seed are averaged first);
  test errors never take part in the choice. A choice at the smallest or largest lr tried
  (or with a single lr) is flagged `lr_at_edge` = low / high / single: the grid may not
  contain the best lr there.
* Budget-limited runs. A trial whose `capped_while_improving` column is true (train_summary
  .json of utils/trainer.py: it ended at its step cap while its validation loss was still
  improving) is counted per choice: `capped_while_improving` = how many of the chosen lr's
  seeds were flagged (0 for tables without the column). `max_steps` says what budget a
  reading rests on: the step cap of the chosen lr's seeds (results.csv `max_steps`, the
  largest if they differ; empty for tables without the column).
* Mean test error over seeds at the chosen lr, with a 95% t-interval: mean +- t(0.975, k-1)
  * sd / sqrt(k) over the k seeds (sd with ddof=1). A t-interval, not a bootstrap: with the
  few seeds a study affords (k = 3) a bootstrap over seeds can only produce 10 distinct
  resamples and its percentile interval is far too narrow, whereas the t-interval is exact
  for normally distributed seed errors. The interval is on the arithmetic mean, so its lower
  end can be <= 0 with a large seed spread (the band then reaches the bottom of the axis).
* Power-law fit per approach on the seed-level points (every seed at every n, at the chosen
  lr): log err = log a - b log n by least squares, optionally with a floor,
  err = a n^-b + c (scipy `curve_fit`, residuals in log err as well). Intervals are 95%
  t-intervals from the fit's covariance (residual variance, n_points - n_params degrees of
  freedom). The floor is kept only when the data support it: an F-test of the floor model
  against the pure power law gives p < 0.05, c > 0 AND the interval on c excludes 0.
  Without seeds only the pure power law is fitted and no interval is reported: one point per
  n gives no measure of the noise apart from the misfit itself. `--fit_min_n` leaves small
  sizes (pre-asymptotic plateau) out of the fit.
  The seed-level points of one seed are not independent across n (nested subsets, one init
  per seed), which the interval ignores; a bootstrap over whole seeds would respect that but
  is degenerate with 3 seeds, hence the covariance-based interval.
* Examples needed for a target error: (a) model-free, interpolated in log-log on the mean
  curve between the two measured sizes where it first crosses the target (with bounds when
  it does not cross inside the measured range); (b) from the fits, n = ((target - c) / a)
  ^ (-1/b), with its interval and the ratio scratch / finetune with its interval, both by
  the delta method on log n through the fits' parameter covariances (the two fits are
  independent, so the variances of log n add), t quantile with the smaller of the two fits'
  degrees of freedom. `extrapolated` marks an n outside the fitted range.
* Effective data transferred (Hernandez et al. 2021, "Scaling laws for transfer"): at each
  fine-tuned size n, D_E(n) is the number of from-scratch examples at which the from-scratch
  fit reaches the mean fine-tuned test error at n, and D_T(n) = D_E(n) - n is what the
  pre-training is worth in extra downstream examples. Its interval combines (delta method on
  log D_E) the from-scratch fit covariance and the standard error of the fine-tuned mean;
  `extrapolated` marks a D_E outside the from-scratch sizes that were fitted.
"""
import csv
import json
import logging
import math
import os
import warnings
from collections import defaultdict

import numpy as np
from scipy import optimize, stats

from utils.errors import AnalysisError
from utils.lr_choice import choose_lr

logger = logging.getLogger(__name__)

VAL_COL, TEST_COL, N_COL, LR_COL, SEED_COL = (
    "best_val_rel_l2", "test_rel_l2_mean", "n_train", "lr", "seed")
CAPPED_COL = "capped_while_improving"
CAP_COL = "max_steps"            # a trial's step cap (results.csv, utils/sweep_results.py)
CONF = 0.95                      # confidence level of every interval
FLOOR_P = 0.05                   # F-test level at which a floor c is kept
CI_KIND = "95% t-interval over seeds"
NAN = math.nan


# ----------------------------------------------------------------------------- reading
def _float(v):
    try:
        x = float(v)
    except (TypeError, ValueError):
        return math.nan
    return x


def read_results(spec):
    """Rows (dicts of str) of one results CSV; `path@k=v,k2=v2` adds/overrides columns."""
    path, _, extra = spec.partition("@")
    if not os.path.isfile(path):
        raise AnalysisError(f"results table not found: {path}")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    cols = {}
    for item in filter(None, extra.split(",")):
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise AnalysisError(f"column override must be KEY=VALUE (got {item!r} in {spec!r})")
        cols[k] = v
    for r in rows:
        r.update(cols)
    missing = {N_COL, LR_COL, VAL_COL, TEST_COL} - set(rows[0] if rows else {})
    if missing:
        raise AnalysisError(f"{path} lacks column(s) {sorted(missing)}")
    return rows


def _model_label(row, panel_col="model"):
    """Panel label: the `panel_col` column, else the parameter count, else 'model'."""
    if row.get(panel_col):
        return row[panel_col]
    n = _float(row.get("n_params"))
    if math.isfinite(n):
        return f"{n / 1e6:.3g}M params" if n >= 1e6 else f"{n / 1e3:.3g}K params"
    return "model"


def _seed_label(v):
    """Seed cell -> label; empty / missing (old tables) -> '0'; '1.0' -> '1'."""
    v = "" if v is None else str(v).strip()
    x = _float(v)
    if not v:
        return "0"
    return str(int(x)) if math.isfinite(x) and x == int(x) else v


def clean_rows(rows, panel_col="model"):
    """Keep finished trials with finite numbers -> list of dicts with typed fields.

    Each output dict: model (str: the panel label, from `panel_col`, e.g. `model` for model
    sizes or `downstream` for distribution shifts), approach (str), n_train (int),
    lr (float), seed (str, '0' when the table has no seed column), subset_hash (str, '' if
    absent), val (float), test (float), n_params (float, nan if unknown), capped (bool: the
    `capped_while_improving` column is True), max_steps (float: the step cap, nan if
    unknown).
    """
    out = []
    for r in rows:
        if r.get("status", "done") not in ("done", ""):
            continue
        n, lr, val, test = (_float(r.get(k)) for k in (N_COL, LR_COL, VAL_COL, TEST_COL))
        if not all(math.isfinite(x) for x in (n, lr, val, test)):
            continue
        out.append({"model": _model_label(r, panel_col), "approach": r.get("approach") or "run",
                    "n_train": int(n), "lr": lr, "seed": _seed_label(r.get(SEED_COL)),
                    "subset_hash": r.get("subset_hash") or "", "val": val, "test": test,
                    "n_params": _float(r.get("n_params")),
                    "capped": str(r.get(CAPPED_COL, "")).strip().lower() in ("true", "1"),
                    CAP_COL: _float(r.get(CAP_COL))})
    if not out:
        raise AnalysisError("no finished trial with n_train, lr, validation and test errors")
    return out


# ----------------------------------------------------------------------------- statistics
def t_interval(values, conf=CONF):
    """Mean of `values` (1-D, one per seed) and its t-interval -> (mean, sd, low, high).

    sd uses ddof=1; the interval is mean +- t((1+conf)/2, k-1) sd/sqrt(k). With k < 2
    values sd, low and high are nan (no interval without repeats).
    """
    x = np.asarray(values, dtype=float)
    mean = float(x.mean())
    if x.size < 2:
        return mean, NAN, NAN, NAN
    sd = float(x.std(ddof=1))
    half = stats.t.ppf(0.5 + conf / 2, x.size - 1) * sd / math.sqrt(x.size)
    return mean, sd, mean - half, mean + half


def _t_quantile(dof, conf=CONF):
    return float(stats.t.ppf(0.5 + conf / 2, dof)) if dof >= 1 else NAN


def _exp(x):
    """exp that saturates at inf: a flat fit (b near 0) or a wide interval on log n can ask
    for n = e^1000, which is 'never' here, not an error."""
    return math.exp(x) if x < 709.0 else math.inf


def fit_power_law(ns, errs, allow_floor=True, with_interval=True, conf=CONF):
    """Fit err = a n^-b (+ c) to points (ns, errs), residuals in log err.

    ns, errs: 1-D arrays of equal length (seed-level points; repeated n allowed), errs > 0.
    The pure power law is linear least squares in (log n, log err). The floor model
    a n^-b + c (c >= 0) is fitted with scipy `curve_fit` starting from the pure fit and kept
    only if it is supported (see the module docstring) and `allow_floor`.
    Returns a dict: form, a, b, c (0 without floor), `{p}_low`/`{p}_high` (nan without
    interval), cov (covariance of (log a, b[, c]) or None), dof, rss (of the chosen form in
    log err), floor_p (F-test p-value of the floor, nan if not tried), n_points, n_sizes,
    n_min, n_max.
    """
    x = np.log(np.asarray(ns, dtype=float))
    y = np.log(np.asarray(errs, dtype=float))
    m, sizes = x.size, np.unique(x).size
    if sizes < 2:
        raise AnalysisError("a power-law fit needs at least two dataset sizes")
    A = np.stack([np.ones_like(x), -x], axis=1)
    (la, b), *_ = np.linalg.lstsq(A, y, rcond=None)
    rss0 = float(np.sum((y - A @ np.array([la, b])) ** 2))
    dof0 = m - 2
    cov0 = rss0 / dof0 * np.linalg.inv(A.T @ A) if dof0 >= 1 else None
    fit = {"form": "a*n^-b", "a": _exp(la), "b": float(b), "c": 0.0, "cov": cov0,
           "dof": dof0, "rss": rss0, "floor_p": NAN, "n_points": m, "n_sizes": sizes,
           "n_min": float(np.min(ns)), "n_max": float(np.max(ns))}
    # the floor needs a spare degree of freedom and a visible misfit of the pure law
    if allow_floor and with_interval and sizes >= 4 and m - 3 >= 1 and rss0 > 1e-20 * m:
        floor = _fit_floor(x, y, la, b, rss0, m)
        if floor is not None:
            fit.update(floor)
    _add_intervals(fit, with_interval, conf)
    return fit


def _fit_floor(x, y, la0, b0, rss0, m):
    """The floor model in log space; its dict of updates when the data support it, else None."""
    def model(x, la, b, c):
        return np.log(np.exp(la - b * x) + c)
    try:
        with warnings.catch_warnings():     # an undetermined covariance is checked below
            warnings.simplefilter("ignore", optimize.OptimizeWarning)
            p, cov = optimize.curve_fit(model, x, y, p0=(la0, max(b0, 1e-3),
                                                         0.1 * np.exp(y.min())),
                                        bounds=([-np.inf, -np.inf, 0.0], np.inf), max_nfev=2000)
    except (RuntimeError, ValueError):
        return None
    rss1 = float(np.sum((y - model(x, *p)) ** 2))
    dof1 = m - 3
    if not (rss1 < rss0) or not np.all(np.isfinite(cov)):
        return None
    f_stat = (rss0 - rss1) / (rss1 / dof1) if rss1 > 0 else math.inf
    p_val = float(stats.f.sf(f_stat, 1, dof1))
    c, c_se = float(p[2]), math.sqrt(max(cov[2, 2], 0.0))
    if p_val < FLOOR_P and c > 0 and c - _t_quantile(dof1) * c_se > 0:
        return {"form": "a*n^-b+c", "a": _exp(p[0]), "b": float(p[1]), "c": c, "cov": cov,
                "dof": dof1, "rss": rss1, "floor_p": p_val}
    return {"floor_p": p_val}


def _add_intervals(fit, with_interval, conf):
    """`{a,b,c}_low/_high`: t-intervals from the covariance (a via log a), nan if none."""
    cov = fit["cov"] if with_interval else None
    q = _t_quantile(fit["dof"], conf)
    for name in ("a", "b", "c"):
        fit[f"{name}_low"] = fit[f"{name}_high"] = NAN
    if cov is None or not math.isfinite(q):
        fit["cov"] = None
        return
    se = np.sqrt(np.maximum(np.diag(cov), 0.0))
    la = math.log(fit["a"])
    fit["a_low"], fit["a_high"] = _exp(la - q * se[0]), _exp(la + q * se[0])
    fit["b_low"], fit["b_high"] = fit["b"] - q * se[1], fit["b"] + q * se[1]
    if fit["form"] == "a*n^-b+c":
        fit["c_low"], fit["c_high"] = fit["c"] - q * se[2], fit["c"] + q * se[2]


def fit_eval(fit, n):
    """Fitted error at n (array-like)."""
    return fit["a"] * np.asarray(n, dtype=float) ** -fit["b"] + fit["c"]


def fit_inverse(fit, err, err_se=0.0):
    """Examples at which the fit reaches `err` -> (n, se of log n).

    n = ((err - c)/a)^(-1/b); inf when err <= c (the floor is above err). The standard
    error of log n is the delta method through the fit's covariance of (log a, b[, c]) plus,
    if `err_se` > 0, the uncertainty of `err` itself; nan without covariance.
    """
    a, b, c = fit["a"], fit["b"], fit["c"]
    if not err > c or b <= 0:
        return math.inf, NAN
    log_n = (math.log(a) - math.log(err - c)) / b
    if fit["cov"] is None:
        return _exp(log_n), NAN
    grad = [1.0 / b, -log_n / b]                       # d log n / d(log a, b)
    if fit["form"] == "a*n^-b+c":
        grad.append(1.0 / (b * (err - c)))             # d log n / d c
    grad = np.asarray(grad)
    var = float(grad @ fit["cov"] @ grad) + (err_se / (b * (err - c))) ** 2
    return _exp(log_n), math.sqrt(max(var, 0.0))


# ----------------------------------------------------------------------------- analysis
def select_on_validation(rows):
    """Choose the learning rate of each (model, approach, n_train) on mean validation error.

    rows: output of `clean_rows`. Repeated rows of one (lr, seed) are averaged first, then
    each lr's validation error is averaged over its seeds and the lr with the lowest mean is
    chosen (ties -> the smaller lr; `utils/lr_choice.choose_lr`, the rule the sweep runner
    extends its lr grid by). Test errors take no part in the choice.
    Returns (selected, seed_points), both sorted by model, approach, n_train:
    selected: dicts model, approach, n_train, lr, n_lrs, lr_at_edge ('' / 'low' / 'high' /
    'single'), capped_while_improving (how many of the chosen lr's seeds ended at their step
    cap still improving), max_steps (the largest step cap of those seeds, '' if unknown),
    n_seeds, val (mean over seeds), test (mean), test_sd, test_ci_low, test_ci_high (nan
    with one seed);
    seed_points: dicts model, approach, n_train, lr, seed, subset_hash, val, test,
    capped_while_improving, max_steps (the chosen lr's seeds).
    """
    groups = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    hashes, hash_of, capped, caps = defaultdict(set), {}, defaultdict(bool), {}
    for r in rows:
        key = (r["model"], r["approach"], r["n_train"])
        groups[key][r["lr"]][r["seed"]].append((r["val"], r["test"]))
        capped[key + (r["lr"], r["seed"])] |= r.get("capped", False)
        if math.isfinite(r.get(CAP_COL, math.nan)):   # the largest cap of a seed's rows
            seed_key = key + (r["lr"], r["seed"])
            caps[seed_key] = max(caps.get(seed_key, 0), int(r[CAP_COL]))
        if r["subset_hash"]:
            hashes[key + (r["seed"],)].add(r["subset_hash"])
            hash_of[key + (r["lr"], r["seed"])] = r["subset_hash"]
    for key, hs in hashes.items():
        if len(hs) > 1:
            logger.warning("%s n_train=%d seed %s: lrs trained on different subsets %s",
                           key[0], key[2], key[3], sorted(hs))
    selected, points = [], []
    for (model, approach, n), by_lr in groups.items():
        per_seed = {lr: {s: np.mean(np.asarray(v), axis=0) for s, v in seeds.items()}
                    for lr, seeds in by_lr.items()}
        choice = choose_lr({lr: [v[0] for v in ps.values()] for lr, ps in per_seed.items()})
        lr = choice["lr"]
        seeds = sorted(per_seed[lr], key=_seed_sort_key)
        tests = [float(per_seed[lr][s][1]) for s in seeds]
        mean, sd, lo, hi = t_interval(tests)

        def cap(*seed_keys):   # the largest step cap of these seeds ('' if none is known)
            known = [caps[k] for s in seed_keys if (k := (model, approach, n, lr, s)) in caps]
            return max(known, default="")
        selected.append({"model": model, "approach": approach, "n_train": n, "lr": lr,
                         "n_lrs": choice["n_lrs"], "lr_at_edge": choice["edge"],
                         CAPPED_COL: sum(capped[(model, approach, n, lr, s)] for s in seeds),
                         CAP_COL: cap(*seeds),
                         "n_seeds": len(seeds), "val": choice["mean"], "test": mean, "test_sd": sd,
                         "test_ci_low": lo, "test_ci_high": hi})
        points += [{"model": model, "approach": approach, "n_train": n, "lr": lr, "seed": s,
                    "subset_hash": hash_of.get((model, approach, n, lr, s), ""), "val": float(per_seed[lr][s][0]),
                    "test": float(per_seed[lr][s][1]),
                    CAPPED_COL: capped[(model, approach, n, lr, s)], CAP_COL: cap(s)}
                   for s in seeds]
    order = lambda s: (s["model"], s["approach"], s["n_train"])  # noqa: E731
    return (sorted(selected, key=order),
            sorted(points, key=lambda p: order(p) + (_seed_sort_key(p["seed"]),)))


def _seed_sort_key(s):
    x = _float(s)
    return (0, x, "") if math.isfinite(x) else (1, 0.0, s)


def by_curve(selected):
    """{(model, approach): [selected rows sorted by n_train]}."""
    out = defaultdict(list)
    for s in selected:
        out[(s["model"], s["approach"])].append(s)
    return out


def fit_table(selected, points, fit_min_n=0):
    """One power-law fit per (model, approach) on the seed-level points with n >= fit_min_n.

    Returns {(model, approach): fit dict (see `fit_power_law`) + model, approach, n_seeds}.
    Curves with fewer than two sizes are skipped (logged). Intervals and the floor need at
    least two seeds at some size.
    """
    pts = defaultdict(list)
    for p in points:
        if p["n_train"] >= fit_min_n and p["test"] > 0:
            pts[(p["model"], p["approach"])].append((p["n_train"], p["test"]))
    fits = {}
    for key, sel in by_curve(selected).items():
        xy = np.asarray(pts.get(key, []), dtype=float).reshape(-1, 2)
        if np.unique(xy[:, 0]).size < 2:
            logger.warning("[%s] %s: fewer than two sizes with n >= %g, no fit", *key, fit_min_n)
            continue
        n_seeds = max(s["n_seeds"] for s in sel)
        fit = fit_power_law(xy[:, 0], xy[:, 1], with_interval=n_seeds >= 2)
        fits[key] = {"model": key[0], "approach": key[1], "n_seeds": n_seeds, **fit}
    return fits


def examples_needed(ns, errs, target):
    """Examples needed to reach `target` error -> (n, bound) with bound '=', '<=' or '>'.

    ns, errs: measured dataset sizes and errors (any order). The first crossing of the
    target in increasing n is interpolated in log-log between its two neighbours.
    '<=': already reached at the smallest measured n (returns that n);
    '>': never reached (returns the largest measured n).
    """
    order = np.argsort(ns)
    ns = np.asarray(ns, dtype=float)[order]
    errs = np.asarray(errs, dtype=float)[order]
    hit = np.nonzero(errs <= target)[0]
    if hit.size == 0:
        return float(ns[-1]), ">"
    i = int(hit[0])
    if i == 0:
        return float(ns[0]), "<="
    x0, x1 = np.log(ns[i - 1]), np.log(ns[i])
    y0, y1 = np.log(errs[i - 1]), np.log(errs[i])
    return float(np.exp(x0 + (np.log(target) - y0) * (x1 - x0) / (y1 - y0))), "="


def ratio_with_bound(n_ft, b_ft, n_sc, b_sc):
    """scratch / finetune examples ratio and its bound ('=', '>=', '<=' or '?' unknown)."""
    lower = b_sc == ">" or b_ft == "<="      # true ratio larger than the estimate
    upper = b_sc == "<=" or b_ft == ">"      # true ratio smaller
    if lower and upper:
        return math.nan, "?"
    return n_sc / n_ft, ">=" if lower else "<=" if upper else "="


def _fit_needed(fit, target):
    """(n, low, high, extrapolated, se of log n, dof) for a target from a fit."""
    n, se = fit_inverse(fit, target)
    q = _t_quantile(fit["dof"])
    lo, hi = (n * _exp(-q * se), n * _exp(q * se)) if math.isfinite(se) else (NAN, NAN)
    extra = int(not fit["n_min"] <= n <= fit["n_max"])
    return n, lo, hi, extra, se, fit["dof"]


def examples_table(selected, targets, finetune="finetune", scratch="scratch", fits=None):
    """For each model and target: examples needed by each approach and their ratio.

    Model-free columns `{label}_n`, `{label}_bound`, `ratio`, `ratio_bound` (interpolation,
    see `examples_needed`); fit-based columns `{label}_n_fit`, `_fit_low`, `_fit_high`,
    `_fit_extrapolated`, `ratio_fit`, `ratio_fit_low`, `ratio_fit_high` when `fits` has both.
    """
    fits = fits or {}
    curves = by_curve(selected)
    table = []
    for model in sorted({s["model"] for s in selected}):
        for target in targets:
            row = {"model": model, "target": target}
            fitted = {}
            for label in (finetune, scratch):
                if (model, label) in curves:
                    sel = curves[(model, label)]
                    row[f"{label}_n"], row[f"{label}_bound"] = examples_needed(
                        [s["n_train"] for s in sel], [s["test"] for s in sel], target)
                if (model, label) in fits:
                    fitted[label] = _fit_needed(fits[(model, label)], target)
                    (row[f"{label}_n_fit"], row[f"{label}_n_fit_low"], row[f"{label}_n_fit_high"],
                     row[f"{label}_fit_extrapolated"]) = fitted[label][:4]
            if f"{finetune}_n" in row and f"{scratch}_n" in row:
                row["ratio"], row["ratio_bound"] = ratio_with_bound(
                    row[f"{finetune}_n"], row[f"{finetune}_bound"],
                    row[f"{scratch}_n"], row[f"{scratch}_bound"])
            if len(fitted) == 2:
                (n_f, *_, se_f, dof_f), (n_s, *_, se_s, dof_s) = fitted[finetune], fitted[scratch]
                ratio = n_s / n_f if math.isfinite(n_f) else NAN
                se = math.hypot(se_f, se_s)
                q = _t_quantile(min(dof_f, dof_s))
                ok = math.isfinite(se) and math.isfinite(ratio) and math.isfinite(q)
                row["ratio_fit"] = ratio
                row["ratio_fit_low"] = ratio * _exp(-q * se) if ok else NAN
                row["ratio_fit_high"] = ratio * _exp(q * se) if ok else NAN
            table.append(row)
    return table


def effective_data(selected, fits, finetune="finetune", scratch="scratch"):
    """Effective data transferred D_T(n) = D_E(n) - n at each fine-tuned size n.

    D_E(n): from-scratch examples at which the from-scratch fit reaches the mean fine-tuned
    test error at n (inf when that error is below the fit's floor). Interval: delta method
    on log D_E with the from-scratch fit covariance and the standard error of the fine-tuned
    mean, t quantile with the smaller of the two degrees of freedom; nan without seeds.
    Returns a list of dicts: model, n_train, finetune_test, scratch_equivalent_n (D_E),
    D_E_low, D_E_high, effective_data (D_T), D_T_low, D_T_high, multiplier (D_E / n),
    extrapolated (1 when D_E is outside the fitted from-scratch sizes).
    """
    out = []
    for s in selected:
        fit = fits.get((s["model"], scratch))
        if s["approach"] != finetune or fit is None:
            continue
        k = s["n_seeds"]
        err_se = s["test_sd"] / math.sqrt(k) if k >= 2 else 0.0
        d_e, se = fit_inverse(fit, s["test"], err_se)
        q = _t_quantile(min(fit["dof"], k - 1))
        ok = math.isfinite(se) and math.isfinite(q) and math.isfinite(d_e)
        lo, hi = (d_e * _exp(-q * se), d_e * _exp(q * se)) if ok else (NAN, NAN)
        n = s["n_train"]
        out.append({"model": s["model"], "n_train": n, "finetune_test": s["test"],
                    "scratch_equivalent_n": d_e, "D_E_low": lo, "D_E_high": hi,
                    "effective_data": d_e - n, "D_T_low": lo - n, "D_T_high": hi - n,
                    "multiplier": d_e / n,
                    "extrapolated": int(not fit["n_min"] <= d_e <= fit["n_max"])})
    return out


def describe(row, finetune="finetune", scratch="scratch"):
    """One human sentence for an examples_table row."""
    def n_text(label):
        if f"{label}_n" not in row:
            return f"{label}: no data"
        n, b = row[f"{label}_n"], row[f"{label}_bound"]
        return {"=": f"{label} {n:.0f}", "<=": f"{label} <= {n:.0f} (smallest size tried)",
                ">": f"{label} > {n:.0f} (not reached)"}[b]
    text = (f"[{row['model']}] examples to reach test rel. L2 {row['target']:g}: "
            f"{n_text(finetune)}; {n_text(scratch)}")
    if "ratio" in row:
        ratio = "unknown" if row["ratio_bound"] == "?" else (
            f"{'' if row['ratio_bound'] == '=' else row['ratio_bound'] + ' '}{row['ratio']:.3g}")
        text += f"; ratio scratch/finetune {ratio}"
    if "ratio_fit" in row:
        ratio = with_ci(row["ratio_fit"], row["ratio_fit_low"], row["ratio_fit_high"])
        text += f"; from the fits {ratio}"
        if row.get(f"{finetune}_fit_extrapolated") or row.get(f"{scratch}_fit_extrapolated"):
            text += " (extrapolated)"
    return text


def with_ci(x, lo, hi, fmt=".3g"):
    text = f"{x:{fmt}}"
    return text + (f" [{lo:{fmt}}, {hi:{fmt}}]" if math.isfinite(lo) else "")


def describe_fit(fit):
    """One human sentence for a fit."""
    text = (f"[{fit['model']}] {fit['approach']}: test err = {fit['a']:.3g} n^-"
            f"{with_ci(fit['b'], fit['b_low'], fit['b_high'])}")
    if fit["form"] == "a*n^-b+c":
        text += f" + {with_ci(fit['c'], fit['c_low'], fit['c_high'])}"
    text += (f" (n {fit['n_min']:g}..{fit['n_max']:g}, {fit['n_points']} points, "
             f"{fit['n_seeds']} seed{'s' if fit['n_seeds'] != 1 else ''}")
    return text + ("; 95% t-intervals)" if math.isfinite(fit["b_low"]) else "; no interval)")


def parse_zero_shot(specs):
    """['[MODEL=]VALUE_or_summary.json', ...] -> {model or None: error}."""
    out = {}
    for spec in specs or []:
        model, sep, val = spec.rpartition("=") if "=" in spec else (None, "", spec)
        if os.path.isfile(val):
            summary = json.load(open(val))
            if TEST_COL not in summary:
                raise AnalysisError(f"zero-shot summary {val} has no {TEST_COL}")
            err = float(summary[TEST_COL])
        else:
            err = _float(val)
            if not math.isfinite(err):
                raise AnalysisError(f"--zero_shot {spec!r}: not a number nor a summary.json")
        out[model or None] = err
    return out



# ----------------------------------------------------------------------------- panels
def model_order(rows, selected):
    """Panels by parameter count when they are of different sizes (`_sizes_differ`), else in
    the order the tables named them (e.g. shifts, or PDEs of one model size)."""
    first = {}
    for i, r in enumerate(rows):
        first.setdefault(r["model"], i)
    models = {s["model"] for s in selected}
    params = params_of(rows)
    if not sizes_differ(params):
        return sorted(models, key=first.get)
    return sorted(models, key=lambda m: (params.get(m, math.inf), first[m]))


def sizes_differ(params):
    """True when the panels are models of different sizes: the largest more than 1.5x the
    smallest (the same architecture on another PDE's input channels differs by a few %)."""
    return bool(params) and max(params.values()) > 1.5 * min(params.values())


def params_of(rows):
    """{panel: mean parameter count} of the panels whose count is known."""
    size = defaultdict(list)
    for r in rows:
        if math.isfinite(r["n_params"]):
            size[r["model"]].append(r["n_params"])
    return {m: float(np.mean(v)) for m, v in size.items()}


def params_table(selected, params):
    """Selected rows of the panels with a known parameter count, with `n_params` added."""
    return [{**s, "n_params": params[s["model"]]} for s in selected if s["model"] in params]
