"""Run and analyse one question of the study (its design: utils/study_spec.py).

    python utils/study.py --set study=shifts [--set preset=paper] [--set key=value ...]
    python utils/study.py --env            # overrides from run_study.sh's variables (STUDY, ...)
    python utils/study.py --set study=mixed --dry_run    # print the commands, run nothing

Steps, each skipped when its output exists (rerun the same command after an interruption):
data (run_gen_data.sh, per transfer the pre-training and the downstream range), pre-training
(train.py) and its evaluation (eval.py), zero-shot evaluation on the downstream test set,
the downstream sweeps (utils/sweeps.py, which resumes trials itself): from scratch first,
its n ascent stopping at the question's smallest target (--stop_at_error), then fine-tuned
over the n values it ran (its ascent.json; a dry run before it ran prints the full n range),
then the analysis (utils/scaling_plots.py: figure and tables in `out`). Run names
depend on the pre-training config, the model size and the loss only, so questions sharing a
root share runs. Paths are relative to the repository root (the driver works there, as
run_study.sh does). `--dry_run` prints every command it would issue (the skips of finished
steps included), one per line, with the environment of the data generator in front.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import shlex
import subprocess
import sys
from dataclasses import replace

if __name__ == "__main__":  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.YParams import is_path_key, parse_overrides, read_yaml  # noqa: E402
from utils.config_schema import param, validate  # noqa: E402
from utils.errors import ConfigError, UserError  # noqa: E402
from utils.fileio import read_json  # noqa: E402
from utils.h5io import dataset_path, range_tag, split_info  # noqa: E402
from utils.lr_search import LR_SEARCHES, ran_n  # noqa: E402
from utils.run_layout import EVAL_SUMMARY, RunLayout, sweep_dir  # noqa: E402
from utils.study_spec import (MIXED_BUDGETS, OVERRIDES, PDE_OF_FAMILY, PRESETS,  # noqa: E402
                              QUESTIONS)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class StepFailed(Exception):
    """A step's command exited non-zero (it reported why itself); its exit status ends the
    study, as `set -e` did in the shell version."""

    def __init__(self, cmd, code):
        super().__init__(f"step failed with exit status {code}: {shlex.join(cmd)}")
        self.code = code


def resolve(overrides):
    """Options of one study: the preset's values with `overrides` ({key: str}, keys of
    OVERRIDES) applied. An empty value means "the default" for most keys (bash ${X:-d}); for
    seeds, n_train and study_set it means "none" (${X-d}). Returns a dict of strings."""
    unknown = sorted(set(overrides) - set(OVERRIDES))
    if unknown:
        raise UserError(f"unknown study override(s) {', '.join(unknown)} (known: "
                        f"{', '.join(OVERRIDES)})")
    given = {k: v for k, v in overrides.items() if v != "" or not OVERRIDES[k][1]}
    study = given.get("study", "headline")
    if study not in QUESTIONS:
        raise UserError(f"STUDY must be headline, shifts, sizes, physics or mixed (got "
                        f"'{study}')")
    preset_name = given.get("preset", "cpu")
    if preset_name not in PRESETS:
        raise UserError(f"PRESET must be cpu or paper (got '{preset_name}')")
    preset, question = PRESETS[preset_name], QUESTIONS[study]
    opt = dict(python="python", analyse_only="0", extra_set="", launcher="", losses="",
               prefix=preset.base + question.prefix, mixed_budgets="steps",
               mixed_epochs=str(preset.mixed_epochs["steps"]), yaml="", pt="", ft="", sc="",
               shifts=" ".join(t.downstream for t in question.transfers))
    for key in ("root", "jobs", "sweep_file", "lrs", "seeds", "n_train", "subsamples",
                "extend_lr", "lr_search", "study_set", "pt_set", "out", "size1"):
        opt[key] = getattr(preset, key)
    opt["step_caps"] = " ".join(f"{n}:{cap}" for n, cap in sorted(preset.step_caps.items()))
    opt["n_train"] = question.n_train.get(preset_name, opt["n_train"])
    opt["targets"] = preset.targets.get(study, preset.targets["default"])
    opt["sizes"] = {"sizes": preset.sizes, "default": "default"}.get(question.sizes, "")
    opt["pt_sizes"] = preset.pt_sizes or ""
    opt["down_sizes"] = question.down_sizes.get(preset_name, preset.down_sizes or "")
    opt["losses"] = " ".join(question.losses)
    opt.update(given)
    opt.update(study=study, preset=preset_name)
    budgets = opt["mixed_budgets"].split()
    if not budgets or set(budgets) - set(MIXED_BUDGETS):
        raise UserError(f"MIXED_BUDGETS must be a list of {' '.join(MIXED_BUDGETS)} (got "
                        f"'{opt['mixed_budgets']}')")
    if opt["lr_search"] not in LR_SEARCHES:
        raise UserError(f"LR_SEARCH must be {' or '.join(LR_SEARCHES)} (got "
                        f"'{opt['lr_search']}')")
    sets = check_formats(opt)
    # a step cap (max_steps) replaces max_epochs in the trainer: an EXTRA_SET max_epochs
    # alone would be silently ignored by the runs that have one
    extra = sets["extra_set"]
    if "max_epochs" in extra and "max_steps" not in extra and any(
            sets[k].get("max_steps") for k in ("study_set", "pt_set")):
        raise UserError("EXTRA_SET max_epochs has no effect on runs with a step cap (max_steps "
                        "in STUDY_SET or PT_SET): give EXTRA_SET a max_steps too (max_steps=0: "
                        "the epochs decide)")
    # the caps per n replace the step cap of the downstream budget at their n: without one
    # (a fixed-epoch STUDY_SET), with EXTRA_SET's (it wins over the study's budget) or
    # without an n_train range the preset's caps do not apply; caps asked for are an error
    caps = step_caps(opt["step_caps"])
    capped = sets["study_set"].get("max_steps") and "max_steps" not in extra and opt["n_train"]
    if caps and not capped:
        if "step_caps" in given:
            raise UserError("STEP_CAPS replaces the step cap (max_steps) of STUDY_SET at "
                            "some n_train: it needs one there, none in EXTRA_SET and an "
                            "N_TRAIN range")
        opt["step_caps"] = ""
    return opt


def _positive_int(text):
    return int(text) >= 1


def _finite_positive(text):
    return 0 < float(text) < math.inf


def _size(text):
    """'M:W' with positive integers (mode_cut:embed_cut) or 'default'."""
    m, colon, w = text.partition(":")
    return text == "default" or (colon and _positive_int(m) and _positive_int(w))


def _range(text):
    """'LO,HI' with 0 < LO < HI (a coefficient range)."""
    lo, hi = map(float, text.split(","))
    return 0 < lo < hi < math.inf


# variable -> (separator: "," a comma list, None whitespace, "one" a single value; check of
# one item (raises ValueError or returns False when bad); what it must be; may be empty)
FORMATS = {
    "jobs": ("one", _positive_int, "a positive integer", False),
    "extend_lr": ("one", lambda t: int(t) >= 0, "an integer >= 0", True),
    "mixed_epochs": ("one", _positive_int, "a positive integer", False),
    "lrs": (",", _finite_positive, "a comma list of positive numbers", False),
    "seeds": (",", lambda t: int(t) >= 0, "a comma list of integers >= 0", True),
    "n_train": (",", _positive_int, "a comma list of positive integers", True),
    "subsamples": (",", _positive_int, "a comma list of positive integers", True),
    "targets": (None, _finite_positive, "a list of positive errors", True),
    "shifts": (None, _range, "a list of LO,HI ranges with 0 < LO < HI", False),
    "sizes": (None, _size, "a list of M:W pairs of positive integers (mode_cut:embed_cut)",
              False),
    "size1": ("one", _size, "one M:W pair of positive integers (mode_cut:embed_cut)", False),
    "pt_sizes": (None, _positive_int, "three positive integers (train val test)", True),
    "down_sizes": (None, _positive_int, "three positive integers (train val test)", True),
}


def check_formats(opt):
    """Every study variable in its format, before anything runs: a bad value would otherwise
    stop the study hours later, at the first step that reads it. UserError naming the
    variable (run_study.sh's name). Returns the checked `--set` pairs of STUDY_SET, PT_SET
    and EXTRA_SET as {variable key: {key: value}}."""
    for key, (sep, ok, what, may_be_empty) in FORMATS.items():
        text = opt[key].strip()
        if not text and (may_be_empty or key == "sizes"):   # sizes: '' for one-size questions
            continue
        items = [text] if sep == "one" else text.split(sep)
        try:
            good = all(ok(item.strip()) for item in items)
        except ValueError:
            good = False
        if good and key in ("pt_sizes", "down_sizes"):
            good = len(items) == 3
        if not good:
            raise UserError(f"{OVERRIDES[key][0]} must be {what} (got '{opt[key]}')")
    sets = {}
    for key in ("study_set", "pt_set", "extra_set"):
        try:
            sets[key] = validate(parse_overrides(opt[key].split()), OVERRIDES[key][0])
        except ConfigError as e:
            name = OVERRIDES[key][0]
            raise UserError(str(e) if name in str(e) else f"{name}: {e}") from None
    return sets


def step_caps(text):
    """STEP_CAPS text "N:STEPS N:STEPS" -> {n_train: max_steps} (positive integers)."""
    caps = {}
    for item in text.split():
        n, colon, cap = item.partition(":")
        if not (colon and n.isdigit() and cap.isdigit() and int(n) > 0 and int(cap) > 0):
            raise UserError(f"STEP_CAPS must be N:STEPS pairs of positive integers (n_train "
                            f"and its max_steps), got '{item}'")
        caps[int(n)] = int(cap)
    return caps


def set_values(set_args):
    """{key: value} of the `--set KEY=VALUE` pairs in the argument list `set_args` (the last
    of a key wins, as in train.py)."""
    return parse_overrides([a for i, a in enumerate(set_args) if i and set_args[i - 1] == "--set"])


def check_run_settings(hyperparams_path, set_args):
    """A run already on disk (hyperparams.yaml) must have the settings of the `--set` pairs
    in `set_args` (the last of a key wins, as in train.py): the driver skips a finished run,
    so after a change of PT_SET (e.g. the stopping rule) it would otherwise reuse weights
    trained under another. One exception: `max_steps` may rise (the run then trains on to
    the new cap, `pretraining_done`). UserError naming the first difference; no file:
    nothing to check."""
    if not os.path.isfile(hyperparams_path):
        return
    have = read_yaml(hyperparams_path, what="run settings", error=UserError)
    want = set_values(set_args)
    for key, value in want.items():
        if is_path_key(key):    # resolved when the run started
            continue
        try:
            old = have[key] if key in have else param({}, key)
        except KeyError:      # not a schema key and not in the run's settings
            old = None
        if key == "max_steps" and old and isinstance(value, int) and value > old:
            continue          # a raised cap: the run continues (max_steps is resume-safe)
        if old != value:
            raise UserError(f"{os.path.dirname(hyperparams_path)} was trained with {key}="
                            f"{old!r}, the study now asks for {value!r}: move that run aside "
                            f"(or set PT_SET / EXTRA_SET to what it used)")


def pretraining_done(summary_path, set_args):
    """A pre-training run is finished for the study when its train_summary.json exists and
    the run either stopped early (converged) or trained up to the cap the study asks for
    (the last `max_steps` of the `--set` pairs `set_args`; none: any finished run). A run
    that ended at a lower cap while improving is not: the driver trains it on (resume)."""
    summary = read_json(summary_path)
    if summary is None:
        return False
    sets = set_values(set_args)
    cap = sets.get("max_steps")
    if isinstance(cap, bool) or not isinstance(cap, (int, type(None))):
        raise UserError(f"max_steps must be an integer, got {cap!r}")
    iters = summary.get("iters") if isinstance(summary, dict) else None
    if isinstance(iters, bool) or not isinstance(iters, int):
        raise UserError(f"{summary_path} is not a train summary (no integer 'iters'): move "
                        f"that run aside")
    return not cap or bool(summary.get("stopped_early")) or iters >= cap


def is_fresh(result, source):
    """`result` (an evaluation the driver would skip) exists and is not older than the file it
    was computed from, `source` (the weights; missing: existing is enough). The driver runs
    a stale evaluation again, e.g. after it trained a capped pre-training on: the numbers on
    disk would otherwise describe the old weights."""
    if not os.path.isfile(result):
        return False
    return not os.path.isfile(source) or os.path.getmtime(result) >= os.path.getmtime(source)


def size_sets(size):
    """'M:W' -> (--set pairs of mode_cut and embed_cut, name suffix '_mMwW');
    'default' (the config's own size) -> ([], '')."""
    if size == "default":
        return [], ""
    m, _, w = size.partition(":")
    return ["--set", f"mode_cut={m}", "--set", f"embed_cut={w}"], f"_m{m}w{w}"


def run_label(sfx, extra=""):
    """Run name of a size suffix and a variant (loss, budget): '0' for the config's own size,
    else 'mMwW[_extra]' (the names run_study.sh has always used)."""
    label = (sfx[1:] if sfx.startswith("_") else sfx) + (f"_{extra}" if extra else "")
    return label or "0"


def name_suffix(run):
    return "" if run == "0" else f"_{run}"


class Study:
    """One question under one preset; `run()` issues its commands in order."""

    def __init__(self, opt, dry_run=False, out=sys.stdout):
        self.opt, self.dry_run, self.out = opt, dry_run, out
        self.preset = PRESETS[opt["preset"]]
        self.question = QUESTIONS[opt["study"]]
        self.python = opt["python"].split()
        self.launch = (opt["launcher"] or opt["python"]).split()
        self.analyse_only = opt["analyse_only"] == "1"
        self.grid = self.question.grid[opt["preset"]]
        self.data_dir = self.preset.data[self.grid]
        self.csvs, self.zero_shot = [], []
        self.scratch_ran = {}    # {(family, size suffix): (n key, n values) of its scratch sweep}
        self.trained = set()     # weights this run (re)trained: their evaluations are stale

    # ---------------------------------------------------------------------------------- #
    def call(self, cmd, env=None, skip_if=None):
        """Run `cmd` (a list) unless `skip_if` (a path) exists; env: variables set for it."""
        if skip_if is not None and os.path.exists(skip_if):
            return
        if self.dry_run:
            prefix = [f"{k}={v}" for k, v in (env or {}).items()]
            self.out.write(" ".join(prefix + [shlex.join(cmd)]) + "\n")
            return
        logging.info("study: %s", shlex.join(cmd))
        code = subprocess.run(cmd, env={**os.environ, **(env or {})}).returncode
        if code != 0:
            raise StepFailed(cmd, code)

    def sweep_args(self, ran=None):
        """utils/sweeps.py arguments shared by every downstream sweep of the study; `ran`:
        (n key, its values) replacing the study's n range (the n a from-scratch sweep ran)."""
        o = self.opt
        values = ["--values", f"lr={o['lrs']}"]
        if ran:
            key, ns = ran[0], ",".join(str(n) for n in ran[1])
        else:
            key, ns = ("n_train", o["n_train"]) if o["n_train"] else ("subsample", o["subsamples"])
        if key == "n_train" and ns and self._sweep_file_has_subsample():
            values += ["--values", "subsample="]   # n_train replaces it
        if ns:
            values += ["--values", f"{key}={ns}"]
        if o["seeds"]:
            values += ["--values", f"seed={o['seeds']}"]
        down = []   # downstream runs only: the study's budget first, so extra_set wins over it
        for kv in o["study_set"].split() + o["extra_set"].split():
            down += ["--set", kv]
        caps = step_caps(o["step_caps"])    # the budget's step cap at the n listed (resolve)
        for n in ns.split(",") if caps and key == "n_train" else ():   # the n it runs
            if n.strip().isdigit() and int(n) in caps:
                down += ["--set_for", f"n_train={int(n)}", f"max_steps={caps[int(n)]}"]
        args = ["--sweep", o["sweep_file"], "--root_dir", o["root"], *values,
                "--extend_lr", o["extend_lr"] or "0", "--lr_search", o["lr_search"],
                "--jobs", o["jobs"], *down]
        return args + (["--launcher", o["launcher"]] if o["launcher"] else [])

    def _sweep_file_has_subsample(self):
        try:
            with open(self.opt["sweep_file"]) as f:
                return any(line.startswith("  subsample:") for line in f)
        except OSError:
            return False     # utils/sweeps.py says what is wrong with the file

    # ---------------------------------------------------------------------------------- #
    def gen(self, pde, rng, sizes, seed):
        """run_gen_data.sh for one PDE range (skipped by it when the files exist)."""
        if self.preset.gen_preset == "paper":
            env = dict(PRESET="paper")
        else:
            ntrain, nval, ntest = sizes.split()
            env = dict(PRESET=self.preset.gen_preset, DATA_DIR=self.data_dir, N=str(self.grid))
        env.update(PDES=pde, POISSON_RANGES=rng, AD_RANGES=rng, HELM_RANGES=rng)
        if self.preset.gen_preset != "paper":
            env.update(NTRAIN=ntrain, NVAL=nval, NTEST=ntest, SEED=str(seed))
            self.check_existing(pde, rng, ntrain)
        env["PYTHON"] = self.opt["python"]
        self.call(["bash", "run_gen_data.sh"], env=env)

    def check_existing(self, pde, rng, ntrain):
        """A train split already there with fewer samples than the design asks for (e.g. a
        longer n range) is an error: run_gen_data.sh would keep it, and the sweeps would
        silently cap n."""
        lo, hi = rng.split(",")
        train = dataset_path(self.data_dir, pde, "train", float(lo), float(hi))
        if os.path.isfile(train):
            have = split_info(train)["n_samples"]
            if have < int(ntrain):
                raise UserError(f"{train} has {have} samples but the design asks for {ntrain}: "
                                f"generate the larger set into another data directory (and "
                                f"point the configs there) or remove it")

    def gen_transfer(self, t, done):
        """The pre-training and downstream data of a transfer; `done`: the (pde, range)
        already asked for by this study (a range is generated once)."""
        pde = PDE_OF_FAMILY[t.family]
        for rng, sizes, seed in ((t.pretrain, self.opt["pt_sizes"], self.preset.pt_seed),
                                 (t.downstream, self.opt["down_sizes"], self.preset.down_seed)):
            if (pde, rng) not in done:
                done.add((pde, rng))
                self.gen(pde, rng, sizes, seed)

    def pretrain(self, yaml, cfg, run, sets):
        """Train (skipped when finished) and evaluate a pre-training run; returns its weights."""
        layout = RunLayout.of(self.opt["root"], cfg, run)
        if not self.analyse_only:
            common = ["--yaml_config", yaml, "--config", cfg, "--run_num", run,
                      "--root_dir", self.opt["root"]]
            # pre-training's own budget first, so that extra_set wins over it
            extra = [a for kv in self.opt["pt_set"].split() + self.opt["extra_set"].split()
                     for a in ("--set", kv)]
            check_run_settings(layout.hyperparams, extra + list(sets))
            trains = not pretraining_done(layout.train_summary, extra + list(sets))
            if trains:
                self.call(self.launch + ["train.py", *common, *extra, *sets])
                self.trained.add(layout.best_ckpt)
            if trains or not is_fresh(layout.eval_summary, layout.best_ckpt):
                self.call(self.python + ["eval.py", *common, "--weights", layout.best_ckpt,
                                         *sets])
        return layout.best_ckpt

    def zeroshot(self, yaml, cfg, name, panel, weights, sets):
        """The pre-trained weights on `cfg`'s (downstream) test set."""
        zs = f"{self.opt['root']}/zeroshot/{name}"
        if not self.analyse_only:
            if weights in self.trained or not is_fresh(os.path.join(zs, EVAL_SUMMARY), weights):
                self.call(self.python + ["eval.py", "--yaml_config", yaml, "--config", cfg,
                                         "--run_num", "zeroshot", "--root_dir", self.opt["root"],
                                         "--weights", weights, "--out_dir", zs, *sets])
        self.zero_shot += ["--zero_shot", f"{panel}={zs}/{EVAL_SUMMARY}"]

    def sweep(self, yaml, cfg, name, approach, panel, sets, stop=None, ran=None):
        """One downstream sweep: one curve of one panel (utils/sweeps.py resumes its trials).

        stop: the error at which its n ascent stops (--stop_at_error); ran: (n key, values)
        replacing the study's n range. Returns the (n key, values) the sweep ran (its
        ascent.json), or None when it did not run one (yet: a dry run, or no ascent)."""
        if not self.analyse_only:
            stop_args = ["--stop_at_error", stop] if stop else []
            self.call(self.python + ["utils/sweeps.py", *self.sweep_args(ran), *stop_args,
                                     "--yaml_config", yaml, "--config", cfg, "--name", name,
                                     "--tag", f"approach={approach}", *sets])
        self.csvs.append(f"{sweep_dir(self.opt['root'], name)}/results.csv"
                         f"@model={panel},approach={approach}")
        return ran_n(sweep_dir(self.opt["root"], name))

    def stop_error(self):
        """The smallest target error of the question: where the from-scratch ascent stops."""
        targets = self.opt["targets"].split()
        return min(targets, key=float) if targets else None

    def transfer(self, t, size, loss):
        """Pre-training, zero-shot, fine-tuned and from-scratch sweeps of one transfer."""
        o, configs = self.opt, self.preset.configs[t.family]
        sz, sfx = size_sets(size)
        lsfx = "" if loss == "mse" else f"_{loss}"
        sets = sz + ([] if loss == "mse" else ["--set", f"loss_func={loss}"])
        run = run_label(sfx, lsfx[1:])
        lo, hi = t.downstream.split(",")
        tag = range_tag(PDE_OF_FAMILY[t.family], float(lo), float(hi))
        single = self.question.name == "headline"
        yaml = (single and o["yaml"]) or configs["yaml"]
        pt = (single and o["pt"]) or configs["pt"]
        ft = (single and o["ft"]) or configs["ft"].format(tag=tag)
        sc = (single and o["sc"]) or configs["sc"].format(tag=tag)
        fmt = dict(base=self.preset.base, prefix=o["prefix"], tag=tag, sfx=sfx, lsfx=lsfx, loss=loss,
                   size=sfx[1:], sized=f" {sfx[1:]}" if sfx else "",
                   range=t.downstream.replace(",", "-"))
        name, panel = t.stem.format(**fmt), t.panel.format(**fmt)
        weights = self.pretrain(yaml, pt, run, sets)
        self.zeroshot(yaml, ft, ft + name_suffix(run), panel, weights, sets)
        # from scratch first: its n ascent stops once it reaches the smallest target, and
        # the fine-tuned curve covers the same n (every target then has points on both
        # sides where the n range allows)
        ran = self.sweep(yaml, sc, f"{name}_scratch", "scratch", panel, sets,
                         stop=self.stop_error())
        if loss == "mse":
            self.scratch_ran[t.family, sfx] = ran
        self.sweep(yaml, ft, f"{name}_finetune", "finetune", panel,
                   ["--set", f"pretrained={weights}", *sets], ran=ran)
        self.csvs[-2:] = self.csvs[-2:][::-1]   # the analysis lists fine-tuned first, as before

    def mixed(self, size):
        """The mixed model per budget, fine-tuned on each task of the question."""
        o, cfg = self.opt, self.preset.configs["mixed"]
        sz, sfx = size_sets(size)
        for budget in o["mixed_budgets"].split():
            run = run_label(sfx) if budget == "steps" else run_label(sfx, budget)
            approach = "finetune-mixed" + ("" if budget == "steps" else f"-{budget}")
            bsfx = "" if budget == "steps" else f"_{budget}"
            weights = self.pretrain(cfg["yaml"], cfg["pt"], run,
                                    sz + ["--set", self.mixed_budget(budget)])
            for task in self.question.mixed:
                ft = cfg["ft"] + task.task
                self.zeroshot(cfg["yaml"], ft, ft + name_suffix(run),
                              f"{task.panel}|{approach}", weights, sz)
                self.sweep(cfg["yaml"], ft, f"{self.preset.base}_mixed{bsfx}_{task.task}{sfx}",
                           approach, task.panel, ["--set", f"pretrained={weights}", *sz],
                           ran=self.scratch_ran.get((task.family, sfx)))

    def mixed_budget(self, budget):
        """The `--set` of the mixed pre-training's budget. Fixed-epoch protocol: max_epochs
        (MIXED_EPOCHS for 'steps', the preset's `mixed_epochs` otherwise). With a step cap in
        PT_SET (converged protocol) the budgets are caps: 'steps' = the single-PDE cap, the
        other budgets that cap times their epoch ratio to 'steps' (cpu: 24 / 8 = 3, the
        union of three pre-training sets)."""
        cap = parse_overrides(self.opt["pt_set"].split()).get("max_steps")
        if cap:
            if isinstance(cap, bool) or not isinstance(cap, int):
                raise UserError(f"PT_SET max_steps must be an integer, got {cap!r}")
            ratio = self.preset.mixed_epochs[budget] / self.preset.mixed_epochs["steps"]
            return f"max_steps={round(cap * ratio)}"
        epochs = self.opt["mixed_epochs"] if budget == "steps" else str(
            self.preset.mixed_epochs[budget])
        return f"max_epochs={epochs}"

    def mixed_scales(self):
        """Union scales of the three pre-training sets (utils/mixed_data.py)."""
        out = os.path.join(self.data_dir, "mixed_train_scales.npy")
        trains = []
        for family in ("poisson", "ad", "helmholtz"):
            t = next(t for t in self.question.transfers if t.family == family)
            lo, hi = t.pretrain.split(",")
            trains.append(dataset_path(self.data_dir, family, "train", float(lo), float(hi)))
        self.call(self.python + ["utils/mixed_data.py", *trains, "--out", out], skip_if=out)

    # ---------------------------------------------------------------------------------- #
    def transfers(self):
        """The question's transfers; SHIFTS replaces the downstream ranges of a shift design."""
        q = self.question
        if q.name not in ("headline", "shifts"):
            return q.transfers
        return tuple(replace(q.transfers[0], downstream=r) for r in self.opt["shifts"].split())

    def sizes(self):
        return self.opt["sizes"].split() if self.question.sizes != "size1" else [
            self.opt["size1"]]

    def run(self):
        o, q = self.opt, self.question
        transfers = self.transfers()
        losses = o["losses"].split()
        if q.name == "physics":          # before hours of runs
            from utils.loss_utils import LOSS_FUNCS

            for loss in losses:
                if loss not in LOSS_FUNCS:
                    raise UserError(f"loss_func '{loss}' is not one this code trains with "
                                    f"(utils/loss_utils.py)")
        else:
            losses = ["mse"]
        if not self.analyse_only:
            done = set()
            for t in self.data_order(transfers):
                self.gen_transfer(t, done)
            if q.mixed:
                self.mixed_scales()
        for size in self.sizes():
            for loss in losses:
                for t in transfers:
                    self.transfer(t, size, loss)
            if q.mixed:
                self.mixed(size)
        title = q.title
        if q.mixed and "epochs" in o["mixed_budgets"].split():
            title = title.replace("same size and steps", "same size; same steps and same epochs")
        self.call(self.python + ["utils/scaling_plots.py", *self.csvs, *self.zero_shot,
                                 *[a for t in o["targets"].split() for a in ("--target", t)],
                                 "--out_dir", o["out"], "--prefix", o["prefix"],
                                 "--title", f"{title} [{o['preset']}]"])

    def data_order(self, transfers):
        """Transfers in the order their data are generated: the other PDEs before Poisson
        (the order run_study.sh has always used; files are independent of it)."""
        return sorted(transfers, key=lambda t: PDE_OF_FAMILY[t.family] == "poisson")


def overrides_from_env(environ=os.environ):
    """{key: value} of the OVERRIDES variables set in the environment (set but empty counts:
    resolve decides what empty means)."""
    return {key: environ[var] for key, (var, _) in OVERRIDES.items() if var in environ}


def main(argv=None):
    p = argparse.ArgumentParser(description="Run and analyse one question of the study "
                                            "design (utils/study_spec.py).")
    p.add_argument("--env", action="store_true",
                   help="take overrides from run_study.sh's environment variables (STUDY, "
                        "PRESET, ROOT, ...); --set wins over them")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override ({', '.join(OVERRIDES)})")
    p.add_argument("--dry_run", action="store_true",
                   help="print the commands (one per line), run nothing")
    args = p.parse_args(argv)
    overrides = overrides_from_env() if args.env else {}
    for item in args.sets:
        key, eq, value = item.partition("=")
        if not eq:
            raise UserError(f"--set expects key=value, got '{item}'")
        overrides[key.strip()] = value
    opt = resolve(overrides)
    os.chdir(REPO)
    try:
        Study(opt, dry_run=args.dry_run).run()
    except StepFailed as e:
        logging.error("%s", e)
        return e.code
    return 0


if __name__ == "__main__":
    from utils.cli import run_cli

    sys.exit(run_cli(main))
