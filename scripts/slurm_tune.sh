#!/bin/bash
# Search fit settings with a SLURM job array whose tasks are workers of one Optuna study:
#   STORAGE=postgresql://user:password@db-host:5432/optuna sbatch --array=0-7 scripts/slurm_tune.sh --tune.trials 64
#   STORAGE=... sbatch --array=0-1 --gres=none --cpus-per-task=8 scripts/slurm_tune.sh --trainer.accelerator cpu
# Environment: STORAGE (required: the study's database, reachable from every node; a PostgreSQL URL,
# as SQLite files must not be shared over NFS), CONFIG (default configs/gemstones_finetune.yaml),
# SPACE (default configs/tune/gemstones_finetune.yaml), STUDY (default: the space file's name),
# OUT (default runs/tune: a folder every node sees, for the trials' folders and the outputs),
# PYTHON (default python: activate your environment before sbatch, or set it).
# Extra arguments are passed to `main.py tune`: --tune.* options and fit options for every trial.
#
# Each task is one worker on one GPU (`main.py tune ... --tune.workers 1`; its sampler is seeded
# with --tune.seed plus the task's index): it runs trials until the study has --tune.trials of them.
# Tasks may start at any time, and more may be added later with the same command: they all work on
# the same study. A task that is cancelled or reaches its time limit gets SIGTERM: its running trial
# stops at the next step (checkpoint saved), is marked failed and its settings are queued for
# another task. A task that dies without a word (node failure, SIGKILL) stops its trial's heartbeat:
# the next task to start a trial marks it failed and queues it again. Every task that ends writes
# the study's outputs (best.yaml, trials.csv, plots) in $OUT/$STUDY: the last one's are complete.
#
#SBATCH --job-name=gem-tune
#SBATCH --array=0-3
#SBATCH --ntasks=1
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --time=04:00:00
#SBATCH --output=slurm-%x-%A_%a.out
set -euo pipefail

PYTHON=${PYTHON:-python}
: "${STORAGE:?set STORAGE to the database URL of the study, e.g. postgresql://user:password@db-host:5432/optuna}"
CONFIG=${CONFIG:-configs/gemstones_finetune.yaml}
SPACE=${SPACE:-configs/tune/gemstones_finetune.yaml}
STUDY=${STUDY:-$(basename "$SPACE" .yaml)}
OUT=${OUT:-runs/tune}

export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}

srun --ntasks=1 "$PYTHON" main.py tune --config "$CONFIG" --tune.space "$SPACE" --tune.storage "$STORAGE" \
    --tune.study "$STUDY" --tune.out "$OUT" "$@" --tune.workers 1
