"""The study designs as data: per preset its budgets and configs, per question its transfers.

`utils/study.py` runs and analyses any question from these tables (`bash run_study.sh` is its
thin entry). A question is a list of transfers (pre-training range -> downstream range of one
PDE, each a panel of the figure), repeated over model sizes (`sizes`) and training losses
(`losses`); the mixed question adds mixed-physics models fine-tuned on each of its
transfers' downstream tasks. Nothing here runs anything; names are formatted by the driver.

Preset fields (every one can be overridden: run_study.sh's environment variables, the
driver's `--set key=value`; see `OVERRIDES`):

    root            results root (runs, sweeps, zero-shot evaluations)
    jobs            trials at once (utils/sweeps.py --jobs)
    sweep_file      downstream sweep (W&B sweep format)
    lrs             learning-rate grid (comma list) replacing the sweep file's
    seeds           seeds (comma list; empty: the sweep file's)
    n_train         downstream training-set sizes (comma list; replaces `subsample`)
    subsamples      subsample factors (comma list; only without n_train)
    extend_lr       lr-grid extension steps per direction (utils/sweeps.py --extend_lr)
    lr_search       'grid' (every n runs the full lr grid) or 'seeded' (every n runs the lr
                    chosen at the previous n and its neighbours; utils/sweeps.py --lr_search)
    study_set       key=value overrides of the downstream runs (their budget)
    step_caps       {n_train: max_steps} of the downstream runs at that n, replacing
                    study_set's step cap there (utils/sweeps.py --set_for): the cap grows with
                    the epoch length; n not listed: study_set's. Used only when study_set
                    has a step cap (max_steps) and EXTRA_SET none (STEP_CAPS: "N:STEPS ...")
    pt_set          key=value overrides of the pre-training runs (e.g. a longer budget so that
                    pre-training converges; EXTRA_SET still wins over it)
    targets         {question or 'default': target errors of the examples-needed tables};
                    the smallest is where the from-scratch n ascent stops (--stop_at_error)
    out, base       figure/table directory; the prefix of run and output names
    data            {grid: data directory}; gen_preset, the run_gen_data.sh preset
    pt_sizes, down_sizes   "train val test" samples of pre-training / downstream sets
                    (None: run_gen_data.sh's own sizes); pt_seed, down_seed: generator seeds
    size1           the one model size (mode_cut:embed_cut) of shifts, physics and mixed
    sizes           model sizes of the sizes question
    mixed_epochs    {mixed budget: epochs of the mixed pre-training} (MIXED_BUDGETS)
    configs         {family: yaml, pt, ft, sc config names; `{tag}` = downstream range tag}

Question fields: `transfers` (Transfer: PDE family key of `configs`, pre-training and
downstream ranges, panel label, sweep-name stem), `sizes` ('size1', 'sizes' or 'default'),
`losses`, `mixed` (MixedTask: the mixed model's fine-tuning configs), `title`, the name
suffix of its outputs, its grid per preset, and `n_train` / `down_sizes` per preset when the
question needs other downstream sizes than the preset (e.g. n up to 4096 with a larger
downstream train split) - None: the preset's.
"""
from __future__ import annotations

from dataclasses import dataclass, field

P = "configs/operators_poisson.yaml"
A = "configs/operators_ad.yaml"
H = "configs/operators_helmholtz.yaml"
M = "configs/operators_mixed.yaml"

PDE_OF_FAMILY = {"poisson": "poisson", "poisson64": "poisson", "ad": "ad",
                 "helmholtz": "helmholtz"}


@dataclass(frozen=True)
class Preset:
    name: str
    root: str
    jobs: str
    sweep_file: str
    lrs: str
    seeds: str
    n_train: str
    subsamples: str
    extend_lr: str
    lr_search: str
    study_set: str
    step_caps: dict
    pt_set: str
    targets: dict
    out: str
    base: str
    data: dict
    gen_preset: str
    pt_sizes: str | None
    down_sizes: str | None
    pt_seed: int | None
    down_seed: int | None
    size1: str
    sizes: str
    mixed_epochs: dict
    configs: dict


@dataclass(frozen=True)
class Transfer:
    family: str          # key of Preset.configs (its PDE: PDE_OF_FAMILY)
    pretrain: str        # "lo,hi" of the pre-training data
    downstream: str      # "lo,hi" of the downstream data
    panel: str           # figure panel label (template, see below)
    stem: str            # sweep names: {stem}_finetune / {stem}_scratch (template)


