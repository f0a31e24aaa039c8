"""The learning-rate search of a grid sweep: the lr-grid extension and the n ascent.

Grid extension (`utils/sweeps.py --extend_lr K`, `extend_lr_grid`): after the grid has run,
the trials are grouped by every setting except `lr` and `seed` (one group per n, say); where
the lr chosen on the seed-averaged validation metric (utils/lr_choice.choose_lr) is the
smallest or largest of the group's lrs, the next lr in that direction (the grid's own
geometric step, `extend_step`) runs for every seed, until each choice is interior or K steps
were added in that direction; choices still at an edge are logged as warnings.

n ascent (`utils/sweeps.py --lr_search seeded` and/or `--stop_at_error X`, `NAscent`): a grid
sweep's n values run in ascending order, one n at a time (every trial of one n finishes before the lrs of the next
are decided), with these rules (DESIGN.md section 10):

* the LADDER of learning rates is the sweep's lr grid extended geometrically by `extend_lr`
  steps (`--extend_lr K`) on each side, the step of the grid's own end (`extend_step`);
* the smallest n runs the full grid;
* `seeded`: every next n runs the lr chosen at the previous n and its two ladder neighbours;
  when the choice was the same at the previous two n ("stable"), only the choice and its
  neighbour on the side of the previous n's second-best mean. `grid`: every n the full grid;
* after the lrs of an n have run, while the choice (utils/lr_choice.choose_lr: the
  validation metric averaged over seeds) is the smallest / largest lr tried, the next ladder
  lr in that direction runs (for every seed); inside the grid this is the search following
  the optimum, beyond it the `--extend_lr` edge extension; the choice of a stable window kept
  at its outer side is accepted (the previous n's second-best lay on the other side);
* `stop_at_error`: the ascent stops after the first n whose chosen lr has a mean TEST error
  over seeds (results.csv `test_rel_l2_mean`) <= X;
* an n with a failed trial ends the ascent of its line (a rerun retries it first), so every
  decision is made from complete n only and a resumed sweep makes the same decisions.

Nothing here touches files or processes: `NAscent.run` gets the runner's callbacks (run a
batch of trials, read a finished trial's metrics), so the rules are tested without training.
The decisions are logged and kept (`record`: the runner writes it to `{sweep_dir}/ascent.json`,
which the study driver reads for the n values a from-scratch sweep ran: `ran_n`).
"""
from __future__ import annotations

import json
import logging
import math
import os
from collections import defaultdict
from numbers import Real

from utils.errors import SweepError
from utils.lr_choice import choose_lr
from utils.sweep_files import plain_value, trial_name
from utils.fileio import read_json

logger = logging.getLogger(__name__)
LR_SEARCHES = ("grid", "seeded")
ASCENT_FILE = "ascent.json"   # in the sweep directory: the n key, the n values run, decisions
# the training-set size parameters the ascent orders by: (key, larger value = larger n)
N_KEYS = (("n_train", True), ("subsample", False))


def extend_step(edge, neighbour):
    """The lr one grid step beyond `edge`, away from `neighbour` (geometric: edge**2 /
    neighbour), rounded to 6 significant digits so that names are stable (3e-3**2/1e-3 ->
    0.009, not 0.0090000001)."""
    return float(f"{edge ** 2 / neighbour:.6g}")


def ladder(grid, extend=0):
    """The lrs the ascent may run, ascending: the grid plus `extend` geometric steps beyond
    each end (the steps `--extend_lr` adds in a grid sweep: the same values, the same names)."""
    g = sorted({float(v) for v in grid})
    lo, hi = [], []
    if len(g) >= 2:
        a, b = g[0], g[1]
        for _ in range(extend):
            a, b = extend_step(a, b), a
            lo.insert(0, a)
        a, b = g[-1], g[-2]
        for _ in range(extend):
            a, b = extend_step(a, b), a
            hi.append(a)
    return lo + g + hi


def _index(lrs, lr):
    for i, v in enumerate(lrs):
        if math.isclose(v, lr, rel_tol=1e-9):
            return i
    raise ValueError(f"lr {lr!r} is not on the ladder {lrs}")


