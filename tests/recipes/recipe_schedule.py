"""Recipe: add a reward-weight schedule. One file; its last line registers it.

``advantage.schedule: step`` then weights the rewards with it at each trained step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from cgrpo.grpo import register_weight_schedule


@dataclass(frozen=True)
class StepSchedule:
    """All prompt (w_prompt = 1) in the first half of the steps, all identity after."""

    def __call__(self, step: int | Tensor, num_steps: int) -> Tensor:
        w_prompt = (torch.as_tensor(step) < num_steps / 2).float()
        return torch.stack([w_prompt, 1.0 - w_prompt], dim=-1)  # [..., 2]


register_weight_schedule("step", StepSchedule)
