#!/usr/bin/env bash
# One-GPU check of the distributed bf16 training path: two GRPO steps of the tiny FLUX model
# (paper LoRA preset, bf16 base, bf16 autocast, fp32 LoRA) under
# `torchrun --standalone --nproc_per_node 1`, so accelerate takes the NCCL backend and wraps
# the model in DDP as on 8 GPUs. Writes $OUT/check.json (or runs/gpu-check/check.json) and
# exits non-zero if an invariant fails. About a minute once the machine is up.
#
# The device machine has torch, transformers, peft and accelerate but no diffusers and no
# network. Before the call, here in the repo root:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp -d .whl "diffusers==$(.venv/bin/python -c 'import diffusers; print(diffusers.__version__)')"
# then one device call carrying .whl:   bash scripts/gpu_check_nccl.sh
# Rehearse on the CPU (gloo):          PYTHON=.venv/bin/python bash scripts/gpu_check_nccl.sh --cpu
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
out=${OUT:-runs/gpu-check}
mkdir -p "$out"
exec "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 \
    scripts/gpu_check_nccl.py --out "$out" "$@"
