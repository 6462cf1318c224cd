"""Training: the GRPO trainer, its typed stage results, checkpoints and run directories."""

from cgrpo.training.rollout import Advantages, Rollout
from cgrpo.training.runs import build_policy_from_config, load_run_policy
from cgrpo.training.trainer import Interrupted, Trainer

__all__ = [
    "Advantages",
    "Interrupted",
    "Rollout",
    "Trainer",
    "build_policy_from_config",
    "load_run_policy",
]
