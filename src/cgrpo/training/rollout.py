"""Typed results of the loop stages: a rollout and its advantages."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import torch

from cgrpo.config.schema import ConfigError
from cgrpo.config.sections import SamplingConfig
from cgrpo.data.base import Example
from cgrpo.policies.base import Condition
from cgrpo.rewards.base import RewardBatch, ScoreRequest
from cgrpo.sampling import Trajectory


@dataclass
class Rollout:
    """G samples for each of n groups, groups contiguous (B = n * G).

    Attributes:
        examples: B examples (each group's example repeated G times).
        cond: the policy's condition for the B samples.
        trajectory: latents ``[B, N + 1, ...]`` and old log-probs ``[B, N]``.
        images: ``[B, 3, H, W]`` decoded final samples in [0, 1].
        group_size: G.
    """

    examples: list[Example]
    cond: Condition
    trajectory: Trajectory
    images: torch.Tensor
    group_size: int

    def __len__(self) -> int:
        return len(self.examples)

    def score_request(self) -> ScoreRequest:
        return ScoreRequest(
            images=self.images,
            prompts=[e.prompt for e in self.examples],
            references=[e.references for e in self.examples],
            reference_masks=[e.reference_masks for e in self.examples],
            metadata=[e.metadata for e in self.examples],
        )


@dataclass
class Advantages:
    """Advantages of a rollout.

    Attributes:
        per_reward: ``[B, K]`` group-normalised advantage of each trained reward column.
        columns: the K column names, prompt role first.
        timesteps: ``[B, T]`` trained denoising step indices per sample.
        combined: ``[B, T]`` advantage per (sample, trained step), weighted at that step.
        weights: ``[B, T, K]`` reward weights used at each trained step.
        objectives: ``[B, T, K]`` each reward's own advantage when the update combines them
            (``mgda``; ``combined`` is then their mean, for the logs only), else None.
        noise_floor_kept: ``noise_floor/<column>/kept`` -> share of the step's groups
            whose spread reached that reward's noise floor (empty without floors).
    """

    per_reward: torch.Tensor
    columns: list[str]
    timesteps: torch.Tensor
    combined: torch.Tensor
    weights: torch.Tensor
    rewards: RewardBatch
    objectives: torch.Tensor | None = None
    noise_floor_kept: dict[str, float] = field(default_factory=dict)


def rollout_bytes(samples: int, num_steps: int, latent_shape: tuple[int, ...]) -> int:
    """A lower bound on the memory of one step's rollout: every sample keeps its N + 1
    float32 latents, and stacking them into the trajectory makes a second copy."""
    return 2 * samples * (num_steps + 1) * math.prod(latent_shape) * 4


def memory_bytes(device: torch.device) -> int:
    """Total memory of ``device`` (the GPU's, or the machine's RAM for the CPU)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_rollout_fits(
    sampling: SamplingConfig, latent_shape: tuple[int, ...], available: int
) -> None:
    """ConfigError naming ``sampling.group_size`` when a step's rollout cannot fit."""
    samples = sampling.group_size * sampling.groups_per_step
    need = rollout_bytes(samples, sampling.num_steps, latent_shape)
    if need > available:
        raise ConfigError(
            "sampling.group_size",
            sampling.group_size,
            f"{samples} samples per step ({sampling.groups_per_step} groups of "
            f"{sampling.group_size}) keep {sampling.num_steps + 1} latents of "
            f"{math.prod(latent_shape)} values each: at least {need / 2**30:.1f} GiB, more "
            f"than the {available / 2**30:.1f} GiB of memory here; lower "
            "sampling.group_size or sampling.groups_per_step",
        )
