#!/usr/bin/env bash
# Transfer-learning studies of the paper, one resumable command each (README, "Results"):
#
#   bash run_study.sh                      # headline: Poisson (1,5) -> (5,10), 64x64
#   STUDY=shifts  bash run_study.sh        # Q1 data scaling under shift: (1,5) -> (2.5,7.5),
#                                          #    (5,10), (10,20); one panel per shift, 32x32
#   STUDY=sizes   bash run_study.sh        # Q2 model scaling: 4 sizes (17K-1.06M), 32x32
#   STUDY=physics bash run_study.sh        # Q3 AD (0.2,1)->(1,2), Helmholtz (1,10)->(10,20),
#                                          #    each with loss_func mse and rel_l2, 32x32
#   STUDY=mixed   bash run_study.sh        # Q4 mixed-physics pre-training vs single-PDE, 32x32
#   PRESET=paper LAUNCHER="torchrun --standalone --nproc_per_node=4" STUDY=... bash run_study.sh
#                                          # paper scale on a GPU node (128x128, days)
#
# The designs (transfers, sizes, n ranges, losses, targets, budgets per preset) are data in
# utils/study_spec.py; utils/study.py runs and analyses any question from them (this script
# passes its environment to it: `python utils/study.py --env`; `--dry_run` prints the
# commands). Every transfer: pre-train (skipped when finished), evaluate it, zero-shot on the downstream
# test set, then downstream sweeps seeds x n_train x lr, from scratch and fine-tuned from the
# pre-trained weights (utils/sweeps.py: nested random subsets, lr-grid extension); the
# lr of each n is chosen on VALIDATION error averaged over seeds (utils/scaling_plots.py),
# which writes the figure and the CSV tables (means and 95% intervals over seeds) to OUT.
# Every step is resumable: rerun the same command after an interruption. Runs of the same
# pre-training / downstream sweep are shared between studies (same ROOT, same names), so e.g.
# STUDY=mixed reuses the AD and Helmholtz runs of STUDY=physics.
#
# Environment (defaults per preset): STUDY, PRESET (cpu | paper), ROOT (results root), JOBS
# (trials at once), SWEEP_FILE, LRS, N_TRAIN, SUBSAMPLES, SEEDS (comma lists replacing the
# sweep file's values; N_TRAIN replaces SUBSAMPLES), EXTEND_LR (lr-grid extension steps per
# direction), LR_SEARCH (grid: every n runs the full lr grid; seeded: each n the previous
# n's choice and its neighbours; cpu default seeded, paper grid), STUDY_SET (key=value
# overrides of the downstream runs, e.g. "min_steps=100 max_epochs=8" for a fixed budget),
# STEP_CAPS ("N:STEPS ...": the downstream step cap at those n_train, replacing STUDY_SET's
# max_steps there; cpu "4096:60000", empty: none), PT_SET (key=value
# overrides of the pre-training runs), EXTRA_SET (key=value overrides of EVERY training run,
# e.g. "max_steps=4" for a smoke test; it wins over STUDY_SET and PT_SET), TARGETS (target
# errors; the from-scratch sweep runs n upwards until its error reaches the smallest, the
# fine-tuned one then runs the same n), OUT (figure and table
# directory), PREFIX (output names; default per study), LAUNCHER (prefix of train.py), PYTHON,
# SHIFTS (Q1: downstream Poisson ranges), SIZES (mode_cut:embed_cut pairs: model sizes of
# Q2; SIZE1: the one size of Q1, Q3 and Q4), LOSSES (Q3: loss_func values), MIXED_EPOCHS (Q4:
# epochs of the mixed pre-training), PT_SIZES / DOWN_SIZES (cpu: "train val test" samples of
# the pre-training / downstream sets), MIXED_BUDGETS (Q4: "steps" = the mixed model has the
# steps of one single-PDE model, "epochs" = its epochs over the union, 3x the steps; default
# "steps"), ANALYSE_ONLY=1 (no training: figure and tables from the runs already there),
# headline only: YAML / PT / FT / SC (config file and names of another
# single transfer; its sweeps are named PREFIX_finetune / PREFIX_scratch).
# -h, --help: this text (nothing else runs).
case "${1:-}" in -h|--help) sed -n '2,/^[^#]/s/^# \{0,1\}//p' "$0"; exit 0 ;; esac
set -euo pipefail
cd "$(dirname "$0")"
# shellcheck disable=SC2086
exec ${PYTHON:-python} utils/study.py --env "$@"
