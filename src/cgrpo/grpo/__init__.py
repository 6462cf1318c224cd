"""GRPO core math for flow-matching generators: pure, typed, CPU-testable functions.

* :mod:`.normalize`: group-relative normalisation (group / batch / no std), batch z-scores.
* :mod:`.advantages`: multi-reward combiners of per-reward advantages (SARS & co).
* :mod:`.stage`: the advantage stage: normalise, combine, batch-normalise; every strategy.
* :mod:`.mgda`: min-norm weights that balance per-reward gradients (MGDA / MARBLE).
* :mod:`.weighting`: reward-weight schedules over denoising steps (TDW & co).
* :mod:`.schedule`: sigma schedules (static shift, FLUX dynamic shift).
* :mod:`.sde`: one stochastic sampler step with its log-probability.
* :mod:`.loss`: clipped policy loss and per-step Gaussian KL.
* :mod:`.timesteps`: which steps are trained (random subset, sliding window).

The formulas are those of section 1 of the project guide; each function's docstring
restates the one it implements.
"""

from .advantages import ADVANTAGE_STRATEGIES, AdvantageCombiner, combine_advantages
from .loss import PPOStats, gaussian_kl, ppo_clip_loss
from .mgda import MGDAStep, mgda_direction, min_norm_weights
from .normalize import NORMALIZATIONS, batch_normalize, group_normalize
from .schedule import dynamic_sigma_schedule, flux_mu, sigma_schedule, time_shift
from .sde import SDE_NOISE_SCALES, NoiseScale, SDEStepResult, sde_step
from .stage import (
    STRATEGIES,
    GateParams,
    Strategy,
    check_strategy,
    compute_advantages,
    register_strategy,
)
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
    ReversedTDWSchedule,
    TDWSchedule,
    WeightSchedule,
    make_weight_schedule,
    register_weight_schedule,
    schedule_weights,
    tdw_weights,
)

__all__ = [
    "ADVANTAGE_STRATEGIES",
    "NORMALIZATIONS",
    "STRATEGIES",
    "SDE_NOISE_SCALES",
    "WEIGHT_SCHEDULES",
    "AdvantageCombiner",
    "FixedSchedule",
    "GateParams",
    "MGDAStep",
    "LinearSchedule",
    "NoiseScale",
    "PPOStats",
    "ReversedTDWSchedule",
    "SDEStepResult",
    "StepWindow",
    "Strategy",
    "TDWSchedule",
    "WeightSchedule",
    "batch_normalize",
    "check_strategy",
    "combine_advantages",
    "compute_advantages",
    "dynamic_sigma_schedule",
    "flux_mu",
    "gaussian_kl",
    "group_normalize",
    "make_weight_schedule",
    "mgda_direction",
    "min_norm_weights",
    "num_trained_timesteps",
    "ppo_clip_loss",
    "register_strategy",
    "register_weight_schedule",
    "schedule_weights",
    "sde_step",
    "select_timesteps_random",
    "select_timesteps_window",
    "sigma_schedule",
    "sliding_window",
    "tdw_weights",
    "time_shift",
]
