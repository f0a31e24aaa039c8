#!/usr/bin/env bash
# Mixed-physics demo (CPU, ~10 min): does ONE FNO trained on Poisson + advection-diffusion +
# Helmholtz (7-channel layout, configs/operators_mixed.yaml) serve each PDE? Trains the three
# single-PDE demo models and the mixed model (same size and epochs), evaluates the mixed model
# on each PDE's test set, fine-tunes it 5 epochs on each PDE, and prints the test errors.
#   bash run_mixed_demo.sh          # ROOT=results/mixed_demo; resumable (finished runs skipped)
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python}
ROOT=${ROOT:-results/mixed_demo}
D=data/demo

PRESET=demo PYTHON=$PYTHON bash run_gen_data.sh          # the three PDEs, 1024/128/128 each
[ -f $D/mixed_train_scales.npy ] || $PYTHON utils/mixed_data.py $D/poisson_train_k1_5.h5 \
  $D/ad_train_adr0p2_1.h5 $D/helmholtz_train_o1_10.h5 --out $D/mixed_train_scales.npy

# train YAML CONFIG [--set ...]: train (skipped when finished) and evaluate the best weights
train() {
  local yaml=$1 cfg=$2; shift 2
  local run=$ROOT/expts/$cfg/0
  [ -f "$run/train_summary.json" ] || $PYTHON train.py --yaml_config "$yaml" --config "$cfg" \
    --run_num 0 --root_dir "$ROOT" "$@"
  [ -f "$run/eval/summary.json" ] || $PYTHON eval.py --yaml_config "$yaml" --config "$cfg" \
    --run_num 0 --root_dir "$ROOT" --weights "$run/checkpoints/ckpt_best.tar" "$@"
}
train configs/operators_poisson.yaml poisson-demo
train configs/operators_ad.yaml ad-demo
train configs/operators_helmholtz.yaml helm-demo
train configs/operators_mixed.yaml mixed-demo
MIXED=$ROOT/expts/mixed-demo/0/checkpoints/ckpt_best.tar
for pde in poisson ad helm; do
  case $pde in
    poisson) test=$D/poisson_test_k1_5.h5 ;; ad) test=$D/ad_test_adr0p2_1.h5 ;;
    helm) test=$D/helmholtz_test_o1_10.h5 ;;
  esac
  out=$ROOT/expts/mixed-demo/0/eval_$pde
  [ -f "$out/summary.json" ] || $PYTHON eval.py --yaml_config configs/operators_mixed.yaml \
    --config mixed-demo --run_num 0 --root_dir "$ROOT" --weights "$MIXED" --test_path "$test" \
    --out_dir "$out"
  train configs/operators_mixed.yaml mixed-demo-ft-$pde --set "pretrained=$MIXED"
done

$PYTHON - "$ROOT" <<'PY'
import json, os, sys
root = sys.argv[1]
err = lambda *p: json.load(open(os.path.join(root, "expts", *p, "summary.json")))["test_rel_l2_mean"]
print("test rel. L2 (mean)   single-PDE model   mixed model   mixed + 5 epochs fine-tuning")
for pde, single in (("poisson", "poisson-demo"), ("ad", "ad-demo"), ("helm", "helm-demo")):
    print(f"{pde:>9s}             {err(single, '0', 'eval'):.4f}           "
          f"{err('mixed-demo', '0', 'eval_' + pde):.4f}        "
          f"{err('mixed-demo-ft-' + pde, '0', 'eval'):.4f}")
PY