def fmt_lrs(lrs):
    return " ".join(f"{lr:g}" for lr in lrs)


def ranked(means, maximize=False):
    """lrs of {lr: mean} best first (choose_lr's order: ties to the smaller lr)."""
    sign = -1.0 if maximize else 1.0
    return sorted(means, key=lambda lr: (sign * means[lr], lr))


def first_lrs(steps, grid, mode, history, n_label, maximize=False):
    """The lrs an n starts with, why, and the lr whose window edge is accepted (stable case).

    steps: the ladder; grid: the sweep's lr values; mode: 'grid' | 'seeded'; history: the
    previous n of this line, ascending, each dict(n, lr (the choice), means {lr: mean});
    n_label(n) -> text for the log; maximize: the metric's goal (which mean is second-best).
    Returns (lrs ascending, why, keep lr or None).
    """
    if mode == "grid" or not history:
        why = "the full grid" + ("" if history else " (smallest n)")
        return sorted(float(v) for v in grid), why, None
    prev = history[-1]
    i = _index(steps, prev["lr"])
    if len(history) >= 2 and math.isclose(history[-2]["lr"], prev["lr"], rel_tol=1e-9):
        order = ranked(prev["means"], maximize)
        if len(order) < 2:
            return [steps[i]], f"lr {prev['lr']:g} was the only lr at {n_label(prev['n'])}", None
        side = 1 if order[1] > prev["lr"] else -1
        lrs = sorted([steps[i], steps[i + side]])
        why = (f"stable: lr {prev['lr']:g} chosen at {n_label(history[-2]['n'])} and "
               f"{n_label(prev['n'])}; the second-best mean lay {'above' if side > 0 else 'below'}")
        return lrs, why, steps[i]
    lrs = steps[max(i - 1, 0):i + 2]
    return lrs, f"seeded: lr {prev['lr']:g} chosen at {n_label(prev['n'])} and its neighbours", \
        None


def next_step(steps, choice, tried, keep=None):
    """After the lrs `tried` of an n have run and `choice` won: the next ladder lr to run.

    None when the choice is interior, is `keep` (a stable window's choice, accepted at the
    window's edge) or lies at the end of the ladder. Returns (lr or None, why, at_end): at_end
    is True when the choice is at an edge of the lrs tried with no ladder lr beyond it.
    """
    if len(steps) < 2:
        return None, "one lr", False
    if keep is not None and math.isclose(choice, keep):
        return None, "the stable choice held", False
    if math.isclose(choice, min(tried)):
        direction = -1
    elif math.isclose(choice, max(tried)):
        direction = 1
    else:
        return None, "interior", False
    side = "lower" if direction < 0 else "upper"
    j = _index(steps, choice) + direction
    if not 0 <= j < len(steps):
        return None, f"at the {side} end of the lr ladder", True
    return steps[j], f"choice {choice:g} at the {side} edge of the lrs tried", False


def _finite(x):
    """x, or None for a missing or non-finite number (ascent.json is strict JSON)."""
    return x if x is not None and math.isfinite(x) else None


def check_ascent(cfg, lr_search, stop_at_error, lr_key="lr"):
    """SweepError unless `lr_search` / `stop_at_error` fit the sweep `cfg` (load_sweep's)."""
    if lr_search not in LR_SEARCHES:
        raise SweepError(f"--lr_search must be one of {LR_SEARCHES}, got {lr_search!r}")
    if lr_search == "grid" and stop_at_error is None:
        return
    spec = cfg["parameters"].get(lr_key) or {}
    if cfg["method"] != "grid" or not all(isinstance(v, Real) and v > 0 for v in
                                          spec.get("values", [spec.get("value")])):
        raise SweepError(f"--lr_search seeded and --stop_at_error need a grid sweep with "
                         f"positive `{lr_key}` values")
    if stop_at_error is not None:
        if not (isinstance(stop_at_error, Real) and math.isfinite(stop_at_error)
                and stop_at_error > 0):
            raise SweepError(f"--stop_at_error must be a positive error, got {stop_at_error!r}")
        if n_key_of(cfg["parameters"])[0] is None:
            raise SweepError("--stop_at_error needs an `n_train` or `subsample` parameter to "
                             "go up in")


