"""Recipe: add a reward. One file; its last line registers it (docs/ARCHITECTURE.md).

``rewards: [{name: brightness, role: prompt}]`` then trains on it, once this module has been
imported (``import my_rewards`` before building the trainer).
"""

from __future__ import annotations

import torch

from cgrpo.rewards import REWARDS, Reward, RewardContext, ScoreRequest


class Brightness(Reward):
    """Mean pixel value of each image, in [0, 1] (higher is brighter)."""

    name = "brightness"
    columns = ("brightness",)

    def _score(self, request: ScoreRequest) -> dict[str, torch.Tensor]:
        return {"brightness": request.images.float().mean(dim=(1, 2, 3))}


def build(options: dict, context: RewardContext) -> Brightness:
    return Brightness().to(context.device)


REWARDS.register("brightness", build)
