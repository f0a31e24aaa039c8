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
# Every transfer: pre-train (skipped when finished), evaluate it, zero-shot on the downstream
# test set, then downstream sweeps seeds x n_train x lr, fine-tuned from the pre-trained
# weights and from scratch (utils/sweeps.py: nested random subsets, lr-grid extension); the
# lr of each n is chosen on VALIDATION error averaged over seeds (utils/scaling_plots.py),
# which writes the figure and the CSV tables (means and 95% intervals over seeds) to OUT.
# Every step is resumable: rerun the same command after an interruption. Runs of the same
# pre-training / downstream sweep are shared between studies (same ROOT, same names), so e.g.
# STUDY=mixed reuses the AD and Helmholtz runs of STUDY=physics.
#
# Environment (defaults per preset): STUDY, PRESET (cpu | paper), ROOT (results root), JOBS
# (trials at once), SWEEP_FILE, LRS, N_TRAIN, SUBSAMPLES, SEEDS (comma lists replacing the
# sweep file's values; N_TRAIN replaces SUBSAMPLES), EXTEND_LR (lr-grid extension steps per
# direction), STUDY_SET (key=value overrides of the downstream runs, e.g. "min_steps=100
# max_epochs=8"), EXTRA_SET (key=value overrides of EVERY training run, e.g. "max_epochs=1"
# for a smoke test; it wins over STUDY_SET), TARGETS (target errors), OUT (figure and table
# directory), PREFIX (output names; default per study), LAUNCHER (prefix of train.py), PYTHON,
# SHIFTS (Q1: downstream Poisson ranges), SIZES (mode_cut:embed_cut pairs: model sizes of
# Q2; SIZE1: the one size of Q1, Q3 and Q4), LOSSES (Q3: loss_func values), MIXED_EPOCHS (Q4:
# epochs of the mixed pre-training), PT_SIZES / DOWN_SIZES (cpu: "train val test" samples of
# the pre-training / downstream sets), ANALYSE_ONLY=1 (no training: figure and tables from the
# runs already there), headline only: YAML / PT / FT / SC (config file and names of another
# single transfer; its sweeps are named PREFIX_finetune / PREFIX_scratch).
set -euo pipefail
cd "$(dirname "$0")"

PRESET=${PRESET:-cpu}
STUDY=${STUDY:-headline}
PYTHON=${PYTHON:-python}
ANALYSE_ONLY=${ANALYSE_ONLY:-0}
P=configs/operators_poisson.yaml; A=configs/operators_ad.yaml
H=configs/operators_helmholtz.yaml; M=configs/operators_mixed.yaml
case "$STUDY" in headline|shifts|sizes|physics|mixed) ;;
  *) echo "error: STUDY must be headline, shifts, sizes, physics or mixed (got '$STUDY')" >&2
     exit 2 ;; esac
