# Source inside each srun task (as published):
#   srun ... bash -c "source export_DDP_vars.sh && python train.py ..."
# Maps slurm's task variables to the ones torch.distributed reads (env:// init).
export RANK=${SLURM_PROCID:?export_DDP_vars.sh must run inside an srun task}
export WORLD_RANK=$SLURM_PROCID
export LOCAL_RANK=${SLURM_LOCALID:-0}
export WORLD_SIZE=${SLURM_NTASKS:-1}
# the first node of the job hosts the rendezvous (run.sh exports it before srun)
if [ -z "${MASTER_ADDR:-}" ]; then
  MASTER_ADDR=$(scontrol show hostnames "${SLURM_JOB_NODELIST:-$(hostname)}" 2>/dev/null | head -n 1)
  export MASTER_ADDR=${MASTER_ADDR:-$(hostname)}
fi
export MASTER_PORT=${MASTER_PORT:-29500}
