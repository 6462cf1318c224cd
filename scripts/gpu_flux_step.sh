#!/usr/bin/env bash
# The FLUX step sweep (benchmarks/flux_step.py, full size) on the device machine, in one call.
#
# The device machine (GUIDE §3): one H100/H200, python3 3.12 with torch, transformers, peft,
# accelerate, but no diffusers and no package registry. So, on the CPU machine, once:
#
#     pip download --no-deps -d .whl diffusers==0.42.1     # the version in our venv
#
# (.whl/ is git-ignored), then one call of the device tool from the repository root:
#
#     run(command="bash scripts/gpu_flux_step.sh", carry=[".whl"], timeout_s=590)
#
# Results land in $OUT (flux_step.json, flux_step.md, log.txt), written after every phase, so
# a run cut short still reports what it measured. The sweep budgets itself to BUDGET_S seconds
# (default 480, 8 minutes); a hard timeout stops it 60 s later. A session has 15 minutes of
# device time, start-up included, so the call above leaves no room for a second one; to keep
# room for a rerun, shorten the first call (later phases are skipped, and say so):
#
#     run(command="BUDGET_S=300 bash scripts/gpu_flux_step.sh", carry=[".whl"], timeout_s=420)
#
# cuDNN SDPA stays off for training: the
# FLUX backend disables it on CUDA (model.options.cudnn_sdpa: false); the JSON records it.
# Extra arguments go to flux_step.py, e.g. `bash scripts/gpu_flux_step.sh --compile off`.
# Rehearsal on the CPU machine (the same steps at tiny sizes):
#
#     PYTHON=.venv/bin/python OUT=/tmp/rehearsal bash scripts/gpu_flux_step.sh --tiny --device cpu
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-runs/gpu-flux-step}
PYTHON=${PYTHON:-python3}
BUDGET_S=${BUDGET_S:-480}
mkdir -p "$OUT"

preflight() {
    # versions for the record, and every import the sweep needs, before spending the budget
    "$PYTHON" -c '
import importlib, os, sys
for name in ("torch", "diffusers", "transformers", "peft", "accelerate", "huggingface_hub"):
    module = importlib.import_module(name)
    print(name, getattr(module, "__version__", "?"), getattr(module, "__file__", ""))
import torch
if "--tiny" not in sys.argv[1:]:
    assert torch.cuda.is_available(), "no CUDA device visible"
from diffusers import AutoencoderKL, FluxTransformer2DModel
import cgrpo.policies.flux
from cgrpo.sampling import merged_lora
sys.path.insert(0, "benchmarks")
import flux_step, reward_cost
' "$@"
}

main() {
    echo "== device"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    "$PYTHON" --version

    echo "== diffusers from .whl/ into .deps/ (nothing installed system-wide)"
    rm -rf .deps && mkdir -p .deps
    for wheel in .whl/*.whl; do
        # pip when it works, else unpack the wheel (a zip; pure-Python wheels only)
        "$PYTHON" -m pip install --quiet --no-deps --no-index --target .deps "$wheel" \
            || "$PYTHON" -m zipfile -e "$wheel" .deps
    done
    export PYTHONPATH="$PWD/src:$PWD/.deps${PYTHONPATH:+:$PYTHONPATH}"
    export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True  # fewer false OOMs across configs

    echo "== preflight"
    if ! preflight "$@"; then
        echo "preflight failed: see the error above"
        return 3
    fi

    echo "== sweep"
    timeout --signal=TERM --kill-after=20 $((BUDGET_S + 60)) \
        "$PYTHON" benchmarks/flux_step.py --out "$OUT" --budget-s "$BUDGET_S" "$@"
    local status=$?
    echo "== exit status $status (124: the hard timeout cut the sweep short)"
    ls -la "$OUT"
    return "$status"
}

main "$@" 2>&1 | tee "$OUT/log.txt"
exit "${PIPESTATUS[0]}"
