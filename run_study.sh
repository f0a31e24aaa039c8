#!/usr/bin/env bash
# Transfer-learning study, Poisson (the headline): pre-train an FNO on diffusion eigenvalue
# range (1,5), then train on the shifted range (5,10) with n downstream examples, fine-tuned
# from the pre-trained weights and from scratch, for every n and learning rate; pick each
# n's learning rate on VALIDATION error; plot test error vs n and say how many examples each
# approach needs for a target error.
#
#   bash run_study.sh                     # PRESET=cpu: 2 CPU cores, < 60 min, 64x64 grid
#   PRESET=paper LAUNCHER="torchrun --standalone --nproc_per_node=4" bash run_study.sh
#                                         # paper scale on a GPU node (days; or use W&B, README)
#
# The CPU preset repeats every (approach, n, lr) cell over SEEDS; a seed sets the model
# initialisation and the random training subset of n_train examples (nested in n, the same for
# both approaches); the lr grid of an n grows by up to EXTEND_LR steps where the seed-averaged
# validation choice is at its edge; every run gets at least MIN_STEPS optimizer steps
# (STUDY_SET). The paper preset keeps the published protocol (one seed, `subsample`, fixed
# epochs); SEEDS, N_TRAIN, EXTEND_LR and STUDY_SET apply to it too when given.
#
# Environment (defaults per preset): ROOT (results root), JOBS (trials at once), SWEEP_FILE,
# LRS, SUBSAMPLES, N_TRAIN and SEEDS (comma lists replacing/adding the sweep file's values;
# N_TRAIN replaces SUBSAMPLES), EXTEND_LR (lr-grid extension steps per direction), STUDY_SET
# (space-separated key=value overrides of the downstream runs, e.g. "min_steps=100
# max_epochs=8"), TARGETS (space-separated target
# errors), OUT (figure directory), PREFIX (output names), LAUNCHER (prefix of train.py),
# PYTHON, YAML / PT / FT / SC (config file and the pre-training, fine-tuning and
# from-scratch config names: other shifts or PDEs, e.g. FT=poisson-ft-k10_20
# SC=poisson-scratch-k10_20 PREFIX=k10_20 POISSON_RANGES="1,5 10,20" with PRESET=paper),
# EXTRA_SET (space-separated key=value overrides for every training run, e.g.
# "max_epochs=2" for a smoke test), SIZES (model-size scaling: space-separated
# mode_cut:embed_cut pairs, e.g. "4:16 8:32 16:64 32:64 32:128"; steps 1-3 run per size,
# one figure panel per size; default: the config's own size), POISSON_RANGES (paper data).
# Every step is resumable: rerun the same command after an interruption.
set -euo pipefail
cd "$(dirname "$0")"

PRESET=${PRESET:-cpu}
PYTHON=${PYTHON:-python}
YAML=${YAML:-configs/operators_poisson.yaml}
case "$PRESET" in
  cpu)
    ROOT=${ROOT:-results/study}
    PT=${PT:-poisson-cpu-pt-k1_5}; FT=${FT:-poisson-cpu-ft-k5_10}; SC=${SC:-poisson-cpu-scratch-k5_10}
    JOBS=${JOBS:-2}
    SWEEP_FILE=${SWEEP_FILE:-configs/sweep_seeds.yaml}
    LRS=${LRS:-"3e-4,1e-3,3e-3"}
    SEEDS=${SEEDS-"0,1,2"}
    N_TRAIN=${N_TRAIN-"8,32,64,128,512"}                    # random nested subsets of 1024 examples
    EXTEND_LR=${EXTEND_LR:-2}
    STUDY_SET=${STUDY_SET-"min_steps=100 max_epochs=8"}
    TARGETS=${TARGETS:-"0.1 0.07 0.05"}
    OUT=${OUT:-assets}; PREFIX=${PREFIX:-study_cpu}
    # pre-training and downstream sets use different seeds (independent sources)
    PRESET=demo DATA_DIR=data/study PDES=poisson POISSON_RANGES="1,5" \
      NTRAIN=2048 NVAL=128 NTEST=128 SEED=0 PYTHON=$PYTHON bash run_gen_data.sh
    PRESET=demo DATA_DIR=data/study PDES=poisson POISSON_RANGES="${DOWN_RANGE:-5,10}" \
      NTRAIN=1024 NVAL=64 NTEST=256 SEED=1 PYTHON=$PYTHON bash run_gen_data.sh ;;
  paper)
    ROOT=${ROOT:-results}
    PT=${PT:-poisson-scale-k1_5}; FT=${FT:-poisson-ft-k5_10}; SC=${SC:-poisson-scratch-k5_10}
    JOBS=${JOBS:-1}
    SWEEP_FILE=${SWEEP_FILE:-configs/sweep_config.yaml}
    LRS=${LRS:-"1e-5,5e-5,1e-4,5e-4,1e-3"}
    [ -n "${N_TRAIN:-}" ] || SUBSAMPLES=${SUBSAMPLES:-"1,2,4,8,16,32,64,128,256,512,1024,2048,4096"}
    TARGETS=${TARGETS:-"0.01"}
    OUT=${OUT:-assets}; PREFIX=${PREFIX:-study_paper}
    PRESET=paper PDES=poisson POISSON_RANGES="${POISSON_RANGES:-1,5 5,10}" PYTHON=$PYTHON \
      bash run_gen_data.sh ;;
  *) echo "error: PRESET must be cpu or paper (got '$PRESET')" >&2; exit 2 ;;
