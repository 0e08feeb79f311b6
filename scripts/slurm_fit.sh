#!/bin/bash
# Train on a SLURM cluster, one process per GPU, and survive preemption and time limits:
#   sbatch scripts/slurm_fit.sh                      # 2 nodes x 4 GPUs by default
#   sbatch --nodes=1 --ntasks-per-node=2 --gres=gpu:2 scripts/slurm_fit.sh --trainer.max_epochs 50
# Environment: CONFIG (main config, default configs/gemstones.yaml), DDP_CONFIG (default
# configs/ddp_gpu.yaml), PYTHON (default python: activate your environment before sbatch, or set it).
# Extra arguments are passed to `main.py fit`.
#
# Restarts: 90 s before the time limit SLURM sends SIGUSR1 (auto_requeue, on by default): the
# tasks agree at the end of the current training batch (or of the epoch, during validation), save
# checkpoints/last.ckpt at that step, and task 0 runs `scontrol requeue`. A SIGUSR1 outside
# training is harmless (acted on after the first batch, or ignored once training is over). A
# SIGTERM (preemption, scancel) also saves last.ckpt and stops. DataLoader workers, which SLURM
# signals too, ignore these signals. The requeued job has the same SLURM_JOB_ID, hence the same
# run folder, and resumes from the newest checkpoint there; to resume after a cancel or a node
# failure, sbatch again with the same RUN_DIR. Logs go to the logger's folders (a new version per restart).
#
#SBATCH --job-name=gem-fit
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=4
#SBATCH --gres=gpu:4
#SBATCH --cpus-per-task=8
#SBATCH --time=04:00:00
#SBATCH --signal=SIGUSR1@90
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out
set -euo pipefail

PYTHON=${PYTHON:-python}
CONFIG=${CONFIG:-configs/gemstones.yaml}
DDP_CONFIG=${DDP_CONFIG:-configs/ddp_gpu.yaml}
RUN_DIR=${RUN_DIR:-runs/slurm/${SLURM_JOB_NAME:-gem-fit}-${SLURM_JOB_ID:?run this script with sbatch}}
NNODES=${SLURM_NNODES:-${SLURM_JOB_NUM_NODES:-1}}
# SLURM_NTASKS_PER_NODE may read "4(x2)" on heterogeneous allocations; the count comes first.
TASKS_PER_NODE=${SLURM_NTASKS_PER_NODE:-1}
TASKS_PER_NODE=${TASKS_PER_NODE%%(*}

mkdir -p "$RUN_DIR/checkpoints"
# Resume from the newest checkpoint of this run: last*.ckpt, or hpc_ckpt_*.ckpt (Lightning's own requeue handler).
RESUME=()
NEWEST=$(ls -1t "$RUN_DIR"/checkpoints/last*.ckpt "$RUN_DIR"/hpc_ckpt_*.ckpt 2>/dev/null | head -n 1 || true)
if [[ -n "$NEWEST" ]]; then
    echo "Resuming from $NEWEST"
    RESUME=(--ckpt_path "$NEWEST")
fi

export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}

srun --kill-on-bad-exit=1 "$PYTHON" main.py fit \
    --config "$CONFIG" --config "$DDP_CONFIG" \
    --trainer.num_nodes "$NNODES" --trainer.devices "$TASKS_PER_NODE" --trainer.strategy ddp \
    --trainer.default_root_dir "$RUN_DIR" --checkpoint.dirpath "$RUN_DIR/checkpoints" \
    "${RESUME[@]}" "$@"
