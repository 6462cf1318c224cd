"""Rewards: one interface (:mod:`cgrpo.rewards.base`), registered by name.

* :mod:`~cgrpo.rewards.base` - the interface (``Reward``, ``ScoreRequest``, ...) and the
  ``REWARDS`` registry; :mod:`~cgrpo.rewards.build` - ``build_reward``, which also registers
  the built-in rewards on import.
* :mod:`~cgrpo.rewards.custom` - rewards from a user's Python function.
* :mod:`~cgrpo.rewards.images`, :mod:`~cgrpo.rewards.loading` - image preprocessing and the
  strict loading of local model directories that the rewards share.
* :mod:`cgrpo.rewards.models` - the reward models: toy, DINO, CLIP, HPSv3, VLM judge.
* :mod:`cgrpo.rewards.serving` - a reward out of process: the HTTP server, its batching and
  wire format, and the ``remote`` reward that calls it.
* :mod:`cgrpo.rewards.segmentation` - which pixels are the subject (``dino-seg``).

Importing this package registers the built-in rewards. Modules that need heavy
dependencies import them lazily inside the reward that uses them.
"""

from cgrpo.rewards.base import (
    REWARDS,
    Reward,
    RewardBatch,
    RewardContext,
    RewardFailure,
    ScoreRequest,
)
from cgrpo.rewards.build import build_reward

__all__ = [
    "REWARDS",
    "Reward",
    "RewardBatch",
    "RewardContext",
    "RewardFailure",
    "ScoreRequest",
    "build_reward",
]