case "$PRESET" in
  cpu)
    ROOT=${ROOT:-results/study}
    JOBS=${JOBS:-2}
    SWEEP_FILE=${SWEEP_FILE:-configs/sweep_seeds.yaml}
    LRS=${LRS:-"3e-4,1e-3,3e-3"}
    SEEDS=${SEEDS-"0,1,2"}
    N_TRAIN=${N_TRAIN-"8,32,64,128,512"}                    # random nested subsets of 1024 examples
    EXTEND_LR=${EXTEND_LR:-2}
    STUDY_SET=${STUDY_SET-"min_steps=100 max_epochs=8"}
    # target errors of the examples-needed tables: AD and Helmholtz errors are larger
    case "$STUDY" in physics|mixed) TARGETS=${TARGETS:-"0.3 0.2 0.1"} ;;
      *) TARGETS=${TARGETS:-"0.1 0.07 0.05"} ;; esac
    OUT=${OUT:-assets}; BASE=study_cpu
    # 64x64 (headline) or 32x32 (shifts, sizes, physics, mixed); pre-training 2048/128/128
    # (seed 0) and downstream 1024/64/256 samples (seed 1: independent sources); 64
    # validation samples choose the lr, 256 test samples measure the error
    case "$STUDY" in headline) D=data/study; N=64 ;; *) D=data/study32; N=32 ;; esac
    gen() { PRESET=demo DATA_DIR=$D N=$N PDES=$1 POISSON_RANGES=$2 AD_RANGES=$2 HELM_RANGES=$2 \
              NTRAIN=$3 NVAL=$4 NTEST=$5 SEED=$6 PYTHON=$PYTHON bash run_gen_data.sh; }
    read -r -a PT_N <<< "${PT_SIZES:-2048 128 128}"          # train val test
    read -r -a DOWN_N <<< "${DOWN_SIZES:-1024 64 256}"
    gen_pt() { gen "$1" "$2" "${PT_N[@]}" 0; }
    gen_down() { gen "$1" "$2" "${DOWN_N[@]}" 1; }
    # configs: headline 64x64 poisson-cpu-*; Q1-Q4 32x32 *-cpu32-* (size from SIZE1 / SIZES)
    PT_P=poisson-cpu-pt-k1_5; FT_P=poisson-cpu-ft-; SC_P=poisson-cpu-scratch-
    PPT=poisson-cpu32-pt-k1_5; PFT=poisson-cpu32-ft-k5_10; PSC=poisson-cpu32-scratch-k5_10
    APT=ad-cpu32-pt-adr0p2_1; AFT=ad-cpu32-ft-adr1_2; ASC=ad-cpu32-scratch-adr1_2
    HPT=helm-cpu32-pt-o1_10; HFT=helm-cpu32-ft-o10_20; HSC=helm-cpu32-scratch-o10_20
    XPT=mixed-cpu32-pt; XFT=mixed-cpu32-ft-
    MIXED_SCALES=$D/mixed_train_scales.npy
    SIZE1=${SIZE1:-8:16}                               # the one size of Q1, Q3 and Q4
    MIXED_EPOCHS=${MIXED_EPOCHS:-8}                    # single-PDE pre-training: 24 epochs
    ;;
  paper)
    ROOT=${ROOT:-results}
    JOBS=${JOBS:-1}
    SWEEP_FILE=${SWEEP_FILE:-configs/sweep_config.yaml}
    LRS=${LRS:-"1e-5,5e-5,1e-4,5e-4,1e-3"}
    [ -n "${N_TRAIN:-}" ] || SUBSAMPLES=${SUBSAMPLES:-"1,2,4,8,16,32,64,128,256,512,1024,2048,4096"}
    TARGETS=${TARGETS:-"0.01"}
    OUT=${OUT:-assets}; BASE=study_paper
    D=data/paper
    gen() { PRESET=paper PDES=$1 POISSON_RANGES=$2 AD_RANGES=$2 HELM_RANGES=$2 PYTHON=$PYTHON \
              bash run_gen_data.sh; }
    gen_pt() { gen "$@"; }
    gen_down() { gen "$@"; }
    PT_P=poisson-scale-k1_5; FT_P=poisson-ft-; SC_P=poisson-scratch-
    PPT=poisson-scale-k1_5; PFT=poisson-ft-k5_10; PSC=poisson-scratch-k5_10
    APT=ad-scale-adr0p2_1; AFT=ad-ft-adr1_2; ASC=ad-scratch-adr1_2
    HPT=helm-scale-o1_10; HFT=helm-ft-o10_20; HSC=helm-scratch-o10_20
    XPT=mixed-scale; XFT=mixed-ft-
    MIXED_SCALES=$D/mixed_train_scales.npy
    SIZE1=${SIZE1:-32:64}                              # the published model (67M parameters)
    MIXED_EPOCHS=${MIXED_EPOCHS:-167}                  # ~ 500 / 3: the single-PDE steps
    ;;
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
SWEEP=(--sweep "$SWEEP_FILE" --root_dir "$ROOT" "${VALUES[@]}" --extend_lr "${EXTEND_LR:-0}"
       --jobs "$JOBS" ${DOWN[@]+"${DOWN[@]}"})
[ -n "${LAUNCHER:-}" ] && SWEEP+=(--launcher "$LAUNCHER")

CSVS=(); ZS_ARGS=()
run_path() { $PYTHON utils/run_layout.py "$ROOT" "$1" "$2" "$3"; }   # utils/run_layout.py

# size M:W -> SZ (the --set pair) and SFX ("_mMwW"; empty for "default": the config's size)
size_sets() {
  if [ "$1" = default ]; then SZ=(); SFX=""; return; fi
  SZ=(--set "mode_cut=${1%%:*}" --set "embed_cut=${1##*:}"); SFX="_m${1%%:*}w${1##*:}"
}

# pretrain YAML CONFIG RUN [--set k=v ...]: train (skipped when finished), evaluate; sets WEIGHTS
pretrain() {
  local yaml=$1 cfg=$2 run=$3; shift 3
  WEIGHTS=$(run_path "$cfg" "$run" best_ckpt)
  [ "$ANALYSE_ONLY" = 1 ] && return
  [ -f "$(run_path "$cfg" "$run" train_summary)" ] || "${LAUNCH[@]}" train.py \
    --yaml_config "$yaml" --config "$cfg" --run_num "$run" --root_dir "$ROOT" \
    ${SETS[@]+"${SETS[@]}"} "$@"
  [ -f "$(run_path "$cfg" "$run" eval_summary)" ] || $PYTHON eval.py --yaml_config "$yaml" \
    --config "$cfg" --run_num "$run" --root_dir "$ROOT" --weights "$WEIGHTS" "$@"
}