# ----------------------------------------------------------------------------- grid extension
def group_key(settings, lr_key="lr", repeat_keys=("seed",)):
    """The group of a trial: its settings but lr and the repeats, as a hashable tuple."""
    return tuple(sorted((k, json.dumps(plain_value(v))) for k, v in settings.items()
                        if k != lr_key and k not in repeat_keys))


def lr_choices(trials, base, metric, maximize=False, lr_key="lr", repeat_keys=("seed",)):
    """Per group of trials (all settings but lr and the repeats): the lr chosen on the metric
    averaged over repeats (`choose_lr`, the analysis's rule).

    base: the sweep file's lr values; metric(s): a finished trial's metric, else None.
    Returns {group: dict(lr, lrs, mean, n_below, n_above, edge)}, where `lrs` are the group's
    learning rates (sorted), n_below / n_above how many lie outside `base`, `edge` 'low' /
    'high' / '' where the choice lies among the lrs with a finished trial (one such lr counts
    as 'low'); groups without a finished trial are left out."""
    base = sorted(float(v) for v in base)
    groups = defaultdict(lambda: defaultdict(list))
    for s in trials:
        value = metric(s)
        groups[group_key(s, lr_key, repeat_keys)][float(s[lr_key])] += (
            [] if value is None else [value])
    out = {}
    for key, by_lr in groups.items():
        choice = choose_lr(by_lr, maximize=maximize)
        if choice is None:
            continue
        lrs = sorted(by_lr)
        out[key] = dict(lr=choice["lr"], lrs=lrs, mean=choice["mean"],
                        edge="low" if choice["edge"] == "single" else choice["edge"],
                        n_below=sum(lr < base[0] for lr in lrs),
                        n_above=sum(lr > base[-1] for lr in lrs))
    return out


def extend_lr_grid(trials, base, extend, metric, run_batch, stopped=lambda: False,
                   maximize=False, name="sweep", lr_key="lr", repeat_keys=("seed",)):
    """Add and run lr steps beyond the edge choices until interior or `extend` steps per
    direction (module docstring). run_batch(new, all_trials) runs the new trials (as for
    NAscent.run); returns all trials, the added ones last."""
    def choices():
        return lr_choices(trials, base, metric, maximize, lr_key, repeat_keys)

    names = {trial_name(s) for s in trials}
    while True:
        new = []
        for key, c in choices().items():
            lrs = c["lrs"]
            if c["edge"] == "low" and c["lr"] == lrs[0] and c["n_below"] < extend:
                edge_lr, step_lr = lrs[0], extend_step(lrs[0], lrs[1])
            elif c["edge"] == "high" and c["lr"] == lrs[-1] and c["n_above"] < extend:
                edge_lr, step_lr = lrs[-1], extend_step(lrs[-1], lrs[-2])
            else:
                continue
            for s in trials:
                if float(s[lr_key]) == edge_lr and group_key(s, lr_key, repeat_keys) == key:
                    t = dict(s, **{lr_key: step_lr})
                    if trial_name(t) not in names:
                        names.add(trial_name(t))
                        new.append(t)
        if not new or stopped():
            break
        logger.info("sweep %s: learning-rate choice at the grid's edge; %d more trials: %s",
                    name, len(new), " ".join(trial_name(t) for t in new))
        trials = trials + new
        run_batch(new, trials)
    for key, c in choices().items():
        if c["edge"]:
            logger.warning("sweep %s: %s: lr %g is still the %s edge of the grid %s", name,
                           ", ".join(f"{k}={json.loads(v)}" for k, v in key) or "all trials",
                           c["lr"], "lower" if c["edge"] == "low" else "upper",
                           [float(f"{lr:.6g}") for lr in c["lrs"]])
    return trials


# ----------------------------------------------------------------------------- n ascent
def n_key_of(params):
    """The (key, ascending) of the training-set size parameter of a sweep's parameters
    (n_train; else subsample, whose larger values are smaller n), or (None, True)."""
    for key, up in N_KEYS:
        if key in params:
            return key, up
    return None, True


