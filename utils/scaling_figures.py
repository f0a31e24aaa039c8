"""Scaling-study figures: the tables of `utils/scaling_stats.py` drawn as PNGs.

Every figure is log-log, shows means over seeds with their 95% t-intervals as bands, and is
written atomically; every number it draws is also in a CSV written by `utils/scaling_plots.py`.
matplotlib (Agg) is imported only when a figure is drawn.
"""
import math

import numpy as np

from utils.fileio import savefig_atomic
from utils.scaling_stats import CI_KIND, by_curve, fit_eval, with_ci


def _atomic_savefig(fig, path):
    savefig_atomic(fig, path, dpi=130, bbox_inches="tight")


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


STYLES = {"finetune": dict(color="C0", marker="o"), "scratch": dict(color="C3", marker="s")}


def _draw_curve(ax, sel, points, fit, style, label):
    """Mean line, 95% band, faint seed points, lr-at-edge rings, capped-while-improving
    crosses and the fit of one curve."""
    ns = np.array([s["n_train"] for s in sel], dtype=float)
    mean = np.array([s["test"] for s in sel])
    k = max(s["n_seeds"] for s in sel)
    ax.plot(ns, mean, label=f"{label}: mean of {k} seed{'s' if k > 1 else ''}", **style)
    lo = np.array([s["test_ci_low"] for s in sel])
    if np.isfinite(lo).any():
        hi = np.array([s["test_ci_high"] for s in sel])
        # a lower end <= 0 cannot be drawn on a log axis: the band runs to the axis bottom
        ax.fill_between(ns, np.where(lo > 0, lo, 1e-30), hi, color=style["color"], alpha=0.18,
                        lw=0, label=f"{label}: {CI_KIND}")
    if k > 1:
        ax.scatter([p["n_train"] for p in points], [p["test"] for p in points], s=9,
                   color=style["color"], alpha=0.35, lw=0)
    edge = [s for s in sel if s["lr_at_edge"]]
    if edge:
        once = "lr at grid edge" not in ax.get_legend_handles_labels()[1]
        ax.scatter([s["n_train"] for s in edge], [s["test"] for s in edge], s=130,
                   facecolors="none", edgecolors="k", lw=0.9,
                   label="lr at grid edge" if once else None)
    capped = [s for s in sel if s.get("capped_while_improving")]
    if capped:
        once = "capped while improving" not in ax.get_legend_handles_labels()[1]
        ax.scatter([s["n_train"] for s in capped], [s["test"] for s in capped], s=90,
                   marker="x", color="k", lw=0.9,
                   label="capped while improving" if once else None)
    if fit is not None:
        grid = np.geomspace(fit["n_min"], fit["n_max"], 100)
        text = f"{label} fit b={with_ci(fit['b'], fit['b_low'], fit['b_high'], '.2f')}"
        if fit["form"] == "a*n^-b+c":
            text += f", c={fit['c']:.2g}"
        ax.plot(grid, fit_eval(fit, grid), color=style["color"], ls="--", lw=1.1, label=text)
    return mean, [p["test"] for p in points]


def _set_ylim(ax, values):
    v = np.asarray([x for x in values if x > 0 and math.isfinite(x)])
    if v.size:
        ax.set_ylim(v.min() / 1.4, v.max() * 1.4)