# zeroshot YAML CONFIG NAME PANEL [--set ...]: the WEIGHTS on CONFIG's (downstream) test set
zeroshot() {
  local yaml=$1 cfg=$2 name=$3 panel=$4; shift 4
  local zs=$ROOT/zeroshot/$name
  [ "$ANALYSE_ONLY" = 1 ] || [ -f "$zs/summary.json" ] || $PYTHON eval.py --yaml_config "$yaml" \
    --config "$cfg" --run_num zeroshot --root_dir "$ROOT" --weights "$WEIGHTS" --out_dir "$zs" "$@"
  ZS_ARGS+=(--zero_shot "$panel=$zs/summary.json")
}

# sweep YAML CONFIG NAME APPROACH PANEL [--set ...]: the downstream sweep, one panel's curve
sweep() {
  local yaml=$1 cfg=$2 name=$3 approach=$4 panel=$5; shift 5
  [ "$ANALYSE_ONLY" = 1 ] || $PYTHON utils/sweeps.py "${SWEEP[@]}" --yaml_config "$yaml" \
    --config "$cfg" --name "$name" --tag "approach=$approach" "$@"
  CSVS+=("$ROOT/sweeps/$name/results.csv@model=$panel,approach=$approach")
}

# transfer YAML PT RUN FT SC NAME PANEL [--set ...]: pre-training, zero-shot, fine-tuned and
# from-scratch sweeps (the sets apply to all of them: model size, loss)
transfer() {
  local yaml=$1 pt=$2 run=$3 ft=$4 sc=$5 name=$6 panel=$7; shift 7
  pretrain "$yaml" "$pt" "$run" "$@"
  zeroshot "$yaml" "$ft" "$ft$(sfx_of "$run")" "$panel" "$@"
  sweep "$yaml" "$ft" "${name}_finetune" finetune "$panel" --set "pretrained=$WEIGHTS" "$@"
  sweep "$yaml" "$sc" "${name}_scratch" scratch "$panel" "$@"
}

# run label of a size (and loss): "0" for the config's own size, else "mMwW[_loss]"
run_of() { local r=${1#_}${2:+_$2}; echo "${r:-0}"; }
sfx_of() { [ "$1" = 0 ] || echo "_$1"; }                           # run label -> name suffix

shift_tag() { echo "k$(echo "$1" | sed 's/\./p/g; s/,/_/')"; }    # 2.5,7.5 -> k2p5_7p5

case "$STUDY" in
  headline)
    # Poisson (1,5) -> (5,10) at 64x64, the model size of the configs; its runs are named
    # study_cpu_*; YAML / PT / FT / SC / SHIFTS / SIZES run another single transfer
    SHIFTS=${SHIFTS:-5,10}; PREFIX=${PREFIX:-$BASE}
    [ "$ANALYSE_ONLY" = 1 ] || { gen_pt poisson 1,5; for r in $SHIFTS; do gen_down poisson "$r"; done; }
    for size in ${SIZES:-default}; do
      size_sets "$size"
      for r in $SHIFTS; do
        tag=$(shift_tag "$r")
        ft=${FT:-$FT_P$tag}; sc=${SC:-$SC_P$tag}
        transfer "${YAML:-$P}" "${PT:-$PT_P}" "$(run_of "$SFX")" "$ft" "$sc" "$PREFIX$SFX" \
          "K ${r/,/-}${SFX:+ ${SFX#_}}" ${SZ[@]+"${SZ[@]}"}
      done
    done
    TITLE="Poisson (1,5) -> (5,10) [$PRESET]" ;;
  shifts)
    # Q1 at the size SIZE1 of Q3/Q4; the (5,10) transfer is the one of STUDY=sizes / mixed
    SHIFTS=${SHIFTS:-"2.5,7.5 5,10 10,20"}; PREFIX=${PREFIX:-${BASE}_shifts}
    [ "$ANALYSE_ONLY" = 1 ] || { gen_pt poisson 1,5; for r in $SHIFTS; do gen_down poisson "$r"; done; }
    size_sets "$SIZE1"
    for r in $SHIFTS; do
      tag=$(shift_tag "$r")
      transfer $P $PPT "$(run_of "$SFX")" "${PFT%k5_10}$tag" "${PSC%k5_10}$tag" \
        "${BASE}_poisson_$tag$SFX" "K ${r/,/-}" "${SZ[@]}"            # no commas in labels
    done
    TITLE="Poisson (1,5) -> shifted ranges [$PRESET]" ;;
  sizes)
    PREFIX=${PREFIX:-${BASE}_sizes}
    [ "$ANALYSE_ONLY" = 1 ] || { gen_pt poisson 1,5; gen_down poisson 5,10; }
    if [ "$PRESET" = cpu ]; then SIZES=${SIZES:-"4:8 4:16 8:16 8:32"}
    else SIZES=${SIZES:-"4:16 8:32 16:64 32:128"}; fi
    for size in $SIZES; do
      size_sets "$size"
      transfer $P $PPT "$(run_of "$SFX")" $PFT $PSC "${BASE}_poisson_k5_10$SFX" "${SFX#_}" \
        "${SZ[@]}"
    done
    TITLE="Poisson (1,5) -> (5,10), model sizes [$PRESET]" ;;
  physics|mixed)
    [ "$STUDY" = mixed ] || for loss in ${LOSSES:-mse rel_l2}; do   # before hours of runs
      $PYTHON -c "import sys; from utils.loss_utils import LOSS_FUNCS
