"""Scaling-study analysis, the command line: sweep results tables -> CSVs and figures.

`analyse` reads the tables, computes every number (`utils/scaling_stats.py`: lr chosen on
validation, t-intervals, power-law fits, examples needed, effective data transferred; the
methods are described there), writes them as CSVs and draws them (`utils/scaling_figures.py`).
Columns can be added per file on the command line: `path.csv@approach=finetune,model=small`.

Every number in a figure is also in a CSV beside it: `{prefix}_selected.csv` (means,
intervals, lr choice), `{prefix}_seeds.csv` (the faint seed points), `{prefix}_fits.csv`,
`{prefix}_examples_needed.csv`, `{prefix}_effective_data.csv`.

    python utils/scaling_plots.py results/sweeps/ft/results.csv@approach=finetune \
        results/sweeps/scratch/results.csv@approach=scratch \
        --zero_shot results/zeroshot/summary.json --target 0.01 --out_dir assets --prefix poisson
"""
import argparse
import logging
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from utils.cli import cli  # noqa: E402
from utils.errors import AnalysisError  # noqa: E402
from utils.fileio import write_csv_atomic  # noqa: E402
from utils.scaling_figures import (plot_data_scaling, plot_effective_data,  # noqa: E402
                                   plot_model_scaling, plot_params_scaling)
from utils.scaling_stats import (CI_KIND, clean_rows, describe, describe_fit,  # noqa: E402
                                 effective_data, examples_table, fit_table, model_order,
                                 params_of, params_table, parse_zero_shot, read_results,
                                 select_on_validation, sizes_differ, with_ci)

logger = logging.getLogger(__name__)


def _atomic_csv(path, rows, fields):
    write_csv_atomic(path, rows, fields)


SELECTED_FIELDS = ["model", "approach", "n_train", "lr", "n_lrs", "lr_at_edge",
                   "capped_while_improving", "max_steps", "n_seeds",
                   "val", "test", "test_sd", "test_ci_low", "test_ci_high", "interval"]
SEED_FIELDS = ["model", "approach", "n_train", "lr", "seed", "subset_hash", "val", "test",
               "capped_while_improving", "max_steps"]
FIT_FIELDS = ["model", "approach", "form", "a", "a_low", "a_high", "b", "b_low", "b_high",
              "c", "c_low", "c_high", "floor_p", "dof", "rss", "n_points", "n_sizes",
              "n_seeds", "n_min", "n_max", "interval"]
EFFECTIVE_FIELDS = ["model", "n_train", "finetune_test", "scratch_equivalent_n", "D_E_low",
                    "D_E_high", "effective_data", "D_T_low", "D_T_high", "multiplier",
                    "extrapolated", "interval"]


