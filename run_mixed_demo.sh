#!/usr/bin/env bash
# Mixed-physics demo (CPU, ~10 min): does ONE FNO trained on Poisson + advection-diffusion +
# Helmholtz (7-channel layout, configs/operators_mixed.yaml) serve each PDE? Trains the three
# single-PDE demo models and the mixed model (same size and epochs), evaluates the mixed model
# on each PDE's test set, fine-tunes it 5 epochs on each PDE, and prints the test errors.
#   bash run_mixed_demo.sh          # ROOT=results/mixed_demo; resumable (finished runs skipped)
# -h, --help: this text (nothing else runs).
case "${1:-}" in -h|--help) sed -n '2,/^[^#]/s/^# \{0,1\}//p' "$0"; exit 0 ;; esac
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python}
ROOT=${ROOT:-results/mixed_demo}
D=data/demo

PRESET=demo PYTHON=$PYTHON bash run_gen_data.sh          # the three PDEs, 1024/128/128 each
[ -f $D/mixed_train_scales.npy ] || $PYTHON utils/mixed_data.py $D/poisson_train_k1_5.h5 \
  $D/ad_train_adr0p2_1.h5 $D/helmholtz_train_o1_10.h5 --out $D/mixed_train_scales.npy

# run CONFIG FILE: path of a file of run 0 of CONFIG (utils/run_layout.py)
run() { $PYTHON utils/run_layout.py "$ROOT" "$1" 0 "$2"; }

# train YAML CONFIG [--set ...]: train (skipped when finished) and evaluate the best weights
train() {
  local yaml=$1 cfg=$2; shift 2
  [ -f "$(run "$cfg" train_summary)" ] || $PYTHON train.py --yaml_config "$yaml" \
    --config "$cfg" --run_num 0 --root_dir "$ROOT" "$@"
  [ -f "$(run "$cfg" eval_summary)" ] || $PYTHON eval.py --yaml_config "$yaml" --config "$cfg" \
    --run_num 0 --root_dir "$ROOT" --weights "$(run "$cfg" best_ckpt)" "$@"
}
train configs/operators_poisson.yaml poisson-demo
train configs/operators_ad.yaml ad-demo
train configs/operators_helmholtz.yaml helm-demo
train configs/operators_mixed.yaml mixed-demo
MIXED=$(run mixed-demo best_ckpt)
for pde in poisson ad helm; do
  case $pde in
    poisson) test=$D/poisson_test_k1_5.h5 ;; ad) test=$D/ad_test_adr0p2_1.h5 ;;
    helm) test=$D/helmholtz_test_o1_10.h5 ;;
  esac
  out=$(run mixed-demo run_dir)/eval_$pde
  [ -f "$out/summary.json" ] || $PYTHON eval.py --yaml_config configs/operators_mixed.yaml \
    --config mixed-demo --run_num 0 --root_dir "$ROOT" --weights "$MIXED" --test_path "$test" \
    --out_dir "$out"
  train configs/operators_mixed.yaml mixed-demo-ft-$pde --set "pretrained=$MIXED"
done

$PYTHON - "$ROOT" <<'PY'
import json, os, sys
from utils.run_layout import EVAL_SUMMARY, RunLayout
root = sys.argv[1]
def err(config, eval_dir="eval"):
    path = os.path.join(RunLayout.of(root, config, 0).run_dir, eval_dir, EVAL_SUMMARY)
    return json.load(open(path))["test_rel_l2_mean"]
print("test rel. L2 (mean)   single-PDE model   mixed model   mixed + 5 epochs fine-tuning")
for pde, single in (("poisson", "poisson-demo"), ("ad", "ad-demo"), ("helm", "helm-demo")):
    print(f"{pde:>9s}             {err(single):.4f}           "
          f"{err('mixed-demo', 'eval_' + pde):.4f}        "
          f"{err('mixed-demo-ft-' + pde):.4f}")
PY
