"""Typed results of the loop stages: a rollout and its advantages."""

from __future__ import annotations

from dataclasses import dataclass

import torch

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
    """

    per_reward: torch.Tensor
    columns: list[str]
    timesteps: torch.Tensor
    combined: torch.Tensor
    weights: torch.Tensor
    rewards: RewardBatch
