"""Rewards: one interface (:mod:`cgrpo.rewards.base`), registered by name.

Importing this package registers the built-in rewards. Modules that need heavy
dependencies import them lazily inside the reward that uses them.
"""

import importlib
import importlib.util

from cgrpo.rewards.base import (
    REWARDS,
    Reward,
    RewardBatch,
    RewardContext,
    ScoreRequest,
    build_reward,
)

# Built-in reward modules; each registers its rewards in REWARDS on import.
_BUILTIN_MODULES = ("toy", "dino", "clip", "hpsv3", "vlm", "custom", "remote")
for _name in _BUILTIN_MODULES:
    if importlib.util.find_spec(f"cgrpo.rewards.{_name}") is not None:
        importlib.import_module(f"cgrpo.rewards.{_name}")

__all__ = ["REWARDS", "Reward", "RewardBatch", "RewardContext", "ScoreRequest", "build_reward"]
