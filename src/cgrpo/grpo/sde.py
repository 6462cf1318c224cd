"""One stochastic reverse step of the flow-matching sampler, with its Gaussian log-density.

Convention: ``x_s = (1 - s) * x0 + s * noise`` and the model predicts ``v ~ noise - x0``, so
``x1_hat = x + (1 - s) * v`` estimates the noise and the score is ``-x1_hat / s``. The
reverse SDE with diffusion ``g`` has drift ``v + (g^2 / (2 s)) * x1_hat`` per unit of ``-ds``;
one Euler-Maruyama step from ``s`` to ``s' < s`` (``D = s - s'``) is::

    mean = x - D * v - (g^2 * D / (2 s)) * x1_hat
    std  = g * sqrt(D)
    x'   = mean + std * xi,   xi ~ N(0, I)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from ._checks import check_finite_float, unknown_name

__all__ = ["SDE_NOISE_SCALES", "SDEStepResult", "NoiseScale", "sde_step"]

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


class NoiseScale(Protocol):
    """Maps the current level ``s`` (``[B, 1, ..., 1]`` float32), the whole schedule
    (``[N + 1]`` float32) and ``noise_level`` to the diffusion coefficient ``g`` (shaped
    like ``s``)."""

    def __call__(self, s: Tensor, sigmas: Tensor, noise_level: float) -> Tensor: ...


def _dance_scale(s: Tensor, sigmas: Tensor, noise_level: float) -> Tensor:
    """DanceGRPO / the paper: constant ``g = noise_level`` (eta, paper: 0.4)."""
    return torch.full_like(s, noise_level)


def _flow_scale(s: Tensor, sigmas: Tensor, noise_level: float) -> Tensor:
    """Flow-GRPO: ``g = noise_level * sqrt(s / (1 - s))``, with ``1 - sigmas[1]`` as the
    denominator where ``s == 1`` so the first step from pure noise stays finite."""
    denom = torch.where(s == 1.0, 1.0 - sigmas[1], 1.0 - s)
    return noise_level * torch.sqrt(s / denom)


#: SDE kind -> diffusion coefficient ``g``. Unknown kinds raise ``ValueError`` listing these.
SDE_NOISE_SCALES: dict[str, NoiseScale] = {
    "dance": _dance_scale,
    "flow": _flow_scale,
}


@dataclass(frozen=True)
class SDEStepResult:
    """Outcome of :func:`sde_step` for a batch of ``B`` samples.

    Attributes:
        prev_sample: ``x'``, shaped and typed like the input sample (the given
            ``prev_sample`` when one was passed). Detached: it is data, not a function of
            the policy.
        mean: float32 ``[B, ...]``, the Gaussian mean (carries gradients from ``velocity``).
        std: float32 ``[B, 1, ..., 1]`` (broadcastable to the sample); zeros when
            ``noise_level == 0``.
        log_prob: float32 ``[B]``, the per-element mean of the log-density of ``prev_sample``
            under ``N(mean, std^2)``; zeros when ``noise_level == 0``.
    """

    prev_sample: Tensor
    mean: Tensor
    std: Tensor
    log_prob: Tensor


def _per_sample_index(
    index: int | Tensor, batch: int, num_steps: int, device: torch.device
) -> Tensor:
    if isinstance(index, Tensor):
        if index.dtype in (torch.bool,) or index.is_floating_point() or index.is_complex():
            raise ValueError(f"index tensor must have an integer dtype, got {index.dtype}")
        if index.shape not in ((batch,), ()):
            raise ValueError(
                f"index tensor must have shape [{batch}] (one step per sample), got {list(index.shape)}"
            )
        idx = index.to(device=device, dtype=torch.long).expand(batch)
    elif isinstance(index, int) and not isinstance(index, bool):
        idx = torch.full((batch,), index, dtype=torch.long, device=device)
    else:
        raise ValueError(f"index must be an int or an integer tensor, got {type(index).__name__}")
    if batch and not (0 <= int(idx.min()) and int(idx.max()) < num_steps):
        raise ValueError(
            f"index must lie in [0, {num_steps}) for a schedule of {num_steps + 1} sigmas, got {index!r}"
        )
    return idx


def sde_step(
    velocity: Tensor,
    sample: Tensor,
    sigmas: Tensor,
    index: int | Tensor,
    noise_level: float,
    kind: str = "dance",
    prev_sample: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> SDEStepResult:
    """One reverse SDE step from ``s = sigmas[index]`` to ``s' = sigmas[index + 1]``.

    See the module docstring for the formulas. ``kind`` picks ``g`` (see
    :data:`SDE_NOISE_SCALES`): ``"dance"`` uses ``g = noise_level``; ``"flow"`` uses
    ``g = noise_level * sqrt(s / (1 - s))`` (``1 - sigmas[1]`` in the denominator at ``s = 1``).

    The log-probability is ``mean over non-batch dims of
    -(x' - mean)^2 / (2 std^2) - log(std) - log(2 pi) / 2`` (constants included). When
    ``prev_sample`` is given nothing is drawn and the density is evaluated there (the
    recomputation pass of PPO); otherwise ``x'`` is drawn, cast to the input dtype, and the
    density is evaluated at that *cast* value, so recomputing later from a stored bf16
    latent reproduces the same log-prob.

    ``noise_level == 0`` is the deterministic Euler ODE step ``x' = x - D * v``. It is a
    point mass, so it has no density: ``std`` and ``log_prob`` are returned as zeros (no
    gradient signal; such steps must not be trained on). A given ``prev_sample`` is passed
    through unchanged in that case.

    All arithmetic is float32 even for bf16/fp16 inputs.

    Args:
        velocity: ``[B, ...]`` model prediction ``v`` at ``sample``.
        sample: ``[B, ...]`` current latent ``x`` at level ``s``.
        sigmas: ``[N + 1]`` schedule, strictly decreasing where it is stepped through.
        index: step ``i`` in ``[0, N)``: an ``int`` for the whole batch or an integer tensor
            ``[B]`` giving each sample its own step.
        noise_level: ``eta`` (``"dance"``) or ``a`` (``"flow"``), ``>= 0``.
        kind: ``"dance"`` or ``"flow"``.
        prev_sample: optional ``[B, ...]`` ``x'`` to evaluate instead of sampling.
        generator: optional RNG for the draw (may live on the CPU while the sample is on
            an accelerator).

    Returns:
        :class:`SDEStepResult`.

    Raises:
        ValueError: unknown kind (lists the choices), shape mismatches, out-of-range index,
            negative/non-finite noise level, or a step where ``sigmas`` does not decrease.
    """
    try:
        scale_fn = SDE_NOISE_SCALES[kind]
    except (KeyError, TypeError):
        raise unknown_name("SDE kind", kind, SDE_NOISE_SCALES) from None
    noise_level = check_finite_float("noise_level", noise_level)
    if noise_level < 0:
        raise ValueError(f"noise_level must be >= 0, got {noise_level}")
    if sample.ndim < 2:
        raise ValueError(
            f"sample must be [B, ...] with at least one non-batch dim, got {list(sample.shape)}"
        )
    if velocity.shape != sample.shape:
        raise ValueError(
            f"velocity shape {list(velocity.shape)} != sample shape {list(sample.shape)}"
        )
    if prev_sample is not None and prev_sample.shape != sample.shape:
        raise ValueError(
            f"prev_sample shape {list(prev_sample.shape)} != sample shape {list(sample.shape)}"
        )
    if sigmas.ndim != 1 or sigmas.shape[0] < 2:
        raise ValueError(
            f"sigmas must be a 1-D schedule with N + 1 >= 2 values, got {list(sigmas.shape)}"
        )

    batch = sample.shape[0]
    sig = sigmas.to(device=sample.device, dtype=torch.float32)
    idx = _per_sample_index(index, batch, sig.shape[0] - 1, sample.device)
    bshape = (batch,) + (1,) * (sample.ndim - 1)
    s = sig[idx].reshape(bshape)
    delta = s - sig[idx + 1].reshape(bshape)
    if batch and not bool((delta > 0).all()):
        raise ValueError(f"sigmas must strictly decrease at the stepped index/indices {index!r}")

    x = sample.float()
    v = velocity.float()

    if noise_level == 0.0:
        mean = x - delta * v
        out = mean.detach().to(sample.dtype) if prev_sample is None else prev_sample.detach()
        zeros = torch.zeros(batch, dtype=torch.float32, device=sample.device)
        return SDEStepResult(out, mean, torch.zeros_like(s), zeros)

    g = scale_fn(s, sig, noise_level)
    x1_hat = x + (1.0 - s) * v
    mean = x - delta * v - (g * g * delta / (2.0 * s)) * x1_hat
    std = g * torch.sqrt(delta)

    if prev_sample is None:
        draw_device = generator.device if generator is not None else sample.device
        xi = torch.randn(sample.shape, generator=generator, device=draw_device, dtype=torch.float32)
        out = (mean.detach() + std * xi.to(sample.device)).to(sample.dtype)
    else:
        out = prev_sample.detach()

    z = (out.float() - mean) / std
    log_density = -0.5 * z * z - torch.log(std) - _HALF_LOG_2PI
    return SDEStepResult(out, mean, std, log_density.flatten(1).mean(dim=1))
