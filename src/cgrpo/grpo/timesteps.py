"""Which denoising steps get trained: a random subset per sample, or a MixGRPO sliding window.

Steps are indices ``i`` in ``[0, N)`` of the sampler (``i = 0`` starts from pure noise). Both
selectors only ever pick from the first ``N - 1`` steps: the final step onto ``s = 0`` is
never trained (and, with a window, is always sampled deterministically).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ._checks import check_finite_float, check_positive_int

__all__ = [
    "StepWindow",
    "num_trained_timesteps",
    "select_timesteps_random",
    "select_timesteps_window",
    "sliding_window",
]


def num_trained_timesteps(num_steps: int, fraction: float) -> int:
    """``T = max(1, round(fraction * (N - 1)))``, rounding halves up (not to even).

    Args:
        num_steps: ``N >= 2`` sampler steps.
        fraction: share of the ``N - 1`` trainable steps, in ``(0, 1]`` (paper: 0.6).
    """
    check_positive_int("num_steps", num_steps, minimum=2)
    fraction = check_finite_float("fraction", fraction, positive=True)
    if fraction > 1.0:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
    return max(1, math.floor(fraction * (num_steps - 1) + 0.5))


def select_timesteps_random(
    num_steps: int,
    fraction: float,
    batch_size: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw, independently per sample, ``T`` distinct steps from ``[0, N - 1)``.

    ``T = num_trained_timesteps(num_steps, fraction)``; each row is a uniformly random
    ``T``-subset, sorted ascending.

    Returns:
        ``[batch_size, T]`` int64 tensor (on the generator's device, CPU by default).
    """
    count = num_trained_timesteps(num_steps, fraction)
    check_positive_int("batch_size", batch_size)
    device = generator.device if generator is not None else torch.device("cpu")
    keys = torch.rand(batch_size, num_steps - 1, generator=generator, device=device)
    chosen = keys.argsort(dim=1)[:, :count]
    return chosen.sort(dim=1).values


@dataclass(frozen=True)
class StepWindow:
    """Steps ``start, ..., stop - 1`` of an ``num_steps``-step sampler.

    Inside the window the sampler takes SDE steps (and those steps are trained); outside it
    takes deterministic ODE steps.
    """

    start: int
    stop: int
    num_steps: int

    @property
    def steps(self) -> range:
        """The window's step indices."""
        return range(self.start, self.stop)

    def __len__(self) -> int:
        return self.stop - self.start

    def __contains__(self, step: object) -> bool:
        return isinstance(step, int) and self.start <= step < self.stop

    def is_sde(self, step: int) -> bool:
        """True if ``step`` is stochastic (inside the window), False if it is an ODE step."""
        if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < self.num_steps:
            raise ValueError(f"step must be an int in [0, {self.num_steps}), got {step!r}")
        return step in self

    def sde_mask(self, device: torch.device | str | None = None) -> Tensor:
        """``[num_steps]`` bool tensor, True at SDE steps (inside the window)."""
        idx = torch.arange(self.num_steps, device=device)
        return (idx >= self.start) & (idx < self.stop)


def sliding_window(
    num_steps: int,
    window_size: int,
    stride: int,
    global_step: int,
    shift_interval: int = 1,
) -> StepWindow:
    """MixGRPO's sliding window at training iteration ``global_step``.

    The window starts at step 0 and moves ``stride`` steps later every ``shift_interval``
    iterations: ``start = min((global_step // shift_interval) * stride, (N - 1) - window_size)``.
    Once it reaches the last trainable step it stays there. ``stride = 0`` gives a fixed
    window at the start.

    Args:
        num_steps: ``N >= 2`` sampler steps.
        window_size: ``1 <= w <= N - 1`` steps inside the window.
        stride: steps moved per shift, ``>= 0``.
        global_step: training iteration, ``>= 0``.
        shift_interval: iterations between shifts, ``>= 1``.
    """
    check_positive_int("num_steps", num_steps, minimum=2)
    check_positive_int("window_size", window_size)
    if window_size > num_steps - 1:
        raise ValueError(
            f"window_size must be <= num_steps - 1 = {num_steps - 1} (the final step is never "
            f"trained), got {window_size}"
        )
    check_positive_int("stride", stride, minimum=0)
    check_positive_int("global_step", global_step, minimum=0)
    check_positive_int("shift_interval", shift_interval)
    start = min((global_step // shift_interval) * stride, num_steps - 1 - window_size)
    return StepWindow(start=start, stop=start + window_size, num_steps=num_steps)


def select_timesteps_window(
    num_steps: int,
    window_size: int,
    stride: int,
    global_step: int,
    batch_size: int,
    shift_interval: int = 1,
) -> Tensor:
    """The current :func:`sliding_window`'s steps for every sample.

    Returns:
        ``[batch_size, window_size]`` int64 tensor; every row is ``start, ..., stop - 1``.
    """
    window = sliding_window(num_steps, window_size, stride, global_step, shift_interval)
    check_positive_int("batch_size", batch_size)
    return torch.arange(window.start, window.stop).unsqueeze(0).expand(batch_size, -1).clone()
