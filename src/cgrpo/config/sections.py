"""The sections of the training configuration (``model``, ``data``, ``rewards``, ``sampling``,
``advantage``, ``train``, ``logging``, ``eval``): one documented dataclass each, checked
field by field. The root :class:`cgrpo.config.train.Config` holds them and checks what
spans sections.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cgrpo.config.schema import option

# Kept equal to cgrpo.grpo's registries (tests/grpo/test_grpo_stage.py checks it); listed
# here so that loading a config does not import the GRPO math. Lists, so that
# cgrpo.grpo.register_strategy / register_weight_schedule can add a user's names.
ADVANTAGE_STRATEGIES = [
    "sars",
    "linear",
    "harmonic",
    "min",
    "max",
    "product",
    "product-2w",
    "sum-normalize",
    "gdpo",
    "gate",
    "mgda",
]
WEIGHT_SCHEDULES = ["tdw", "fixed", "linear", "reversed-tdw"]
NORMALIZATIONS = ("group", "batch", "none")
REWARD_ROLES = ("prompt", "identity", "monitor")
LORA_INITS = ("default", "gaussian")


@dataclass
class LoraConfig:
    rank: int = option(16, "LoRA rank", min=1)
    alpha: float = option(16.0, "LoRA alpha (scale = alpha / rank)", min=0, min_exclusive=True)
    dropout: float = option(
        0.0,
        "LoRA dropout probability; must be 0 for training (dropout breaks ratio == 1)",
        min=0.0,
        max=0.99,
    )
    targets: str | list[str] | None = option(
        None,
        "which modules get LoRA: a backend preset (flux: paper, diffusers; flux2 and "
        "qwen-image-edit: paper, attention, all), a list of module names, or null = the "
        "backend's default (flux: diffusers; flux2, qwen-image-edit: attention)",
    )
    init: str = option(
        "default",
        "LoRA A init: default (peft's Kaiming-uniform) or gaussian (normal with std 1/rank, "
        "the official UNO / Customized-GRPO init); B starts at 0 either way",
        choices=LORA_INITS,
    )


@dataclass
class ModelConfig:
    backend: str = option(
        "pocket", "generator backend: pocket (built-in), flux, flux2 or qwen-image-edit"
    )
    options: dict[str, Any] = option(default_factory=dict, help="backend options (see README)")
    lora: LoraConfig = option(default_factory=LoraConfig, help="trainable LoRA adapter")


@dataclass
class DataConfig:
    name: str = option("toyworld", "dataset: toyworld, syncd, jsonl or hf (see README)")
    options: dict[str, Any] = option(default_factory=dict, help="dataset options (see README)")
    max_bad_fraction: float = option(
        0.01,
        "share of the training items that may be unreadable or invalid: each is skipped, "
        "logged once and counted (data/bad_items in metrics.jsonl); past it the run stops",
        min=0.0,
        max=1.0,
    )


@dataclass
class RewardSpec:
    name: str = option(help="registered reward name (toy-id, toy-prompt, dino-seg, hpsv3, ...)")
    role: str = option(
        "monitor", "prompt, identity (trained on) or monitor (logged only)", choices=REWARD_ROLES
    )
    weight: float = option(
        1.0,
        "share of its role's weight among rewards of the same role",
        min=0.0,
        min_exclusive=True,
    )
    column: str | None = option(None, "score column to use when the reward returns several")
    options: dict[str, Any] = option(default_factory=dict, help="reward options (see README)")


@dataclass
class SamplingConfig:
    num_steps: int = option(10, "denoising steps N of the sampler", min=2)
    shift: float = option(3.0, "static schedule shift k (paper: 3)", min=0.0, min_exclusive=True)
    dynamic_shift: bool = option(False, "use FLUX's resolution-dependent shift instead of `shift`")
    noise_level: float = option(
        0.4, "SDE noise level (eta for dance, a for flow; paper: 0.4)", min=0.0
    )
    sde_kind: str = option("dance", "SDE noise form", choices=("dance", "flow"))
    group_size: int = option(8, "G: samples per (prompt, reference) group", min=2)
    groups_per_step: int = option(4, "groups sampled per training step (per process)", min=1)
    chunk_size: int = option(0, "max images per sampler forward (0 = all at once)", min=0)
    same_noise: bool = option(True, "all samples of a group start from the same noise")
    merge_lora: bool = option(
        False,
        "sample with the LoRA folded into the base weights (faster forward; one extra copy of "
        "the adapted weights while sampling; the update always runs the adapter unmerged)",
    )


@dataclass
class AdvantageConfig:
    strategy: str = option(
        "sars",
        "how rewards become one advantage (README 'Advantage strategies'): linear "
        "(sum_k w_k A_k), sars (+ synergy), sum-normalize (z_g(sum_k w_k r_k)), gdpo (linear, "
        "batch-normalised), gate (prompt reward minus a quadratic penalty below gate_threshold "
        "of identity), mgda (one gradient per reward, min-norm weights), harmonic, min, max, "
        "product, product-2w (prod_k softplus(A_k)^(2 w_k), the official code's ablation)",
        choices=ADVANTAGE_STRATEGIES,
    )
    normalize: str = option(
        "group",
        "the group-relative step: reward minus its group mean, divided by the group std "
        "(group, GRPO), by the std over the whole batch of all processes (batch, Flow-GRPO's "
        "global std) or by nothing (none, Dr. GRPO); per reward, or after combining for "
        "sum-normalize and gate",
        choices=NORMALIZATIONS,
    )
    batch_normalize: bool = option(
        False,
        "z-score the combined advantage over the whole batch (all processes, all trained "
        "steps; per reward for mgda); gdpo always does",
    )
    gamma: float = option(0.4, "interaction strength for sars / harmonic", min=0.0)
    gate_threshold: float = option(
        0.5,
        "gate: identity score below which the penalty starts, in the identity reward's units "
        "(0.5 suits toy-id's cosine; set it for your reward)",
    )
    gate_penalty: float = option(
        10.0, "gate: lambda in w_p r_p - lambda * w_id * max(0, threshold - r_id)^2", min=0.0
    )
    mgda_ema: float = option(
        0.9,
        "mgda: EMA decay of the reward weights alpha across updates (0 = none)",
        min=0.0,
        max=0.999,
    )
    schedule: str = option(
        "tdw",
        "reward-weight schedule over denoising steps: tdw, reversed-tdw (TDW's weights in "
        "reverse step order), fixed, linear",
        choices=WEIGHT_SCHEDULES,
    )
    fixed_prompt_weight: float = option(0.5, "w_prompt for schedule=fixed", min=0.0, max=1.0)
    linear_start: float = option(0.7, "w_prompt at step 0 for schedule=linear", min=0.0, max=1.0)
    linear_end: float = option(
        0.5, "w_prompt at the last step for schedule=linear", min=0.0, max=1.0
    )
    noise_floor: dict[str, float] = option(
        default_factory=dict,
        help="trained reward column -> minimum within-group std; a group whose std in that "
        "column is below it gets no advantage from that reward (its spread is the reward's "
        "noise); a column left out has no floor",
    )
    noise_floor_from: str | None = option(
        None,
        "a preflight.json (cgrpo preflight): floors = noise_floor_scale x each trained "
        "reward's measured noise std (the largest under the imperceptible changes and a 1-px "
        "shift); noise_floor entries override it",
    )
    noise_floor_scale: float = option(
        2.0,
        "multiplies the noise stds read from noise_floor_from (2 = preflight's 'groups with "
        "signal')",
        min=0.0,
    )


@dataclass
class OptimConfig:
    steps: int = option(20, "training steps (one rollout + update each)", min=1)
    lr: float = option(1e-4, "AdamW learning rate", min=0.0, min_exclusive=True)
    weight_decay: float = option(1e-4, "AdamW weight decay", min=0.0)
    betas: tuple[float, float] = option((0.9, 0.999), "AdamW betas")
    warmup_steps: int = option(0, "linear LR warm-up steps", min=0)
    grad_clip: float = option(1.0, "max gradient norm (0 = off)", min=0.0)
    updates_per_step: int = option(1, "optimizer steps per rollout (mini-batches)", min=1)
    micro_batch: int = option(
        16,
        "(sample, timestep) pairs per forward/backward; gradients accumulate over micro-batches",
        min=1,
    )
    timestep_selection: str = option(
        "random", "which steps are trained", choices=("random", "window")
    )
    timestep_fraction: float = option(
        0.6, "share of the first N-1 steps trained (random)", min=0.0, max=1.0, min_exclusive=True
    )
    window_size: int = option(4, "steps in the MixGRPO window (window)", min=1)
    window_stride: int = option(1, "steps the window moves per shift (window)", min=0)
    window_shift_interval: int = option(5, "training steps between window moves", min=1)
    clip_range: float = option(1e-4, "PPO ratio clip epsilon", min=0.0, min_exclusive=True)
    adv_clip: float = option(5.0, "advantage clip", min=0.0, min_exclusive=True)
    kl_coef: float = option(0.0, "weight of the KL to the frozen base (0 = off)", min=0.0)
    mixed_precision: str = option(
        "no", "accelerate mixed precision", choices=("no", "bf16", "fp16")
    )
    offload_rewards: bool = option(
        False,
        "keep reward models on the CPU and move each to the accelerator only to score "
        "(frees their memory while sampling and updating; two transfers per step)",
    )
    collective_timeout: float = option(
        600.0,
        "seconds a process waits for the others in a collective operation before the run "
        "stops (several processes: a machine that died or hangs); longer than a checkpoint write",
        min=0.0,
        min_exclusive=True,
    )


WANDB_MODES = ("online", "offline", "disabled")


@dataclass
class WandbConfig:
    project: str | None = option(
        None, "Weights & Biases project; null = no W&B (needs the extra: pip install cgrpo[wandb])"
    )
    entity: str | None = option(None, "W&B entity (user or team); null = your default")
    mode: str = option(
        "online",
        "online, offline (files under <run>/wandb, sync later) or disabled",
        choices=WANDB_MODES,
    )
    tags: list[str] = option(default_factory=list, help="W&B run tags")


@dataclass
class LoggingConfig:
    log_every: int = option(1, "write metrics every N steps", min=1)
    sample_every: int = option(5, "save a sample grid every N steps (0 = never)", min=0)
    checkpoint_every: int = option(10, "checkpoint every N steps (0 = only at the end)", min=0)
    keep_checkpoints: int = option(2, "checkpoints kept on disk (older ones are removed)", min=1)
    tensorboard: bool = option(True, "write TensorBoard event files")
    progress: bool = option(True, "show a progress bar")
    wandb: WandbConfig = option(
        default_factory=WandbConfig,
        help="also log to Weights & Biases (off until a project is set)",
    )


@dataclass
class EvalConfig:
    before_after: bool = option(True, "score held-out prompts before and after training")
    data: DataConfig = option(
        default_factory=lambda: DataConfig("toyworld", {}),
        help="held-out data (loaded with split 'heldout')",
    )
    num_items: int = option(48, "held-out items scored (a seeded random subset)", min=1)
    num_steps: int = option(10, "deterministic sampler steps for evaluation", min=2)
    # image seeds are eval.seed + offsets, fed to torch's 64-bit manual_seed
    seed: int = option(1234, "seed of the evaluation noise", min=0, max=2**62)


__all__ = [
    "ADVANTAGE_STRATEGIES",
    "LORA_INITS",
    "NORMALIZATIONS",
    "REWARD_ROLES",
    "WANDB_MODES",
    "WEIGHT_SCHEDULES",
    "AdvantageConfig",
    "DataConfig",
    "EvalConfig",
    "LoggingConfig",
    "LoraConfig",
    "ModelConfig",
    "OptimConfig",
    "RewardSpec",
    "SamplingConfig",
    "WandbConfig",
]