@dataclass(frozen=True)
class MixedTask:
    family: str          # the single-PDE transfer it is compared with
    task: str            # config suffix: {mixed ft}{task}; sweep {base}_mixed{budget}_{task}
    panel: str


@dataclass(frozen=True)
class Question:
    name: str
    title: str
    prefix: str                   # output names: {base}{prefix}
    grid: dict                    # {preset: grid of the data}
    transfers: tuple
    sizes: str = "size1"          # 'size1' | 'sizes' | 'default' (the configs' own size)
    losses: tuple = ("mse",)
    mixed: tuple = ()
    n_train: dict = field(default_factory=dict)     # {preset: comma list} (else the preset's)
    down_sizes: dict = field(default_factory=dict)  # {preset: "train val test"}


# The converged protocol of the cpu preset (key=value overrides; DESIGN.md section 9):
# downstream runs and pre-training (pre-training validates every epoch of 128 steps and
# counts 0.5% as an improvement: it runs longer, once per transfer).
# Downstream: validation checks 5% of the steps so far apart (at least every 32 steps and
# every epoch), so the patience (12 checks without a 1% improvement, i.e. the run trains on
# to about 1.8x the step of its best check; lr halved after 6 checks, ~34% more steps)
# grows with the run, and the checks read the relative L2 error the study reports, not the
# MSE loss (which stalls while the error still falls).
# The first rule (a fixed check every max(32 steps, 1 epoch), the MSE loss) stopped many runs
# early: RESULTS.md "Stopping rule", measured on seed 0 against it and 3x its patience.
CONVERGED_DOWN = ("scheduler=plateau val_every_steps=32 val_every_growth=0.05 "
                  "val_metric=rel_l2 early_stop_patience=12 early_stop_min_delta=0.01 "
                  "lr_plateau_patience=6 max_steps=30000")
# The step cap per n_train of the downstream runs where CONVERGED_DOWN's cap is too few (a
# table, not a rule: it is what was measured). At batch 16 an epoch is n / 16 steps, so a
# fixed cap gives large n few epochs; with the rule above a seed-0 run at n = 4096 stopped at
# 26942 steps, and one with 3x the first rule's patience was still improving at 30000.
STEP_CAPS_DOWN = {4096: 60000}
# Pre-training: the same second rule with 0.5% (a check at least every epoch of 128 steps),
# cap 36000 steps (3x the first rule's 12000). Under the first rule (patience 8 checks, lr
# halved after 3, the MSE loss) the Poisson (1,5) model stopped at 9856 steps with its lr
# down to 1.5e-6 (validation rel. L2 0.0084); under this one it reached the cap still
# improving (0.0035, test 0.0034; AD `rel_l2` likewise: RESULTS.md "Stopping rule"). A raised
# cap continues such a run (study.pretraining_done) instead of redoing it.
CONVERGED_PT = ("scheduler=plateau val_every_steps=64 val_every_growth=0.05 val_metric=rel_l2 "
                "early_stop_patience=12 early_stop_min_delta=0.005 lr_plateau_patience=6 "
                "max_steps=36000")

