#!/usr/bin/env bash
# Generate the train/val/test datasets and the train-split scales of the study.
#
#   ./run_gen_data.sh                 # PRESET=demo: data/demo, n=64, 1024/128/128 (< 1 min)
#   PRESET=paper ./run_gen_data.sh    # data/paper, n=128, 32768/4096/4096, all ranges
#
# Every setting is an environment variable: PRESET, DATA_DIR, N, NG, NTRAIN, NVAL, NTEST,
# WORKERS, SEED, CHUNK_SIZE, SPARSE (1 = sparse Gaussian sources, as published),
# PDES (default "poisson ad helmholtz"; any PDE of the registry utils/pdes.py, e.g.
# PDES=darcy), and the ranges of each PDE as space-separated "lo,hi" pairs: POISSON_RANGES,
# AD_RANGES, HELM_RANGES, DARCY_RANGES (`python -m utils.pdes ranges_env PDE` names the
# variable; the preset's defaults come from the registry); OVERWRITE=1 (regenerate existing
# files). Re-running is safe: complete datasets and existing scales are skipped.
# -h, --help: this text (nothing else runs).
case "${1:-}" in -h|--help) sed -n '2,/^[^#]/s/^# \{0,1\}//p' "$0"; exit 0 ;; esac
set -euo pipefail
cd "$(dirname "$0")"

PRESET=${PRESET:-demo}
case "$PRESET" in
  demo)
    DATA_DIR=${DATA_DIR:-data/demo}; N=${N:-64}
    NTRAIN=${NTRAIN:-1024}; NVAL=${NVAL:-128}; NTEST=${NTEST:-128} ;;
  paper)
    # ranges: the pre-training range first, then the downstream (transfer) ranges
    DATA_DIR=${DATA_DIR:-data/paper}; N=${N:-128}
    NTRAIN=${NTRAIN:-32768}; NVAL=${NVAL:-4096}; NTEST=${NTEST:-4096} ;;
  *) echo "error: PRESET must be demo or paper (got '$PRESET')" >&2; exit 2 ;;
esac
NG=${NG:-144}
WORKERS=${WORKERS:-2}
SEED=${SEED:-0}
CHUNK_SIZE=${CHUNK_SIZE:-128}
SPARSE=${SPARSE:-1}
OVERWRITE=${OVERWRITE:-0}
PYTHON=${PYTHON:-python}
PDES=${PDES:-$($PYTHON -m utils.pdes names)}

mkdir -p "$DATA_DIR"

# gen_one PDE LO HI: the three splits of one range, then the train scales.
gen_one() {
  local pde=$1 lo=$2 hi=$3 gen
  # the generator script and its range flags come from the registry (utils/pdes.py)
  gen=$($PYTHON -m utils.pdes gen_args "$pde" "$lo,$hi") || exit 2
  # File names come from the Python helpers (one definition of the naming scheme).
  local paths
  paths=$($PYTHON -c "import sys; sys.path.insert(0, '.')
from utils.h5io import dataset_path, scales_path
print(*[dataset_path('$DATA_DIR', '$pde', s, $lo, $hi) for s in ('train', 'val', 'test')],
      scales_path('$DATA_DIR', '$pde', $lo, $hi))")
  read -r train val test scales <<< "$paths"

  local extra=()
  [ "$SPARSE" = 1 ] && extra+=(--sparse)
  if [ "$OVERWRITE" = 1 ]; then
    extra+=(--overwrite)
  elif [ -e "$train" ] && [ -e "$val" ] && [ -e "$test" ]; then
    echo "exists, skipping: $train $val $test"
    extra=()
  elif [ -e "$train" ] || [ -e "$val" ] || [ -e "$test" ]; then
    echo "error: incomplete dataset for $pde ($lo, $hi) in $DATA_DIR; delete it or set OVERWRITE=1" >&2
    exit 2
  fi
  if [ "$OVERWRITE" = 1 ] || [ ! -e "$train" ]; then
    # shellcheck disable=SC2086
    $PYTHON $gen --ntrain "$NTRAIN" --nval "$NVAL" --ntest "$NTEST" --n "$N" --ng "$NG" \
      --datapath "$DATA_DIR" --seed "$SEED" --workers "$WORKERS" --chunk_size "$CHUNK_SIZE" \
      "${extra[@]}"
  fi
  if [ "$OVERWRITE" = 1 ] || [ ! -e "$scales" ]; then
    $PYTHON utils/get_scale.py "$train" --out "$scales" --overwrite
  fi
}

for pde in $PDES; do
  pde=$($PYTHON -m utils.pdes name "$pde") || exit 2
  var=$($PYTHON -m utils.pdes ranges_env "$pde")
  ranges=${!var:-$($PYTHON -m utils.pdes ranges "$pde" "$PRESET")}
  for r in $ranges; do
    gen_one "$pde" "${r%,*}" "${r#*,}"
  done
done
echo "datasets in $DATA_DIR"