sys.exit(sys.argv[1] not in LOSS_FUNCS)" "$loss" 2>/dev/null || {
        echo "error: loss_func '$loss' is not one this code trains with (utils/loss_utils.py)" >&2
        exit 2; }
    done
    [ "$ANALYSE_ONLY" = 1 ] || {
      gen_pt ad 0.2,1; gen_down ad 1,2; gen_pt helmholtz 1,10; gen_down helmholtz 10,20; }
    size_sets "$SIZE1"
    if [ "$STUDY" = physics ]; then
      PREFIX=${PREFIX:-${BASE}_physics}
      for loss in ${LOSSES:-mse rel_l2}; do
        lset=(); lsfx=""
        [ "$loss" = mse ] || { lset=(--set "loss_func=$loss"); lsfx=_$loss; }
        run=$(run_of "$SFX" "${lsfx#_}")
        transfer $A $APT "$run" $AFT $ASC "${BASE}_ad_adr1_2$SFX$lsfx" "AD 1-2 $loss" \
          "${SZ[@]}" ${lset[@]+"${lset[@]}"}
        transfer $H $HPT "$run" $HFT $HSC "${BASE}_helm_o10_20$SFX$lsfx" \
          "Helmholtz 10-20 $loss" "${SZ[@]}" ${lset[@]+"${lset[@]}"}
      done
      TITLE="other physics: pre-trained -> shifted coefficients, two training losses [$PRESET]"
    else
      PREFIX=${PREFIX:-${BASE}_mixed}
      [ "$ANALYSE_ONLY" = 1 ] || { gen_pt poisson 1,5; gen_down poisson 5,10
        [ -f "$MIXED_SCALES" ] || $PYTHON utils/mixed_data.py "$D/poisson_train_k1_5.h5" \
          "$D/ad_train_adr0p2_1.h5" "$D/helmholtz_train_o1_10.h5" --out "$MIXED_SCALES"; }
      run=$(run_of "$SFX")
      # single-PDE pre-trained models and their transfers (shared with STUDY=sizes / physics)
      transfer $P $PPT "$run" $PFT $PSC "${BASE}_poisson_k5_10$SFX" "Poisson 5-10" "${SZ[@]}"
      transfer $A $APT "$run" $AFT $ASC "${BASE}_ad_adr1_2$SFX" "AD 1-2 mse" "${SZ[@]}"
      transfer $H $HPT "$run" $HFT $HSC "${BASE}_helm_o10_20$SFX" "Helmholtz 10-20 mse" \
        "${SZ[@]}"
      # the mixed model: 3x the samples for 1/3 of the epochs = the same optimizer steps
      pretrain $M $XPT "$run" "${SZ[@]}" --set "max_epochs=$MIXED_EPOCHS"
      for task in poisson-k5_10:"Poisson 5-10" ad-adr1_2:"AD 1-2 mse" helm-o10_20:"Helmholtz 10-20 mse"; do
        cfg=$XFT${task%%:*}; panel=${task#*:}
        zeroshot $M "$cfg" "$cfg$(sfx_of "$run")" "$panel|finetune-mixed" "${SZ[@]}"
        sweep $M "$cfg" "${BASE}_mixed_${task%%:*}$SFX" finetune-mixed "$panel" \
          --set "pretrained=$WEIGHTS" "${SZ[@]}"
      done
      TITLE="mixed-physics vs single-PDE pre-training, same size and steps [$PRESET]"
    fi ;;
esac

# figure, tables and the examples-needed statement
TARGET_ARGS=()
for t in $TARGETS; do TARGET_ARGS+=(--target "$t"); done
$PYTHON utils/scaling_plots.py "${CSVS[@]}" "${ZS_ARGS[@]}" "${TARGET_ARGS[@]}" \
  --out_dir "$OUT" --prefix "$PREFIX" --title "$TITLE"