esac
read -r -a LAUNCH <<< "${LAUNCHER:-$PYTHON}"
SETS=()
for kv in ${EXTRA_SET:-}; do SETS+=(--set "$kv"); done

DOWN=()   # downstream runs only: the study's budget first, so EXTRA_SET wins over it
for kv in ${STUDY_SET:-} ${EXTRA_SET:-}; do DOWN+=(--set "$kv"); done
VALUES=(--values "lr=$LRS")
if [ -n "${N_TRAIN:-}" ]; then
  grep -q '^  subsample:' "$SWEEP_FILE" && VALUES+=(--values "subsample=")   # n_train replaces it
  VALUES+=(--values "n_train=$N_TRAIN")
elif [ -n "${SUBSAMPLES:-}" ]; then
  VALUES+=(--values "subsample=$SUBSAMPLES")
fi
[ -z "${SEEDS:-}" ] || VALUES+=(--values "seed=$SEEDS")

SWEEP=(--sweep "$SWEEP_FILE" --yaml_config $YAML --root_dir "$ROOT" "${VALUES[@]}"
       --extend_lr "${EXTEND_LR:-0}" --jobs "$JOBS" ${DOWN[@]+"${DOWN[@]}"})
[ -n "${LAUNCHER:-}" ] && SWEEP+=(--launcher "$LAUNCHER")
CSVS=(); ZS_ARGS=()
for size in ${SIZES:-default}; do
  if [ "$size" = default ]; then
    label=""; run=0; SZ=(); TAG=()
  else
    m=${size%%:*}; w=${size##*:}
    label="m${m}w${w}"; run=$label; SZ=(--set "mode_cut=$m" --set "embed_cut=$w")
    TAG=(--tag "model=$label")
  fi
  sfx=${label:+_$label}

  # 1. pre-training (resumes from its checkpoint if interrupted; skipped when finished)
  layout() { $PYTHON utils/run_layout.py "$ROOT" "$PT" "$run" "$1"; }   # utils/run_layout.py
  WEIGHTS=$(layout best_ckpt)
  if [ ! -f "$(layout train_summary)" ]; then
    "${LAUNCH[@]}" train.py --yaml_config $YAML --config $PT --run_num "$run" --root_dir "$ROOT" \
      ${SETS[@]+"${SETS[@]}"} ${SZ[@]+"${SZ[@]}"}
  fi
  [ -f "$(layout eval_summary)" ] || $PYTHON eval.py --yaml_config $YAML --config $PT \
    --run_num "$run" --root_dir "$ROOT" --weights "$WEIGHTS" ${SZ[@]+"${SZ[@]}"}

  # 2. zero-shot: the pre-trained model on the downstream test set (pre-training scales)
  ZS=$ROOT/zeroshot/$FT$sfx
  [ -f "$ZS/summary.json" ] || $PYTHON eval.py --yaml_config $YAML --config $FT \
    --run_num zeroshot --root_dir "$ROOT" --weights "$WEIGHTS" --out_dir "$ZS" \
    ${SZ[@]+"${SZ[@]}"}
  ZS_ARGS+=(--zero_shot "${label:+$label=}$ZS/summary.json")

  # 3. downstream sweeps: lr x subsample, fine-tuned and from scratch (resumable)
  $PYTHON utils/sweeps.py "${SWEEP[@]}" --config $FT --name "${PREFIX}${sfx}_finetune" \
    --set "pretrained=$WEIGHTS" --tag approach=finetune ${SZ[@]+"${SZ[@]}"} \
    ${TAG[@]+"${TAG[@]}"}
  $PYTHON utils/sweeps.py "${SWEEP[@]}" --config $SC --name "${PREFIX}${sfx}_scratch" \
    --tag approach=scratch ${SZ[@]+"${SZ[@]}"} ${TAG[@]+"${TAG[@]}"}
  CSVS+=("$ROOT/sweeps/${PREFIX}${sfx}_finetune/results.csv"
         "$ROOT/sweeps/${PREFIX}${sfx}_scratch/results.csv")
done

# 4. figure, tables and the examples-needed statement
TARGET_ARGS=()
for t in $TARGETS; do TARGET_ARGS+=(--target "$t"); done
$PYTHON utils/scaling_plots.py "${CSVS[@]}" "${ZS_ARGS[@]}" \
  "${TARGET_ARGS[@]}" --out_dir "$OUT" --prefix "$PREFIX" \
  --title "$PT -> $FT / $SC [$PRESET]"