def analyse(specs, out_dir, prefix="scaling", targets=(1e-2,), zero_shot=(), title="",
            finetune="finetune", scratch="scratch", panel_col="model", fit_min_n=0):
    """Full analysis: read tables, select on validation, fit, write CSVs and PNGs.

    Returns dict with `selected`, `points` (seed level), `fits`, `examples`, `effective`,
    `lines` (human summary) and `files` (name -> path).
    """
    rows = clean_rows([r for spec in specs for r in read_results(spec)], panel_col)
    selected, points = select_on_validation(rows)
    fits = fit_table(selected, points, fit_min_n)
    models = model_order(rows, selected)
    zs = parse_zero_shot(zero_shot)
    table = examples_table(selected, targets, finetune, scratch, fits)
    eff = effective_data(selected, fits, finetune, scratch)
    os.makedirs(out_dir, exist_ok=True)
    files = {name: os.path.join(out_dir, f"{prefix}_{name}.csv")
             for name in ("selected", "seeds", "fits", "examples_needed")}
    files["examples"] = files.pop("examples_needed")
    files["data_png"] = os.path.join(out_dir, f"{prefix}_data_scaling.png")
    ci = {"interval": CI_KIND}
    _atomic_csv(files["selected"], [{**s, **ci} for s in selected], SELECTED_FIELDS)
    _atomic_csv(files["seeds"], points, SEED_FIELDS)
    fit_kind = {"interval": "95% t-interval from the fit covariance (seed-level points)"}
    _atomic_csv(files["fits"], [{**f, **fit_kind} for f in fits.values()], FIT_FIELDS)
    ex_fields = ["model", "target"]
    for label in (finetune, scratch):
        ex_fields += [f"{label}_n", f"{label}_bound"]
    ex_fields += ["ratio", "ratio_bound"]
    for label in (finetune, scratch):
        ex_fields += [f"{label}_n_fit", f"{label}_n_fit_low", f"{label}_n_fit_high",
                      f"{label}_fit_extrapolated"]
    _atomic_csv(files["examples"], table, ex_fields + ["ratio_fit", "ratio_fit_low",
                                                       "ratio_fit_high"])
    plot_data_scaling(selected, points, fits, models, zs, targets, files["data_png"], title)
    if zs:
        files["zero_shot"] = os.path.join(out_dir, f"{prefix}_zero_shot.csv")
        _atomic_csv(files["zero_shot"], [{"model": (k or "all").partition("|")[0],
                                          "pretraining": (k or "").partition("|")[2] or "own",
                                          "test": v} for k, v in zs.items()],
                    ["model", "pretraining", "test"])
    params = params_of(rows)
    if sizes_differ(params):                # panels of different model sizes: model scaling
        files["params"] = os.path.join(out_dir, f"{prefix}_vs_params.csv")
        files["params_png"] = os.path.join(out_dir, f"{prefix}_vs_params.png")
        ptab = params_table(selected, params)
        _atomic_csv(files["params"], [{**t, **ci} for t in ptab],
                    ["model", "n_params"] + SELECTED_FIELDS[1:])
        plot_params_scaling(ptab, files["params_png"], title)
        files["model_png"] = os.path.join(out_dir, f"{prefix}_model_scaling.png")
        plot_model_scaling(selected, models, files["model_png"], title)
    if eff:
        files["effective"] = os.path.join(out_dir, f"{prefix}_effective_data.csv")
        files["effective_png"] = os.path.join(out_dir, f"{prefix}_effective_data.png")
        eff_kind = {"interval": "95% delta-method t-interval (scratch fit + finetune seeds)"}
        _atomic_csv(files["effective"], [{**e, **eff_kind} for e in eff], EFFECTIVE_FIELDS)
        plot_effective_data(eff, [m for m in models if any(e["model"] == m for e in eff)],
                            files["effective_png"], title)
    lines = [describe_fit(f) for f in fits.values()]
    lines += [describe(r, finetune, scratch) for r in table]
    lines += [f"[{s['model']}] {s['approach']} n_train={s['n_train']}: chosen lr {s['lr']:g} is "
              f"at the {s['lr_at_edge']} edge of the {s['n_lrs']} lrs tried"
              for s in selected if s["lr_at_edge"] in ("low", "high")]
    lines += [f"[{s['model']}] {s['approach']} n_train={s['n_train']}: "
              f"{s['capped_while_improving']} of {s['n_seeds']} seed(s) ended at the step cap "
              f"while still improving (budget-limited, not converged)"
              for s in selected if s["capped_while_improving"]]
    for e in eff:
        text = f"[{e['model']}] finetune n={e['n_train']}: effective data transferred "
        if math.isinf(e["effective_data"]):
            text += "infinite (fine-tuned error below the from-scratch fit's floor)"
        else:
            text += (f"{with_ci(e['effective_data'], e['D_T_low'], e['D_T_high'])} "
                     f"(x{e['multiplier']:.3g}{', extrapolated' if e['extrapolated'] else ''})")
        lines.append(text)
    for model, err in zs.items():
        lines.append(f"[{model or 'all'}] zero-shot test rel. L2 {err:.4g}")
    for line in lines:
        logger.info(line)
    return {"selected": selected, "points": points, "fits": fits, "examples": table,
            "effective": eff, "lines": lines, "files": files}


@cli(level=logging.WARNING)
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
    p.add_argument("--fit_min_n", type=int, default=0,
                   help="fit the power laws only on sizes n_train >= this (default: all)")
    args = p.parse_args(argv)
    targets = args.target or [1e-2]
    if any(not (t > 0) for t in targets):
        raise AnalysisError("--target must be > 0")
    res = analyse(args.results, args.out_dir, args.prefix, targets, args.zero_shot,
                  args.title, args.finetune, args.scratch, args.panel_col, args.fit_min_n)
    for s in res["selected"]:
        ci = (f" [{s['test_ci_low']:.4f}, {s['test_ci_high']:.4f}]"
              if math.isfinite(s["test_ci_low"]) else "")
        edge = f", {s['lr_at_edge']} edge" if s["lr_at_edge"] else ""
        if s["capped_while_improving"]:
            edge += f", capped {s['capped_while_improving']}/{s['n_seeds']}"
        print(f"{s['model']:>14s} {s['approach']:>9s} n_train={s['n_train']:<6d} "
              f"lr={s['lr']:.0e} (of {s['n_lrs']}{edge}) "
              f"seeds={s['n_seeds']} val={s['val']:.4f} test={s['test']:.4f}{ci}")
    for line in res["lines"]:
        print(line)
    for path in res["files"].values():
        print(path)


if __name__ == "__main__":
    main()