PRESETS = {
    "cpu": Preset(
        name="cpu", root="results/study", jobs="2", sweep_file="configs/sweep_seeds.yaml",
        lrs="3e-4,1e-3,3e-3", seeds="0,1,2",
        # random nested subsets of 4096 examples; the from-scratch sweep goes up in n until
        # its mean test error reaches the smallest target (the fine-tuned one follows it)
        n_train="8,32,128,512,1024,2048,4096",
        subsamples="", extend_lr="2", lr_search="seeded",
        # converged training (DESIGN.md section 9): validation checks 5% of the steps so far
        # apart (at least every 32 steps and every epoch) on the relative L2 error, lr halved
        # after 6 checks without a 1% improvement, stop after 12, cap 30000 steps, 60000 at
        # n = 4096 (STEP_CAPS_DOWN; a run the cap ends while it still improves is flagged in
        # every table)
        study_set=CONVERGED_DOWN, step_caps=STEP_CAPS_DOWN, pt_set=CONVERGED_PT,
        # AD and Helmholtz errors are larger; 0.05 is the target for Helmholtz
        targets={"default": "0.1 0.07 0.05", "physics": "0.2 0.1 0.05", "mixed": "0.2 0.1 0.05"},
        out="assets", base="study_cpu",
        # 64x64 (headline) or 32x32 (shifts, sizes, physics, mixed); pre-training 4096/256/256
        # (seed 0; the models shipped in pretrained/ are the first rule's runs) and downstream
        # 4096/64/256 samples (seed 1: independent sources); 64 validation samples choose the
        # lr and stop the runs, 256 test samples measure the error
        data={64: "data/study", 32: "data/study32"}, gen_preset="demo",
        pt_sizes="4096 256 256", down_sizes="4096 64 256", pt_seed=0, down_seed=1,
        size1="8:16", sizes="4:8 4:16 8:16 8:32",
        # the mixed model sees 3x the samples of a single-PDE one: the budget 'steps' gets the
        # single-PDE step cap, 'epochs' 3x that cap (24 / 8; study.mixed_budget); without a
        # step cap in pt_set these are max_epochs
        mixed_epochs={"steps": 8, "epochs": 24},
        configs={
            "poisson64": dict(yaml=P, pt="poisson-cpu-pt-k1_5", ft="poisson-cpu-ft-{tag}",
                              sc="poisson-cpu-scratch-{tag}"),
            "poisson": dict(yaml=P, pt="poisson-cpu32-pt-k1_5", ft="poisson-cpu32-ft-{tag}",
                            sc="poisson-cpu32-scratch-{tag}"),
            "ad": dict(yaml=A, pt="ad-cpu32-pt-adr0p2_1", ft="ad-cpu32-ft-{tag}",
                       sc="ad-cpu32-scratch-{tag}"),
            "helmholtz": dict(yaml=H, pt="helm-cpu32-pt-o1_10", ft="helm-cpu32-ft-{tag}",
                              sc="helm-cpu32-scratch-{tag}"),
            "mixed": dict(yaml=M, pt="mixed-cpu32-pt", ft="mixed-cpu32-ft-"),
        }),
    "paper": Preset(
        name="paper", root="results", jobs="1", sweep_file="configs/sweep_config.yaml",
        lrs="1e-5,5e-5,1e-4,5e-4,1e-3", seeds="", n_train="",
        subsamples="1,2,4,8,16,32,64,128,256,512,1024,2048,4096", extend_lr="",
        lr_search="grid", study_set="", step_caps={}, pt_set="", targets={"default": "0.01"},
        out="assets",
        base="study_paper",
        data={128: "data/paper"}, gen_preset="paper",
        pt_sizes=None, down_sizes=None, pt_seed=None, down_seed=None,  # run_gen_data.sh's
        size1="32:64",                                   # the published model (67M parameters)
        sizes="4:16 8:32 16:64 32:128",
        mixed_epochs={"steps": 167, "epochs": 500},      # ~ 500 / 3: the single-PDE steps
        configs={
            "poisson64": dict(yaml=P, pt="poisson-scale-k1_5", ft="poisson-ft-{tag}",
                              sc="poisson-scratch-{tag}"),
            "poisson": dict(yaml=P, pt="poisson-scale-k1_5", ft="poisson-ft-{tag}",
                            sc="poisson-scratch-{tag}"),
            "ad": dict(yaml=A, pt="ad-scale-adr0p2_1", ft="ad-ft-{tag}", sc="ad-scratch-{tag}"),
            "helmholtz": dict(yaml=H, pt="helm-scale-o1_10", ft="helm-ft-{tag}",
                              sc="helm-scratch-{tag}"),
            "mixed": dict(yaml=M, pt="mixed-scale", ft="mixed-ft-"),
        }),
}

# panel and stem are templates: {range} downstream "lo-hi", {tag} its range tag, {size}
# "mMwW" ("" for the configs' own size), {sized} " mMwW" or "", {sfx} "_mMwW" or "", {loss},
# {lsfx} "" for mse else "_loss", {base} / {prefix} the preset's base and the output prefix
POISSON_5_10 = Transfer("poisson", "1,5", "5,10", "Poisson 5-10", "{base}_poisson_k5_10{sfx}")
AD_1_2 = Transfer("ad", "0.2,1", "1,2", "AD 1-2 {loss}", "{base}_ad_adr1_2{sfx}{lsfx}")
HELM_10_20 = Transfer("helmholtz", "1,10", "10,20", "Helmholtz 10-20 {loss}",
                      "{base}_helm_o10_20{sfx}{lsfx}")