def plot_data_scaling(selected, points, fits, models, zero_shot, targets, path, title=""):
    """Test error vs downstream examples, one panel per model, one curve per approach."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(models), figsize=(5.8 * len(models), 4.2), squeeze=False,
                             sharey=True)
    curves = by_curve(selected)
    shown = []
    for ax, model in zip(axes[0], models):
        approaches = sorted({s["approach"] for s in selected if s["model"] == model})
        for k, approach in enumerate(approaches):
            style = STYLES.get(approach, dict(color=f"C{k + 4}", marker="^"))
            pts = [p for p in points if (p["model"], p["approach"]) == (model, approach)]
            m, p = _draw_curve(ax, curves[(model, approach)], pts, fits.get((model, approach)),
                               style, approach)
            shown += list(m) + list(p)
        for k, (key, zs) in enumerate(_zero_shots_of(zero_shot, model)):
            which = key.partition("|")[2] if key else ""
            ax.axhline(zs, color="k", ls=("--", "-.", ":")[k % 3], lw=1,
                       label=f"zero-shot{' (' + which + ')' if which else ''} {zs:.3g}")
            shown.append(zs)
        for t in targets:
            ax.axhline(t, color="0.6", ls=":", lw=1, label=f"target {t:g}")
        # below the panel: inside it, ~10 entries would hide the curves
        _style_axis(ax, model, legend=dict(fontsize=7, loc="upper center", ncol=2,
                                           bbox_to_anchor=(0.5, -0.16), frameon=False))
    _set_ylim(axes[0][0], shown)
    _finish_figure(fig, axes, title, path)


def _zero_shots_of(zero_shot, model):
    """[(key, error)] of one panel: key MODEL, MODEL|APPROACH (e.g. another pre-training), or
    None (every panel) when the panel has none of its own."""
    own = [(k, v) for k, v in zero_shot.items() if k is not None and k.partition("|")[0] == model]
    return own or ([(None, zero_shot[None])] if None in zero_shot else [])


def plot_params_scaling(table, path, title=""):
    """Test error at each fixed n vs parameter count, one panel per approach (model scaling).

    table: rows of `params_table` (model, n_params, approach, n_train, test, test_ci_low,
    test_ci_high); one line per n_train, the 95% band over seeds around it."""
    plt = _pyplot()
    approaches = sorted({t["approach"] for t in table})
    fig, axes = plt.subplots(1, len(approaches), figsize=(4.6 * len(approaches), 3.8),
                             squeeze=False, sharey=True)
    ns = sorted({t["n_train"] for t in table})
    cmap = plt.get_cmap("plasma")
    for ax, approach in zip(axes[0], approaches):
        for i, n in enumerate(ns):
            line = sorted((t for t in table if (t["approach"], t["n_train"]) == (approach, n)),
                          key=lambda t: t["n_params"])
            if not line:
                continue
            color = cmap(i / max(1, len(ns)))
            x = [t["n_params"] for t in line]
            ax.plot(x, [t["test"] for t in line], marker="o", color=color, label=f"n={n}")
            lo = np.array([t["test_ci_low"] for t in line])
            if np.isfinite(lo).any():
                ax.fill_between(x, np.where(lo > 0, lo, 1e-30), [t["test_ci_high"] for t in line],
                                color=color, alpha=0.15, lw=0)
        _style_axis(ax, approach, "parameters")
        ax.set_xscale("log")
    _set_ylim(axes[0][0], [t["test"] for t in table])
    _finish_figure(fig, axes, title + (f" (bands: {CI_KIND})" if title else ""), path)



def _style_axis(ax, panel_title, xlabel="downstream training examples", legend=None):
    """Log-log axes of a quantity vs number of downstream examples."""
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_title(panel_title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(**(legend or dict(fontsize=7)))


def _finish_figure(fig, axes, title, path, ylabel="test relative L2 error (lr chosen on val)"):
    import matplotlib.pyplot as plt
    axes[0][0].set_ylabel(ylabel)
    if title:
        fig.suptitle(title)
    _atomic_savefig(fig, path)
    plt.close(fig)


def plot_model_scaling(selected, models, path, title=""):
    """Test error vs downstream examples, one panel per approach, one line per model size."""
    plt = _pyplot()
    approaches = sorted({s["approach"] for s in selected})
    fig, axes = plt.subplots(1, len(approaches), figsize=(4.6 * len(approaches), 3.8),
                             squeeze=False, sharey=True)
    cmap = plt.get_cmap("viridis")
    curves = by_curve(selected)
    for ax, approach in zip(axes[0], approaches):
        for i, model in enumerate(models):
            sel = curves.get((model, approach))
            if not sel:
                continue
            color = cmap(i / max(1, len(models) - 1))
            ns = [s["n_train"] for s in sel]
            ax.plot(ns, [s["test"] for s in sel], marker="o", color=color, label=model)
            lo = np.array([s["test_ci_low"] for s in sel])
            if np.isfinite(lo).any():
                ax.fill_between(ns, np.where(lo > 0, lo, 1e-30),
                                [s["test_ci_high"] for s in sel], color=color, alpha=0.15, lw=0)
        _style_axis(ax, approach)
    _set_ylim(axes[0][0], [s["test"] for s in selected])
    _finish_figure(fig, axes, title + (f" (bands: {CI_KIND})" if title else ""), path)


def plot_effective_data(eff, models, path, title=""):
    """Effective data transferred D_T(n) vs fine-tuning examples n, one panel per model."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(models), figsize=(5.8 * len(models), 4.2), squeeze=False,
                             sharey=True)
    shown = []
    for ax, model in zip(axes[0], models):
        mine = [e for e in eff if e["model"] == model]
        rows = [e for e in mine if math.isfinite(e["effective_data"]) and e["effective_data"] > 0]
        hidden = [e for e in mine if e not in rows]
        if hidden:        # say what a log axis cannot show instead of dropping it silently
            ax.text(0.98, 0.02, "not drawn: " + ", ".join(
                f"n={e['n_train']} (D_T={e['effective_data']:.3g})" for e in hidden),
                transform=ax.transAxes, ha="right", va="bottom", fontsize=6, wrap=True)
        if rows:
            ns = np.array([e["n_train"] for e in rows], dtype=float)
            dt = np.array([e["effective_data"] for e in rows])
            lo = np.array([e["D_T_low"] for e in rows])
            hi = np.array([e["D_T_high"] for e in rows])
            ax.plot(ns, dt, color="C2", lw=1.2)
            if np.isfinite(lo).any():
                ax.fill_between(ns, np.where(lo > 0, lo, 1e-30), np.where(np.isfinite(hi), hi,
                                np.nan), color="C2", alpha=0.18, lw=0, label=CI_KIND.replace(
                                    "over seeds", "(scratch fit, finetune seeds)"))
            inside = np.array([not e["extrapolated"] for e in rows])
            ax.scatter(ns[inside], dt[inside], color="C2", zorder=3,
                       label="D_T = D_E - n (within fitted scratch sizes)")
            if (~inside).any():
                ax.scatter(ns[~inside], dt[~inside], facecolors="none", edgecolors="C2",
                           zorder=3, label="D_T extrapolated beyond scratch sizes")
            ax.plot(ns, ns, color="0.5", ls=":", lw=1, label="D_T = n (pre-training doubles data)")
            shown += list(dt) + list(ns)
        _style_axis(ax, model, "fine-tuning examples n")
    _set_ylim(axes[0][0], shown)
    _finish_figure(fig, axes, title, path,
                   "effective data transferred D_T (extra from-scratch examples)")
