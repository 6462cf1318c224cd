"""GRPO core math for flow-matching generators: pure, typed, CPU-testable functions.

* :mod:`.advantages`: group-relative advantages and multi-reward combiners (SARS & co).
* :mod:`.weighting`: reward-weight schedules over denoising steps (TDW & co).
* :mod:`.schedule`: sigma schedules (static shift, FLUX dynamic shift).
* :mod:`.sde`: one stochastic sampler step with its log-probability.
* :mod:`.loss`: clipped policy loss and per-step Gaussian KL.
* :mod:`.timesteps`: which steps are trained (random subset, sliding window).

The formulas are those of section 1 of the project guide; each function's docstring
restates the one it implements.
"""

from .advantages import ADVANTAGE_STRATEGIES, AdvantageCombiner, combine_advantages, group_normalize
from .loss import PPOStats, gaussian_kl, ppo_clip_loss
from .schedule import dynamic_sigma_schedule, flux_mu, sigma_schedule, time_shift
from .sde import SDE_NOISE_SCALES, NoiseScale, SDEStepResult, sde_step
from .timesteps import (
    StepWindow,
    num_trained_timesteps,
    select_timesteps_random,
    select_timesteps_window,
    sliding_window,
)
from .weighting import (
    WEIGHT_SCHEDULES,
    FixedSchedule,
    LinearSchedule,
    TDWSchedule,
    WeightSchedule,
    make_weight_schedule,
    schedule_weights,
    tdw_weights,
)

__all__ = [
    "ADVANTAGE_STRATEGIES",
    "SDE_NOISE_SCALES",
    "WEIGHT_SCHEDULES",
    "AdvantageCombiner",
    "FixedSchedule",
    "LinearSchedule",
    "NoiseScale",
    "PPOStats",
    "SDEStepResult",
    "StepWindow",
    "TDWSchedule",
    "WeightSchedule",
    "combine_advantages",
    "dynamic_sigma_schedule",
    "flux_mu",
    "gaussian_kl",
    "group_normalize",
    "make_weight_schedule",
    "num_trained_timesteps",
    "ppo_clip_loss",
    "schedule_weights",
    "sde_step",
    "select_timesteps_random",
    "select_timesteps_window",
    "sigma_schedule",
    "sliding_window",
    "tdw_weights",
    "time_shift",
]
