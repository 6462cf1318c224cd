"""Build a reward by name: the built-in rewards, registered in ``REWARDS``, and custom functions.

Importing this module registers the built-in rewards (each module registers its own on
import; heavy models load lazily inside each reward, so these imports are cheap). It sits
above the interface (:mod:`cgrpo.rewards.base`) and the rewards, so that neither needs the
other's module to build one.
"""

from __future__ import annotations

from typing import Any

from cgrpo.rewards.base import REWARDS, Reward, RewardContext
from cgrpo.rewards.custom import resolve_custom
from cgrpo.rewards.models import clip, dino, hpsv3, toy, vlm  # noqa: F401  (register)
from cgrpo.rewards.serving import remote  # noqa: F401  (registers ``remote``)


def build_reward(
    name: str, options: dict[str, Any] | None = None, context: RewardContext | None = None
) -> Reward:
    """Construct the reward registered as ``name`` (or ``python:<target>``, a custom one)."""
    if name.startswith("python:"):
        return resolve_custom(name, dict(options or {}), context or RewardContext())
    factory = REWARDS.get(name)
    return factory(dict(options or {}), context or RewardContext())


__all__ = ["build_reward"]
