#!/usr/bin/env bash
# Pretraining under torchrun, one node or several (docs/launching.md).
#
#   scripts/launch_torchrun.sh RECIPE [key=value ...]
#
# One node, every GPU it has:
#   scripts/launch_torchrun.sh recipes/pretrain/avid_cma/kinetics400_r2plus1d18_8x32_8f112.yaml
# Two nodes of 8 GPUs: the same command on each node, NODE_RANK 0 and 1:
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0.example MASTER_PORT=29500 GPUS_PER_NODE=8 \
#     scripts/launch_torchrun.sh RECIPE
#
# Environment (defaults in brackets):
#   NNODES [1]            nodes taking part
#   NODE_RANK [0]         this node's rank, 0 .. NNODES-1
#   MASTER_ADDR [127.0.0.1]  address of node 0, reachable from every node
#   MASTER_PORT [29500]   a free TCP port on node 0
#   GPUS_PER_NODE [the GPUs nvidia-smi lists, else 1]  processes per node, one per GPU
#   RESUME [auto]         passed as the recipe key `resume`: auto (the newest checkpoint in
#                         the run folder, or a fresh start), a checkpoint path, or null
#   PYTHON [the repository's .venv/bin/python if present, else python]  runs torchrun
#   AVSSL [avssl beside PYTHON, else avssl on PATH]  the command each process runs
#
# Lightning detects torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE, ...) and takes
# ranks and the rendezvous from it; trainer.devices and trainer.num_nodes are set here to
# match GPUS_PER_NODE and NNODES (Lightning refuses a mismatch). Further key=value
# arguments go to `avssl pretrain` after these, so they can override them.
set -euo pipefail

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
}

if [[ $# -lt 1 || $1 == -h || $1 == --help ]]; then
    usage
    [[ $# -ge 1 ]] && exit 0 || exit 2
fi
RECIPE=$1
shift
if [[ ! -f $RECIPE ]]; then
    echo "launch_torchrun.sh: recipe $RECIPE not found" >&2
    exit 2
fi

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -z ${PYTHON:-} ]]; then
    if [[ -x $REPO/.venv/bin/python ]]; then PYTHON=$REPO/.venv/bin/python; else PYTHON=python; fi
fi
if [[ -z ${AVSSL:-} ]]; then
    PYTHON_DIR=$(dirname "$(command -v "$PYTHON")")
    if [[ -x $PYTHON_DIR/avssl ]]; then AVSSL=$PYTHON_DIR/avssl; else AVSSL=avssl; fi
fi
if [[ -z ${GPUS_PER_NODE:-} ]]; then
    GPUS_PER_NODE=$( (nvidia-smi -L 2>/dev/null || true) | grep -c '^GPU' || true)
    [[ $GPUS_PER_NODE -ge 1 ]] || GPUS_PER_NODE=1
fi
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
RESUME=${RESUME:-auto}

for name in NNODES NODE_RANK MASTER_PORT GPUS_PER_NODE; do
    if ! [[ ${!name} =~ ^[0-9]+$ ]]; then
        echo "launch_torchrun.sh: $name must be a whole number, got '${!name}'" >&2
        exit 2
    fi
done
if (( NODE_RANK >= NNODES )); then
    echo "launch_torchrun.sh: NODE_RANK ($NODE_RANK) must be below NNODES ($NNODES)" >&2
    exit 2
fi

echo "launch_torchrun.sh: node $NODE_RANK of $NNODES, $GPUS_PER_NODE processes, rendezvous $MASTER_ADDR:$MASTER_PORT, resume=$RESUME" >&2
set -x
exec "$PYTHON" -m torch.distributed.run \
    --nnodes "$NNODES" \
    --node_rank "$NODE_RANK" \
    --nproc_per_node "$GPUS_PER_NODE" \
    --master_addr "$MASTER_ADDR" \
    --master_port "$MASTER_PORT" \
    --no_python \
    "$AVSSL" pretrain "$RECIPE" \
    "trainer.devices=$GPUS_PER_NODE" \
    "trainer.num_nodes=$NNODES" \
    "resume=$RESUME" \
    "$@"
