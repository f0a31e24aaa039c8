"""Scaling-study analysis: sweep results tables -> figures (PNG), tables (CSV), examples needed.

Input: one or more `results.csv` written by `utils/sweeps.py` (one row per trial with at least
`n_train`, `lr`, `best_val_rel_l2`, `test_rel_l2_mean`; optional `status`, `approach`,
`model`, `n_params`). Columns can be added per file on the command line:
`path.csv@approach=finetune,model=small`.

For every (model, approach, n_train) the learning rate is chosen on the VALIDATION error
(mean over repeated rows of the same lr) and the test error of that lr is reported; test
errors never take part in the choice. For a target error, the number of downstream examples
each approach needs is interpolated linearly in log(n) - log(error) between the two measured
dataset sizes where the curve first crosses the target (exact for a power law e = a n^-b),
and the ratio scratch / finetune is reported (with bounds when a curve does not cross the
target inside the measured range).

    python utils/scaling_plots.py results/sweeps/ft/results.csv@approach=finetune \
        results/sweeps/scratch/results.csv@approach=scratch \
        --zero_shot results/zeroshot/summary.json --target 0.01 --out_dir assets --prefix poisson
"""
import argparse
import csv
import io
import json
import logging
import math
import os
import sys
from collections import defaultdict

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from utils.errors import UserError  # noqa: E402

logger = logging.getLogger(__name__)

VAL_COL, TEST_COL, N_COL, LR_COL = "best_val_rel_l2", "test_rel_l2_mean", "n_train", "lr"


class AnalysisError(UserError):
    """A user mistake in the analysis inputs (reported as one line)."""


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


def clean_rows(rows, panel_col="model"):
    """Keep finished trials with finite numbers -> list of dicts with typed fields.

    Each output dict: model (str: the panel label, from `panel_col`, e.g. `model` for model
    sizes or `downstream` for distribution shifts), approach (str), n_train (int),
    lr (float), val (float), test (float), n_params (float, nan if unknown).
    """
    out = []
    for r in rows:
        if r.get("status", "done") not in ("done", ""):
            continue
        n, lr, val, test = (_float(r.get(k)) for k in (N_COL, LR_COL, VAL_COL, TEST_COL))
        if not all(math.isfinite(x) for x in (n, lr, val, test)):
            continue
        out.append({"model": _model_label(r, panel_col), "approach": r.get("approach") or "run",
                    "n_train": int(n), "lr": lr, "val": val, "test": test,
                    "n_params": _float(r.get("n_params"))})
    if not out:
        raise AnalysisError("no finished trial with n_train, lr, validation and test errors")
    return out


# ----------------------------------------------------------------------------- analysis
def select_on_validation(rows):
    """Choose the learning rate of each (model, approach, n_train) on validation error.

    rows: output of `clean_rows`. Repeated rows of one lr (seeds) are averaged first.
    Returns a list of dicts (model, approach, n_train, lr, val, test, n_lrs), sorted by
    model, approach, n_train. `test` is the mean test error AT the chosen lr.
    """
    groups = defaultdict(lambda: defaultdict(list))
    for r in rows:
        groups[(r["model"], r["approach"], r["n_train"])][r["lr"]].append((r["val"], r["test"]))
    selected = []
    for (model, approach, n), by_lr in groups.items():
        means = {lr: np.mean(np.asarray(v), axis=0) for lr, v in by_lr.items()}
        lr = min(means, key=lambda k: (means[k][0], k))   # ties -> smaller lr, deterministic
        selected.append({"model": model, "approach": approach, "n_train": n, "lr": lr,
                         "val": float(means[lr][0]), "test": float(means[lr][1]),
                         "n_lrs": len(by_lr)})
    return sorted(selected, key=lambda s: (s["model"], s["approach"], s["n_train"]))


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


def examples_table(selected, targets, finetune="finetune", scratch="scratch"):
    """For each model and target: examples needed by each approach and their ratio."""
    curves = defaultdict(lambda: ([], []))
    for s in selected:
        ns, es = curves[(s["model"], s["approach"])]
        ns.append(s["n_train"])
        es.append(s["test"])
    table = []
    for model in sorted({s["model"] for s in selected}):
        for target in targets:
            row = {"model": model, "target": target}
            for label in (finetune, scratch):
                if (model, label) in curves:
                    row[f"{label}_n"], row[f"{label}_bound"] = examples_needed(
                        *curves[(model, label)], target)
            if f"{finetune}_n" in row and f"{scratch}_n" in row:
                row["ratio"], row["ratio_bound"] = ratio_with_bound(
                    row[f"{finetune}_n"], row[f"{finetune}_bound"],
                    row[f"{scratch}_n"], row[f"{scratch}_bound"])
            table.append(row)
    return table


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
    return text


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


# ----------------------------------------------------------------------------- outputs
def _atomic_csv(path, rows, fields):
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    tmp = path + f".tmp{os.getpid()}"
    with open(tmp, "w", newline="") as f:
        f.write(buf.getvalue())
    os.replace(tmp, path)


def _atomic_savefig(fig, path):
    tmp = path + f".tmp{os.getpid()}.png"
    fig.savefig(tmp, dpi=130, bbox_inches="tight")
    os.replace(tmp, path)


def _model_order(rows, selected):
    size = defaultdict(list)
    for r in rows:
        size[r["model"]].append(r["n_params"])
    models = sorted({s["model"] for s in selected})
    return sorted(models, key=lambda m: (np.nanmean(size[m]) if np.isfinite(size[m]).any()
                                         else math.inf, m))


