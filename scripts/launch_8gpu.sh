#!/usr/bin/env bash
# Train on one node with 8 GPUs: one process per GPU, each sampling its own
# sampling.groups_per_step groups (the presets' values are per process), DDP averaging the
# LoRA gradients. Rewards run in every process unless they are `remote` (README, "Many
# processes"). If OUTPUT already holds checkpoints, the run resumes from the latest one.
#
#   scripts/launch_8gpu.sh CONFIG.yaml OUTPUT_DIR [key=value ...]
#   scripts/launch_8gpu.sh configs/flux-uno.yaml runs/uno model.options.path=/models/FLUX.1-dev ...
set -euo pipefail
usage="usage: scripts/launch_8gpu.sh CONFIG.yaml OUTPUT_DIR [key=value ...]"
config=${1:?$usage}
output=${2:?$usage}
shift 2
repo=$(cd "$(dirname "$0")/.." && pwd)
# torch's CPU threads per process: 8 processes share the node's cores
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
launch=(accelerate launch --config_file "$repo/configs/accelerate/8gpu.yaml" -m cgrpo.cli train)
if compgen -G "$output/checkpoints/step-*" >/dev/null; then
    exec "${launch[@]}" --resume "$output" "$@"  # the run's saved config; overrides still apply
fi
exec "${launch[@]}" --config "$config" --output "$output" "$@"
