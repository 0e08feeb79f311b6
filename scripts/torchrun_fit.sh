#!/usr/bin/env bash
# Train with torchrun, one process per GPU, on one machine or several (run it on every machine):
#   scripts/torchrun_fit.sh                                        # this machine, all its GPUs
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 RUN_ID=exp1 scripts/torchrun_fit.sh   # on node0
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=node0 RUN_ID=exp1 scripts/torchrun_fit.sh   # on node1
# Environment: NNODES (1), NPROC_PER_NODE (default: the number of GPUs, at least 1), MASTER_ADDR,
# MASTER_PORT (29500) and NODE_RANK for several machines, RUN_ID (names the run folder
# runs/torchrun/<RUN_ID>; the same on every machine), MAX_RESTARTS (0: torchrun restarts all
# processes this many times after a failure), CONFIG (configs/gemstones.yaml), DDP_CONFIG
# (configs/ddp_gpu.yaml; configs/ddp_cpu.yaml for CPUs), PYTHON (python).
# Extra arguments are passed to `main.py fit`.
#
# Checkpoints go to runs/torchrun/<RUN_ID>/checkpoints and every start resumes from last.ckpt there
# if it exists: a restart by torchrun, or running this script again with the same RUN_ID.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python}
CONFIG=${CONFIG:-configs/gemstones.yaml}
DDP_CONFIG=${DDP_CONFIG:-configs/ddp_gpu.yaml}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_PORT=${MASTER_PORT:-29500}
MAX_RESTARTS=${MAX_RESTARTS:-0}
if [[ -z "${NPROC_PER_NODE:-}" ]]; then
    NPROC_PER_NODE=$("$PYTHON" -c 'import torch; print(max(1, torch.cuda.device_count()))')
fi
if [[ "$NNODES" == 1 ]]; then
    RUN_ID=${RUN_ID:-$(date +%Y%m%d-%H%M%S)}
    RENDEZVOUS=(--standalone)
else
    : "${MASTER_ADDR:?set MASTER_ADDR to the address of the machine with NODE_RANK=0}"
    : "${RUN_ID:?set RUN_ID to the same name on every machine}"
    # Node 0 hosts the rendezvous store, said explicitly: torch otherwise guesses from host names,
    # and when "nodes" share a host whichever agent binds the port first becomes the host.
    IS_HOST=$([[ "$NODE_RANK" == 0 ]] && echo true || echo false)
    RENDEZVOUS=(--node-rank "$NODE_RANK" --rdzv-backend c10d --rdzv-endpoint "$MASTER_ADDR:$MASTER_PORT" --rdzv-id "$RUN_ID"
                --rdzv-conf "is_host=$IS_HOST")
    # With the rendezvous store shared with the workers (torch's default), a node that rejoins
    # after a restart waits for a MASTER_ADDR nobody writes (pytorch/pytorch#135712): don't share it.
    export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=${TORCH_DISABLE_SHARE_RDZV_TCP_STORE:-1}
fi
RUN_DIR=${RUN_DIR:-runs/torchrun/$RUN_ID}

exec "$PYTHON" -m torch.distributed.run \
    --nnodes "$NNODES" --nproc-per-node "$NPROC_PER_NODE" --max-restarts "$MAX_RESTARTS" "${RENDEZVOUS[@]}" \
    "$REPO/main.py" fit \
    --config "$CONFIG" --config "$DDP_CONFIG" \
    --trainer.num_nodes "$NNODES" --trainer.devices "$NPROC_PER_NODE" --trainer.strategy ddp \
    --trainer.default_root_dir "$RUN_DIR" --checkpoint.dirpath "$RUN_DIR/checkpoints" --ckpt_path last \
    "$@"
