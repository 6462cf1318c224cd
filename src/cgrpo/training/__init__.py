"""Training: the GRPO trainer, its typed stage results, checkpoints and run directories."""

from cgrpo.training.rollout import Advantages, Rollout
from cgrpo.training.runs import build_policy_from_config, load_run_policy
from cgrpo.training.stopping import Interrupted, Stopped, TrainingCrashed, TrainingFailed
from cgrpo.training.trainer import Trainer

__all__ = [
    "Advantages",
    "Interrupted",
    "Rollout",
    "Stopped",
    "Trainer",
    "TrainingCrashed",
    "TrainingFailed",
    "build_policy_from_config",
    "load_run_policy",
]
