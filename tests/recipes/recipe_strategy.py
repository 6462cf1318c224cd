"""Recipe: add an advantage strategy. One file; its last line registers it.

``advantage.strategy: prompt-first`` then combines the per-reward advantages with it.
"""

from __future__ import annotations

from torch import Tensor

from cgrpo.grpo import register_strategy


def prompt_first(adv: Tensor, weights: Tensor, gamma: float, group_size: int | None) -> Tensor:
    """``A_p + 0.1 * A_id``: ``adv`` and ``weights`` are ``[B, K]`` (columns: the prompt rewards
    first, then the identity ones, as the trainer orders them); returns ``[B]``."""
    return adv[:, 0] + 0.1 * adv[:, 1:].sum(dim=1)


register_strategy("prompt-first", prompt_first, needs="roles")
