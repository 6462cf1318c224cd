"""The rewards of a run, built once from the config, and scoring a rollout's images."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cgrpo.config.schema import ConfigError
from cgrpo.config.sections import RewardSpec
from cgrpo.rewards.base import Reward, RewardBatch, RewardContext, ScoreRequest
from cgrpo.rewards.build import build_reward


@dataclass
class ScoredRewards:
    """The rewards of a run, built once: objects, the spec of each used column.

    With ``offload_to`` set, the reward models wait on the CPU and move to that device only
    to score (one reward at a time), so they hold no accelerator memory while the policy
    samples and updates.
    """

    rewards: dict[str, Reward]
    columns: dict[str, RewardSpec]  # column name -> spec (trained and monitored)
    offload_to: torch.device | None = None

    def score(self, request: ScoreRequest) -> RewardBatch:
        out: dict[str, torch.Tensor] = {}
        for reward in self.rewards.values():
            if self.offload_to is None:
                out.update(reward.score(request))
                continue
            reward.to(self.offload_to)
            try:
                out.update(reward.score(request))
            finally:
                reward.offload()
        return RewardBatch({c: out[c] for c in self.columns})


def build_rewards(
    specs: list[RewardSpec], device: torch.device, offload: bool = False
) -> ScoredRewards:
    """Instantiate each configured reward once and map the used columns to their specs."""
    rewards: dict[str, Reward] = {}
    columns: dict[str, RewardSpec] = {}
    context = RewardContext(device=device)
    home = torch.device("cpu") if offload else device
    for spec in specs:
        if spec.name not in rewards:
            try:
                rewards[spec.name] = build_reward(spec.name, spec.options, context).to(home)
            except ValueError as e:
                if isinstance(e, ConfigError):
                    raise
                raise ConfigError(f"rewards.{spec.name}", spec.name, str(e)) from None
        reward = rewards[spec.name]
        if spec.column is not None:
            if spec.column not in reward.columns:
                raise ConfigError(
                    f"rewards.{spec.name}.column",
                    spec.column,
                    f"choose from {', '.join(reward.columns)}",
                )
            columns[spec.column] = spec
        elif len(reward.columns) == 1:
            columns[reward.columns[0]] = spec
        else:
            raise ConfigError(
                f"rewards.{spec.name}.column",
                None,
                f"reward returns several columns; choose from {', '.join(reward.columns)}",
            )
    return ScoredRewards(rewards, columns, device if offload else None)
