#!/usr/bin/env bash
# Train a config, then evaluate its best checkpoint on the test split.
#
#   bash run.sh                                   # CPU demo: data -> train -> eval (poisson-demo)
#   CONFIG=ad-demo CONFIG_FILE=configs/operators_ad.yaml bash run.sh
#   CONFIG=poisson-scale-k1_5 RUN_NUM=r1 ROOT_DIR=/scratch/results bash run.sh --set max_epochs=100
#
# Launch: inside a slurm allocation (SLURM_JOB_ID set) -> srun, one task per GPU, DDP variables
# from export_DDP_vars.sh (as published); otherwise torchrun --standalone on all local GPUs,
# or one CPU process when there is no GPU. Extra arguments go to train.py (e.g. --set k=v).
# Variables: CONFIG_FILE, CONFIG, RUN_NUM, ROOT_DIR, NGPU_PER_NODE (slurm, default 4),
# NNODES (slurm, default SLURM_NNODES or 1), CPUS_PER_TASK (slurm, default 10), PYTHON.
# -h, --help: this text (nothing else runs).
case "${1:-}" in -h|--help) sed -n '2,/^[^#]/s/^# \{0,1\}//p' "$0"; exit 0 ;; esac
set -euo pipefail
cd "$(dirname "$0")"

CONFIG_FILE=${CONFIG_FILE:-configs/operators_poisson.yaml}
CONFIG=${CONFIG:-poisson-demo}
RUN_NUM=${RUN_NUM:-0}
ROOT_DIR=${ROOT_DIR:-results}
PYTHON=${PYTHON:-python}

# demo configs ({pde}-demo, a PDE name or alias of utils/pdes.py): make their data if missing
# (run_gen_data.sh skips existing files)
DEMO_PDE=
case "$CONFIG" in
  *-demo) DEMO_PDE=$($PYTHON -m utils.pdes name "${CONFIG%-demo}" 2>/dev/null) || DEMO_PDE= ;;
esac
if [ -n "$DEMO_PDE" ]; then
  PDES=$DEMO_PDE bash run_gen_data.sh
fi

args=(--yaml_config "$CONFIG_FILE" --config "$CONFIG" --run_num "$RUN_NUM" --root_dir "$ROOT_DIR")

if [ -n "${SLURM_JOB_ID:-}" ]; then
  NGPU_PER_NODE=${NGPU_PER_NODE:-4}
  NNODES=${NNODES:-${SLURM_NNODES:-1}}
  MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
  export MASTER_ADDR
  export MASTER_PORT=${MASTER_PORT:-29500}
  cmd="$PYTHON train.py $(printf '%q ' "${args[@]}" "$@")"
  srun -l -N "$NNODES" --ntasks-per-node "$NGPU_PER_NODE" --cpus-per-task "${CPUS_PER_TASK:-10}" \
       --gpus-per-node "$NGPU_PER_NODE" bash -c "source export_DDP_vars.sh && $cmd"
else
  NGPU=$($PYTHON -c "import torch; print(torch.cuda.device_count())")
  if [ "$NGPU" -gt 0 ]; then
    $PYTHON -m torch.distributed.run --standalone --nproc_per_node="$NGPU" train.py "${args[@]}" "$@"
  else
    $PYTHON train.py "${args[@]}" "$@"
  fi
fi

# evaluate the best checkpoint (one process) on the config's test split
$PYTHON eval.py "${args[@]}" \
  --weights "$($PYTHON utils/run_layout.py "$ROOT_DIR" "$CONFIG" "$RUN_NUM" best_ckpt)" "$@"