QUESTIONS = {
    # Poisson (1,5) -> (5,10) at 64x64 (cpu), the model size of the configs; SHIFTS / SIZES /
    # YAML / PT / FT / SC run another single transfer
    "headline": Question(
        "headline", "Poisson (1,5) -> (5,10)", "", {"cpu": 64, "paper": 128},
        (Transfer("poisson64", "1,5", "5,10", "K {range}{sized}", "{prefix}{sfx}"),),
        sizes="default"),
    # Q1 data scaling under shift, at the size size1 of Q3/Q4; its (5,10) transfer is the one
    # of sizes and mixed (same run names)
    "shifts": Question(
        "shifts", "Poisson (1,5) -> shifted ranges", "_shifts", {"cpu": 32, "paper": 128},
        tuple(Transfer("poisson", "1,5", r, "K {range}", "{base}_poisson_{tag}{sfx}")
              for r in ("2.5,7.5", "5,10", "10,20"))),
    # Q2 model scaling: one transfer per size
    "sizes": Question(
        "sizes", "Poisson (1,5) -> (5,10), model sizes", "_sizes", {"cpu": 32, "paper": 128},
        (Transfer("poisson", "1,5", "5,10", "{size}", "{base}_poisson_k5_10{sfx}"),),
        sizes="sizes"),
    # Q3 other physics, each with every training loss (pre-training and both approaches)
    "physics": Question(
        "physics", "other physics: pre-trained -> shifted coefficients, two training losses",
        "_physics", {"cpu": 32, "paper": 128}, (AD_1_2, HELM_10_20), losses=("mse", "rel_l2")),
    # Q4 the three single-PDE transfers and the mixed model fine-tuned on each task
    "mixed": Question(
        "mixed", "mixed-physics vs single-PDE pre-training, same size and steps", "_mixed",
        {"cpu": 32, "paper": 128}, (POISSON_5_10, AD_1_2, HELM_10_20),
        mixed=(MixedTask("poisson", "poisson-k5_10", "Poisson 5-10"),
               MixedTask("ad", "ad-adr1_2", "AD 1-2 mse"),
               MixedTask("helmholtz", "helm-o10_20", "Helmholtz 10-20 mse"))),
}

# The mixed model's budgets (Q4): 'steps' = the optimizer steps of one single-PDE model
# (approach finetune-mixed, today's runs), 'epochs' = the single-PDE epochs over the union
# (3x the steps; approach finetune-mixed-epochs, runs and sweeps named ..._epochs).
MIXED_BUDGETS = ("steps", "epochs")

# overrides: name -> (environment variable of run_study.sh, "empty means default" (bash
# ${X:-d}) or "empty means empty" (${X-d}))
OVERRIDES = {
    "study": ("STUDY", True), "preset": ("PRESET", True), "python": ("PYTHON", True),
    "analyse_only": ("ANALYSE_ONLY", True), "root": ("ROOT", True), "jobs": ("JOBS", True),
    "sweep_file": ("SWEEP_FILE", True), "lrs": ("LRS", True), "seeds": ("SEEDS", False),
    "n_train": ("N_TRAIN", False), "subsamples": ("SUBSAMPLES", True),
    "extend_lr": ("EXTEND_LR", True), "lr_search": ("LR_SEARCH", True),
    "study_set": ("STUDY_SET", False), "step_caps": ("STEP_CAPS", False),
    "pt_set": ("PT_SET", False),
    "extra_set": ("EXTRA_SET", True), "targets": ("TARGETS", True), "out": ("OUT", True),
    "prefix": ("PREFIX", True), "launcher": ("LAUNCHER", True), "shifts": ("SHIFTS", True),
    "sizes": ("SIZES", True), "size1": ("SIZE1", True), "losses": ("LOSSES", True),
    "mixed_epochs": ("MIXED_EPOCHS", True), "mixed_budgets": ("MIXED_BUDGETS", True),
    "pt_sizes": ("PT_SIZES", True), "down_sizes": ("DOWN_SIZES", True),
    "yaml": ("YAML", True), "pt": ("PT", True), "ft": ("FT", True), "sc": ("SC", True),
}
