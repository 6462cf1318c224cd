"""bf16 training steps of the tiny FLUX model through the distributed path (run by torchrun).

``scripts/gpu_check_nccl.sh`` runs this under ``torchrun --nproc_per_node 1``: on a GPU,
accelerate then uses the NCCL backend and wraps the model in DDP, exactly as on 8 GPUs, with
bf16 base weights, bf16 autocast and fp32 LoRA. ``--cpu`` rehearses it on the CPU (gloo).
Writes ``check.json`` (what ran, the invariants, timings, peak memory) into ``--out`` and
exits 1 if an invariant fails.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "policies"))  # flux_tiny: offline tiny FLUX parts


def check_config(work: Path) -> dict:
    """The tiny FLUX run of the tests (model dir, jsonl data, custom reward), in bf16 with
    the paper's LoRA preset, one group of 4, two updates per step."""
    from flux_tiny import tiny_run_config

    config = tiny_run_config(work)
    config["model"]["options"]["dtype"] = "bf16"
    config["model"]["lora"].update(targets="paper", init="gaussian")
    config["sampling"]["group_size"] = 4
    config["train"].update(updates_per_step=2, mixed_precision="bf16")
    return config


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cpu", action="store_true", help="rehearse on the CPU (gloo)")
    args = parser.parse_args()
    if not args.cpu and not torch.cuda.is_available():
        print("no CUDA device: run with --cpu to rehearse", file=sys.stderr)
        return 2

    from cgrpo.config.train import config_from_dict
    from cgrpo.training.trainer import Trainer

    torch.manual_seed(0)
    work = args.out / "work"
    work.mkdir(parents=True, exist_ok=True)
    config = config_from_dict(check_config(work))
    start = time.perf_counter()
    trainer = Trainer(config, work / "run")
    backend = torch.distributed.get_backend() if torch.distributed.is_initialized() else None
    before = {n: p.detach().clone() for n, p in trainer.policy.named_trainable_parameters()}
    trainer.train()
    elapsed = time.perf_counter() - start
    rows = (work / "run" / "metrics.jsonl").read_text().splitlines()
    metrics = [json.loads(line) for line in rows]
    after = dict(trainer.policy.named_trainable_parameters())
    moved = max((after[n].detach() - p).abs().max().item() for n, p in before.items())
    clip = config.train.clip_range
    checks = {
        "backend": backend == ("gloo" if args.cpu else "nccl"),
        "ddp_wrapped": type(trainer.model).__name__ == "DistributedDataParallel",
        "bf16_base": trainer.policy.denoiser.x_embedder.weight.dtype == torch.bfloat16,
        "fp32_lora": {p.dtype for p in after.values()} == {torch.float32},
        "bf16_autocast": trainer.accelerator.mixed_precision == "bf16",
        "finite_loss": all(math.isfinite(m["loss"]) for m in metrics),
        "gradients": all(m["grad_norm"] > 0 and math.isfinite(m["grad_norm"]) for m in metrics),
        # the first update of a step must not be clipped away by bf16 rounding
        "first_ratio_within_clip": all(m["first_update_ratio_dev"] < clip for m in metrics),
        "lora_moved": moved > 0,
        "adapter_saved": (work / "run" / "final" / "adapter.safetensors").is_file(),
    }
    import accelerate
    import diffusers
    import peft

    report = {
        "ok": all(checks.values()),
        "checks": checks,
        "backend": backend,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "world_size": trainer.world_size,
        "first_update_ratio_dev": [m["first_update_ratio_dev"] for m in metrics],
        "clip_range": clip,
        "loss": [m["loss"] for m in metrics],
        "grad_norm": [m["grad_norm"] for m in metrics],
        "lora_max_change": moved,
        "seconds": round(elapsed, 2),
        "peak_memory_mib": (
            round(torch.cuda.max_memory_allocated() / 2**20, 1)
            if torch.cuda.is_available()
            else None
        ),
        "versions": {
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "nccl": ".".join(map(str, torch.cuda.nccl.version())) if not args.cpu else None,
            "diffusers": diffusers.__version__,
            "peft": peft.__version__,
            "accelerate": accelerate.__version__,
        },
    }
    trainer.close()
    text = json.dumps(report, indent=2)
    (args.out / "check.json").write_text(text + "\n")
    print(text)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
