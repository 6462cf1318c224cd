"""Noise-level (sigma) schedules for the flow-matching sampler.

Convention: ``x_s = (1 - s) * x0 + s * noise``; a schedule is a float32 tensor ``[N + 1]``
running from ``s_0 = 1`` (pure noise) down to ``s_N = 0`` (clean sample). Step ``i`` moves
from ``s_i`` to ``s_{i+1}``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._checks import check_finite_float, check_positive_int

__all__ = ["dynamic_sigma_schedule", "flux_mu", "sigma_schedule", "time_shift"]


def _base_grid(num_steps: int) -> Tensor:
    # linspace(1, 0, N+1) holds the same points as FluxPipeline's linspace(1, 1/N, N)
    # followed by the appended terminal 0; float64 keeps both constructions identical to ~1e-16.
    return torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)


def sigma_schedule(num_steps: int, shift: float = 3.0) -> Tensor:
    """Statically shifted schedule: ``s_i = k*t_i / (1 + (k-1)*t_i)``, ``t = linspace(1, 0, N+1)``.

    ``k = shift > 1`` spends more steps at high noise (paper: ``k = 3``); ``k = 1`` leaves the
    uniform grid unchanged. The endpoints stay at exactly 1 and 0.

    Args:
        num_steps: ``N`` >= 1 denoising steps.
        shift: ``k`` > 0.

    Returns:
        ``[N + 1]`` float32, strictly decreasing from 1 to 0.
    """
    check_positive_int("num_steps", num_steps)
    k = check_finite_float("shift", shift, positive=True)
    t = _base_grid(num_steps)
    return (k * t / (1.0 + (k - 1.0) * t)).float()


def flux_mu(
    image_seq_len: int,
    base_seq_len: int = 256,
    max_seq_len: int = 4096,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
) -> float:
    """FLUX's resolution-dependent shift ``mu``: linear in the number of image tokens.

    The line passes through ``(base_seq_len, base_shift)`` and ``(max_seq_len, max_shift)``
    and is extrapolated outside that range (as diffusers does). ``image_seq_len`` is the
    packed latent token count, ``(H/16) * (W/16)`` for FLUX (1024 at 512x512).
    """
    check_positive_int("image_seq_len", image_seq_len)
    check_positive_int("base_seq_len", base_seq_len)
    check_positive_int("max_seq_len", max_seq_len)
    if max_seq_len == base_seq_len:
        raise ValueError("max_seq_len must differ from base_seq_len")
    base_shift = check_finite_float("base_shift", base_shift)
    max_shift = check_finite_float("max_shift", max_shift)
    slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return base_shift + slope * (image_seq_len - base_seq_len)


def time_shift(sigmas: Tensor, mu: float) -> Tensor:
    """Exponential time shift ``e^mu / (e^mu + (1/s - 1))`` applied elementwise.

    ``s = 1`` maps to 1 and ``s = 0`` maps to 0 (handled explicitly, ``1/s`` is infinite
    there). Larger ``mu`` keeps the schedule at high noise longer. Computed in float64 and
    returned in ``sigmas``' dtype.
    """
    mu = check_finite_float("mu", mu)
    s = sigmas.to(torch.float64)
    scale = math.exp(mu)
    positive = s > 0
    safe = torch.where(positive, s, torch.ones_like(s))
    shifted = scale / (scale + (1.0 / safe - 1.0))
    return torch.where(positive, shifted, torch.zeros_like(s)).to(sigmas.dtype)


def dynamic_sigma_schedule(
    num_steps: int,
    image_seq_len: int,
    base_seq_len: int = 256,
    max_seq_len: int = 4096,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
) -> Tensor:
    """FLUX's dynamically shifted schedule, the one ``FluxPipeline`` hands its scheduler.

    ``mu = flux_mu(image_seq_len, ...)``; the first ``N`` points of ``linspace(1, 0, N+1)``
    (equal to ``linspace(1, 1/N, N)``) go through :func:`time_shift` and a terminal 0 is
    appended, so the result matches diffusers' ``FlowMatchEulerDiscreteScheduler.sigmas``
    (``use_dynamic_shifting=True``) to float32 precision.

    Returns:
        ``[N + 1]`` float32, strictly decreasing from 1 to 0.
    """
    check_positive_int("num_steps", num_steps)
    mu = flux_mu(image_seq_len, base_seq_len, max_seq_len, base_shift, max_shift)
    return time_shift(_base_grid(num_steps), mu).float()
