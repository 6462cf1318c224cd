"""Settings of the FLUX step sweep (``flux_step.py``): presets and the command line."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch

PRESETS = {
    "full": dict(
        group=12,
        steps=25,
        size=512,
        ref_size=512,
        text_tokens=512,
        rank=512,  # the presets' LoRA (configs/flux-*.yaml)
        step_rank=512,
        chunks=[12, 4],
        micro_batches=[1, 2, 4],
        checkpointing=[1.0, 0.5, 0.0],
        timed_pairs=12,
        timed_steps=2,
        dtype="bf16",
        autocast="bf16",
        budget_s=480.0,
        config_budget_s=10.0,
        compile="inductor",
        compile_estimate_s=150.0,
        hps_text_tokens=600,
        per_sample_step=False,
    ),
    "tiny": dict(
        group=4,
        steps=6,
        size=64,
        ref_size=64,
        text_tokens=8,
        rank=4,
        step_rank=8,
        chunks=[4, 2],
        micro_batches=[1, 2, 4],
        checkpointing=[1.0, 0.5, 0.0],
        timed_pairs=4,
        timed_steps=2,
        dtype="fp32",
        autocast="no",
        budget_s=300.0,
        config_budget_s=5.0,
        compile="off",
        compile_estimate_s=60.0,
        hps_text_tokens=40,
        per_sample_step=True,
    ),
}


@dataclass
class Settings:
    tiny: bool
    group: int
    steps: int
    size: int
    ref_size: int
    text_tokens: int
    rank: int
    step_rank: int
    chunks: list[int]
    micro_batches: list[int]
    checkpointing: list[float]
    timed_pairs: int
    timed_steps: int
    dtype: str
    autocast: str
    budget_s: float
    config_budget_s: float
    compile: str
    compile_estimate_s: float
    hps_text_tokens: int
    per_sample_step: bool
    lora_targets: str = "paper"
    train_fraction: float = 0.6
    eta: float = 0.4
    attention: str = "native"
    peak_tflops: float = 989.0
    memory_limit_gib: float = 80.0
    rewards: bool = True
    device: str = "cpu"
    seed: int = 0

    @property
    def ref_tokens(self) -> int:
        return (self.ref_size // 16) ** 2

    def policy_options(self) -> dict:
        return {
            "height": self.size,
            "width": self.size,
            "reference_size": self.ref_size,
            "dtype": self.dtype,
            "attention": self.attention,
            "guidance": 3.5,
        }


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v]


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def parse_args(argv: list[str] | None = None) -> tuple[Settings, Path | None]:
    p = argparse.ArgumentParser(description="One GRPO step of FLUX: a sweep of the speed levers")
    p.add_argument("--tiny", action="store_true", help="tiny transformer and sizes (CPU, seconds)")
    p.add_argument("--out", type=Path, help="write flux_step.json and flux_step.md here")
    p.add_argument("--group", type=int, help="samples per group (full: 12)")
    p.add_argument("--steps", type=int, help="sampler steps N (full: 25)")
    p.add_argument("--rank", type=int, help="LoRA rank of the sweep (full: 512)")
    p.add_argument("--step-rank", type=int, help="LoRA rank of the measured step (full: 512)")
    p.add_argument(
        "--lora-targets",
        default="paper",
        choices=("paper", "diffusers"),
        help="LoRA preset of the FLUX backend (configs/flux-*.yaml: paper)",
    )
    p.add_argument("--chunks", type=_ints, help="images per sampler forward, e.g. 12,6,4")
    p.add_argument("--micro-batches", type=_ints, help="pairs per backward, e.g. 1,2,4")
    p.add_argument(
        "--checkpointing", type=_floats, help="shares of blocks recomputed, e.g. 1,0.5,0 (0 = off)"
    )
    p.add_argument("--dtype", choices=("bf16", "fp32"), help="base weights (full: bf16)")
    p.add_argument("--autocast", choices=("bf16", "no"), help="update autocast (full: bf16)")
    p.add_argument("--timed-pairs", type=int, help="pairs timed per training config")
    p.add_argument("--timed-steps", type=int, help="sampler steps timed per sampling config")
    p.add_argument("--budget-s", type=float, help="wall-clock budget of the whole sweep")
    p.add_argument("--config-budget-s", type=float, help="cap on the timed part of one config")
    p.add_argument(
        "--compile", choices=("off", "inductor", "aot_eager"), help="regional compile phase"
    )
    p.add_argument("--per-sample-step", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--no-rewards", action="store_true", help="skip the reward-cost phase")
    p.add_argument("--memory-limit-gib", type=float, default=80.0)
    p.add_argument("--attention", default="native", help="diffusers attention backend")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak for MFU")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    preset = dict(PRESETS["tiny" if a.tiny else "full"])
    for key in preset:
        value = getattr(a, key, None)
        if value is not None:
            preset[key] = value
    if preset["size"] % 16 or preset["ref_size"] % 16:
        p.error("sizes must be multiples of 16")
    if min(preset["checkpointing"]) < 0 or max(preset["checkpointing"]) > 1:
        p.error("--checkpointing shares must lie in [0, 1]")
    if any(preset["timed_pairs"] % mb for mb in preset["micro_batches"]):
        p.error("--timed-pairs must be a multiple of every micro-batch")
    settings = Settings(
        tiny=a.tiny,
        attention=a.attention,
        peak_tflops=a.peak_tflops,
        memory_limit_gib=a.memory_limit_gib,
        rewards=not a.no_rewards,
        lora_targets=a.lora_targets,
        device=a.device or ("cuda" if torch.cuda.is_available() else "cpu"),
        seed=a.seed,
        **preset,
    )
    return settings, a.out
