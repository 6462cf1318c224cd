"""Rewards: one interface (:mod:`cgrpo.rewards.base`), registered by name.

Importing this package registers the built-in rewards. Modules that need heavy
dependencies import them lazily inside the reward that uses them.
"""

# Built-in reward modules register their rewards in REWARDS on import (heavy models
# load lazily inside each reward, so these imports are cheap).
from cgrpo.rewards import clip, custom, dino, hpsv3, remote, toy, vlm  # noqa: F401
from cgrpo.rewards.base import (
    REWARDS,
    Reward,
    RewardBatch,
    RewardContext,
    RewardFailure,
    ScoreRequest,
    build_reward,
)

__all__ = [
    "REWARDS",
    "Reward",
    "RewardBatch",
    "RewardContext",
    "RewardFailure",
    "ScoreRequest",
    "build_reward",
]
