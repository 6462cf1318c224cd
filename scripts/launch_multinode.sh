#!/usr/bin/env bash
# Train on several nodes: run this on every node with the same arguments (SLURM:
# scripts/slurm/train.sbatch does it with srun). Each node starts GPUS_PER_NODE processes;
# they meet in a c10d rendezvous at MASTER_ADDR:MASTER_PORT, DDP averages the LoRA gradients
# over all of them. OUTPUT must be one directory every node sees (a shared filesystem):
# process 0 writes the run into it, every process reads the checkpoint on resume.
# If OUTPUT already holds a run (its config.yaml), every node continues it with --resume.
#
#   MASTER_ADDR=node0 NNODES=2 NODE_RANK=0 scripts/launch_multinode.sh CONFIG.yaml OUTPUT [key=value ...]
#
# Environment (under srun, SLURM's values are the defaults):
#   MASTER_ADDR    host of the rendezvous, reachable from every node (required)
#   MASTER_PORT    its port (29500)
#   NNODES         number of nodes (SLURM_NNODES)
#   NODE_RANK      this node's index, 0..NNODES-1 (SLURM_NODEID)
#   GPUS_PER_NODE  processes per node (8)
#   CGRPO_RESUME   yes / no: override the check for OUTPUT/config.yaml (the sbatch script
#                  decides once for all nodes)
set -euo pipefail
usage="usage: scripts/launch_multinode.sh CONFIG.yaml OUTPUT_DIR [key=value ...]"
config=${1:?$usage}
output=${2:?$usage}
shift 2
repo=$(cd "$(dirname "$0")/.." && pwd)
nnodes=${NNODES:-${SLURM_NNODES:?set NNODES (the number of nodes)}}
node_rank=${NODE_RANK:-${SLURM_NODEID:?set NODE_RANK (this node, 0..NNODES-1)}}
master_addr=${MASTER_ADDR:?set MASTER_ADDR (the rendezvous host, reachable from every node)}
gpus=${GPUS_PER_NODE:-8}
# torch's CPU threads per process: the node's processes share its cores
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
# On SIGTERM (preemption) torchrun forwards the signal and kills the workers after this
# many seconds: leave them time to finish the step and write the checkpoint.
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-300}
launch=(
    accelerate launch --config_file "$repo/configs/accelerate/multinode.yaml"
    --num_machines "$nnodes" --machine_rank "$node_rank"
    --num_processes "$((nnodes * gpus))"
    --main_process_ip "$master_addr" --main_process_port "${MASTER_PORT:-29500}"
    -m cgrpo.cli train
)
resume=${CGRPO_RESUME:-}
if [[ -z $resume ]]; then
    resume=no
    [[ -f $output/config.yaml ]] && resume=yes
fi
case $resume in
    yes) exec "${launch[@]}" --resume "$output" "$@" ;;  # the run's saved config; overrides apply
    no) exec "${launch[@]}" --config "$config" --output "$output" "$@" ;;
    *) echo "CGRPO_RESUME must be yes or no, not '$resume'" >&2; exit 2 ;;
esac