def plot_data_scaling(selected, models, zero_shot, targets, path, title=""):
    """Test error vs downstream examples, one panel per model, one line per approach."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(models), figsize=(4.6 * len(models), 3.8), squeeze=False,
                             sharey=True)
    styles = {"finetune": dict(color="C0", marker="o"), "scratch": dict(color="C3", marker="s")}
    for ax, model in zip(axes[0], models):
        approaches = sorted({s["approach"] for s in selected if s["model"] == model})
        for k, approach in enumerate(approaches):
            pts = [s for s in selected if s["model"] == model and s["approach"] == approach]
            style = styles.get(approach, dict(color=f"C{k + 4}", marker="^"))
            ax.plot([p["n_train"] for p in pts], [p["test"] for p in pts], label=approach,
                    **style)
        zs = zero_shot.get(model, zero_shot.get(None))
        if zs is not None:
            ax.axhline(zs, color="k", ls="--", lw=1, label=f"zero-shot {zs:.3g}")
        for t in targets:
            ax.axhline(t, color="0.6", ls=":", lw=1, label=f"target {t:g}")
        _style_axis(ax, model)
    _finish_figure(fig, axes, title, path)


def _style_axis(ax, panel_title):
    """Log-log axes of error vs number of downstream examples."""
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("downstream training examples")
    ax.set_title(panel_title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)


def _finish_figure(fig, axes, title, path):
    import matplotlib.pyplot as plt
    axes[0][0].set_ylabel("test relative L2 error (lr chosen on val)")
    if title:
        fig.suptitle(title)
    _atomic_savefig(fig, path)
    plt.close(fig)


def plot_model_scaling(selected, models, path, title=""):
    """Test error vs downstream examples, one panel per approach, one line per model size."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    approaches = sorted({s["approach"] for s in selected})
    fig, axes = plt.subplots(1, len(approaches), figsize=(4.6 * len(approaches), 3.8),
                             squeeze=False, sharey=True)
    cmap = plt.get_cmap("viridis")
    for ax, approach in zip(axes[0], approaches):
        for i, model in enumerate(models):
            pts = [s for s in selected if s["model"] == model and s["approach"] == approach]
            if pts:
                ax.plot([p["n_train"] for p in pts], [p["test"] for p in pts], marker="o",
                        color=cmap(i / max(1, len(models) - 1)), label=model)
        _style_axis(ax, approach)
    _finish_figure(fig, axes, title, path)


def analyse(specs, out_dir, prefix="scaling", targets=(1e-2,), zero_shot=(), title="",
            finetune="finetune", scratch="scratch", panel_col="model"):
    """Full analysis: read tables, select on validation, write CSVs and PNGs.

    Returns dict with `selected`, `examples`, `lines` (human summary) and `files`.
    """
    rows = clean_rows([r for spec in specs for r in read_results(spec)], panel_col)
    selected = select_on_validation(rows)
    models = _model_order(rows, selected)
    zs = parse_zero_shot(zero_shot)
    table = examples_table(selected, targets, finetune, scratch)
    os.makedirs(out_dir, exist_ok=True)
    files = {"selected": os.path.join(out_dir, f"{prefix}_selected.csv"),
             "examples": os.path.join(out_dir, f"{prefix}_examples_needed.csv"),
             "data_png": os.path.join(out_dir, f"{prefix}_data_scaling.png")}
    _atomic_csv(files["selected"], selected,
                ["model", "approach", "n_train", "lr", "val", "test", "n_lrs"])
    ex_fields = ["model", "target"]
    for label in (finetune, scratch):
        ex_fields += [f"{label}_n", f"{label}_bound"]
    _atomic_csv(files["examples"], table, ex_fields + ["ratio", "ratio_bound"])
    plot_data_scaling(selected, models, zs, targets, files["data_png"], title)
    if len(models) > 1:
        files["model_png"] = os.path.join(out_dir, f"{prefix}_model_scaling.png")
        plot_model_scaling(selected, models, files["model_png"], title)
    lines = [describe(r, finetune, scratch) for r in table]
    for model, err in zs.items():
        lines.append(f"[{model or 'all'}] zero-shot test rel. L2 {err:.4g}")
    for line in lines:
        logger.info(line)
    return {"selected": selected, "examples": table, "lines": lines, "files": files}


def main(argv=None):
    p = argparse.ArgumentParser(description="Scaling-study figures from sweep results tables.")
    p.add_argument("results", nargs="+",
                   help="results.csv files; append @approach=finetune,model=NAME to set columns")
    p.add_argument("--out_dir", default="assets")
    p.add_argument("--prefix", default="scaling", help="output file name prefix")
    p.add_argument("--target", type=float, action="append", default=None,
                   help="target test error (repeatable; default 0.01)")
    p.add_argument("--zero_shot", action="append", default=[],
                   help="[MODEL=]ERROR or [MODEL=]eval summary.json (repeatable)")
    p.add_argument("--title", default="")
    p.add_argument("--panel_col", default="model",
                   help="column that names the panels: model size (default) or e.g. downstream")
    p.add_argument("--finetune", default="finetune", help="approach label of fine-tuned runs")
    p.add_argument("--scratch", default="scratch", help="approach label of from-scratch runs")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    targets = args.target or [1e-2]
    try:
        if any(not (t > 0) for t in targets):
            raise AnalysisError("--target must be > 0")
        res = analyse(args.results, args.out_dir, args.prefix, targets, args.zero_shot,
                      args.title, args.finetune, args.scratch, args.panel_col)
    except AnalysisError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    for s in res["selected"]:
        print(f"{s['model']:>14s} {s['approach']:>9s} n_train={s['n_train']:<6d} "
              f"lr={s['lr']:.0e} (of {s['n_lrs']}) val={s['val']:.4f} test={s['test']:.4f}")
    for line in res["lines"]:
        print(line)
    for path in res["files"].values():
        print(path)


if __name__ == "__main__":
    main()