class NAscent:
    """The n ascent of one grid sweep (module docstring).

    Args:
        trials: the grid's trials (settings dicts, `expand_grid`).
        lr_key, repeat_keys: the lr setting; the settings averaged over (seed).
        mode: 'grid' | 'seeded'; extend: `--extend_lr` steps; stop_at_error: X or None.
        maximize: the metric's goal; name: the sweep (log lines).
        follow: settings that follow another setting (`--set_for`, e.g. a step cap per n):
            not part of a line, so that an n with its own cap stays on the line of the others.
    """

    def __init__(self, trials, lr_key="lr", repeat_keys=("seed",), mode="seeded", extend=0,
                 stop_at_error=None, maximize=False, name="sweep", follow=()):
        if mode not in LR_SEARCHES:
            raise ValueError(f"lr search must be one of {LR_SEARCHES}, got {mode!r}")
        self.lr_key, self.repeat_keys = lr_key, tuple(repeat_keys)
        self.mode, self.stop_at_error, self.maximize, self.name = (
            mode, stop_at_error, maximize, name)
        self.follow = frozenset(follow)
        params = {k for s in trials for k in s}
        self.n_key, up = n_key_of(params)
        self.grid = sorted({float(s[lr_key]) for s in trials})
        self.steps = ladder(self.grid, extend)
        # lines: every setting but lr, the repeats and n; per line its n (ascending) and
        # per (line, n) the trials of one lr (the repeats), lr left as it is
        self.cells = defaultdict(list)
        ns = defaultdict(list)
        first = trials[0][lr_key]
        for s in trials:
            if s[lr_key] != first:
                continue
            line = self.line_of(s)
            n = s.get(self.n_key)
            if n not in ns[line]:
                ns[line].append(n)
            self.cells[line, n].append(s)
        self.ns = {line: sorted(v, key=lambda n: n if up or n is None else -n)
                   if None not in v else v for line, v in ns.items()}
        self.decisions = []

    def line_of(self, s):
        skip = {self.lr_key, self.n_key, *self.repeat_keys, *self.follow}
        return tuple(sorted((k, json.dumps(v)) for k, v in s.items() if k not in skip))

    def n_label(self, n, line=()):
        where = ", ".join(f"{k}={json.loads(v)}" for k, v in line)
        return (f"{self.n_key}={n}" if self.n_key else "all trials") + (
            f" ({where})" if where else "")

    def with_lr(self, line, n, lr):
        return [dict(s, **{self.lr_key: lr}) for s in self.cells[line, n]]

    def run(self, run_batch, metric, test_metric, failed=lambda s: False,
            stopped=lambda: False):
        """Run the ascent; returns every trial decided (settings dicts, in decision order).

        run_batch(todo, all_trials): run the trials `todo` (all_trials: every trial decided
        so far, for results.csv); metric(s) / test_metric(s): a finished trial's validation /
        test metric, None when it has none; failed(s): True when trial `s` failed;
        stopped(): True once the sweep is stopping. The lines ascend side by side: step k
        runs the k-th n of every line still going, so trials of several lines run at once.
        """
        trials, active, hist = [], list(self.ns), defaultdict(list)
        reader = (metric, test_metric, failed)
        for k in range(max(len(v) for v in self.ns.values())):
            cur = {line: self._open(line, self.ns[line][k], hist[line])
                   for line in active if k < len(self.ns[line])}
            new = [t for line, c in cur.items() for lr in c["tried"]
                   for t in self.with_lr(line, c["n"], lr)]
            while new and not stopped():
                trials += new
                run_batch(new, trials)
                new = [] if stopped() else self._walk(cur, reader)
            if stopped() or not cur:
                break
            for line, c in cur.items():
                if not self._close(line, c, hist[line], reader):
                    active.remove(line)
        return trials

    def _open(self, line, n, history):
        """The lrs an n of `line` starts with (logged); its state while it runs."""
        lrs, why, keep = first_lrs(self.steps, self.grid, self.mode, history, self.n_label,
                                   self.maximize)
        logger.info("sweep %s: %s: lrs %s (%s)", self.name, self.n_label(n, line),
                    fmt_lrs(lrs), why)
        return dict(n=n, tried=list(lrs), keep=keep, why=why, added=[])

    def _walk(self, cur, reader):
        """After a batch: the next ladder lr of each n whose choice lies at the edge of the
        lrs it ran (module docstring); returns the new trials (all repeats of each lr)."""
        new = []
        for line, c in cur.items():
            choice = self.choice(line, c["n"], c["tried"], *reader)
            if choice is None:
                continue
            lr, why, _ = next_step(self.steps, choice["lr"], c["tried"], c["keep"])
            if lr is not None:
                logger.info("sweep %s: %s: lr %g added (%s)", self.name,
                            self.n_label(c["n"], line), lr, why)
                c["tried"].append(lr)
                c["added"].append(lr)
                new += self.with_lr(line, c["n"], lr)
        return new

    def _close(self, line, c, history, reader):
        """An n of `line` has run: record its choice (logged, `decisions`); False when the
        line's ascent ends here (a failed trial, or the stop error reached)."""
        choice = self.choice(line, c["n"], c["tried"], *reader)
        label = self.n_label(c["n"], line)
        record = dict(line=[[k, json.loads(v)] for k, v in line], n=c["n"],
                      lrs=sorted(c["tried"]), why=c["why"], added=c["added"])
        self.decisions.append(record)
        if choice is None:
            logger.error("sweep %s: %s: a trial failed or has no metric; the larger n run "
                         "once a rerun finishes it", self.name, label)
            record["stop"] = "failed"
            return False
        _, why, at_end = next_step(self.steps, choice["lr"], c["tried"], c["keep"])
        if at_end:
            logger.warning("sweep %s: %s: lr %g is %s (raise --extend_lr)", self.name, label,
                           choice["lr"], why)
        history.append(dict(n=c["n"], lr=choice["lr"], means=choice["means"]))
        record.update(lr=choice["lr"], val=_finite(choice["mean"]),
                      test=_finite(choice["test"]))
        stop = (self.stop_at_error is not None and choice["test"] is not None
                and choice["test"] <= self.stop_at_error)
        logger.info("sweep %s: %s: lr %g chosen (validation %.4g, test %s)%s", self.name,
                    label, choice["lr"], choice["mean"],
                    "n/a" if choice["test"] is None else f"{choice['test']:.4g}",
                    f"; test <= {self.stop_at_error:g}: larger n not run" if stop else "")
        if stop:
            record["stop"] = "reached"
        return not stop

    def choice(self, line, n, lrs, metric, test_metric, failed):
        """The choice among the lrs of one n (None when a trial failed or none finished):
        choose_lr's dict plus `test`, the chosen lr's mean test error over its repeats."""
        vals, tests = {}, {}
        for lr in lrs:
            ts = self.with_lr(line, n, lr)
            v = [metric(t) for t in ts]
            if any(x is None for x in v) or any(failed(t) for t in ts):
                return None
            vals[lr], tests[lr] = v, [test_metric(t) for t in ts]
        c = choose_lr(vals, maximize=self.maximize)
        if c is None:
            return None
        t = [x for x in tests[c["lr"]] if x is not None]
        c["test"] = sum(t) / len(t) if t else None
        return c

    def n_values(self):
        """The n values decided (ascending, de-duplicated): what the ascent ran."""
        out = []
        for d in self.decisions:
            if d["n"] not in out:
                out.append(d["n"])
        return out

    def record(self):
        """What the runner writes to ASCENT_FILE: the n key, the n values run, decisions."""
        return dict(n_key=self.n_key, n_values=self.n_values(), lr_search=self.mode,
                    stop_at_error=self.stop_at_error, decisions=self.decisions)


def ran_n(sweep_directory):
    """(n key, n values) that a sweep's n ascent ran (its ASCENT_FILE), else None (no ascent
    ran there yet, or it had no n parameter)."""
    rec = read_json(os.path.join(sweep_directory, ASCENT_FILE))
    if isinstance(rec, dict) and rec.get("n_key") and rec.get("n_values"):
        return rec["n_key"], rec["n_values"]
    return None
