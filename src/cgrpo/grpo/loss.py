"""The clipped policy-gradient objective and the per-step KL to a reference policy."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ._checks import check_finite_float

__all__ = ["PPOStats", "gaussian_kl", "ppo_clip_loss"]


@dataclass(frozen=True)
class PPOStats:
    """Diagnostics of one :func:`ppo_clip_loss` call (plain floats, safe to log).

    Attributes:
        clip_fraction: share of elements whose ratio lies outside ``[1 - eps, 1 + eps]``.
        ratio_mean: mean importance ratio (exactly 1.0 on the first update of a rollout).
        ratio_min: smallest ratio.
        ratio_max: largest ratio.
    """

    clip_fraction: float
    ratio_mean: float
    ratio_min: float
    ratio_max: float


def _broadcast_advantages(advantages: Tensor, like: Tensor) -> Tensor:
    # A [B] advantage may score a [B, T] block of log-probs (one sample, several timesteps).
    if advantages.shape == like.shape:
        return advantages
    if advantages.ndim < like.ndim and like.shape[: advantages.ndim] == advantages.shape:
        return advantages.reshape(
            advantages.shape + (1,) * (like.ndim - advantages.ndim)
        ).expand_as(like)
    raise ValueError(
        f"advantages shape {list(advantages.shape)} must equal log_prob shape {list(like.shape)} "
        "or be a leading prefix of it"
    )


def ppo_clip_loss(
    log_prob: Tensor,
    old_log_prob: Tensor,
    advantages: Tensor,
    clip_range: float = 1e-4,
    adv_clip: float = 5.0,
) -> tuple[Tensor, PPOStats]:
    """Clipped surrogate loss (to minimise).

    ``ratio = exp(log_prob - old_log_prob)``, ``A = clamp(advantages, -adv_clip, adv_clip)``,
    ``loss = mean(max(-A * ratio, -A * clamp(ratio, 1 - eps, 1 + eps)))`` with
    ``eps = clip_range``. ``old_log_prob`` is treated as a constant (detached).

    Args:
        log_prob: ``[B]`` or ``[B, T]`` log-probs under the current policy (with grad).
        old_log_prob: same shape, from the rollout policy.
        advantages: same shape, or a leading prefix of it (``[B]`` for ``[B, T]``).
        clip_range: ``eps > 0`` (paper: 1e-4).
        adv_clip: ``> 0`` bound on ``|A|`` (paper: 5).

    Returns:
        ``(loss, stats)``: a float32 scalar tensor and :class:`PPOStats`.
    """
    eps = check_finite_float("clip_range", clip_range, positive=True)
    bound = check_finite_float("adv_clip", adv_clip, positive=True)
    if old_log_prob.shape != log_prob.shape:
        raise ValueError(
            f"old_log_prob shape {list(old_log_prob.shape)} != log_prob shape {list(log_prob.shape)}"
        )
    if log_prob.numel() == 0:
        raise ValueError("log_prob is empty")
    adv = _broadcast_advantages(advantages, log_prob).float().clamp(-bound, bound)
    ratio = torch.exp(log_prob.float() - old_log_prob.detach().float())
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - eps, 1.0 + eps)
    loss = torch.maximum(unclipped, clipped).mean()
    with torch.no_grad():
        r = ratio.detach()
        stats = PPOStats(
            clip_fraction=float(((r - 1.0).abs() > eps).float().mean()),
            ratio_mean=float(r.mean()),
            ratio_min=float(r.min()),
            ratio_max=float(r.max()),
        )
    return loss, stats


def gaussian_kl(mean: Tensor, ref_mean: Tensor, std: Tensor | float) -> Tensor:
    """KL between two Gaussian steps sharing ``std``: per sample, the mean over non-batch
    dims of ``(mean - ref_mean)^2 / (2 std^2)``.

    Args:
        mean: ``[B, ...]`` policy step mean (e.g. :attr:`SDEStepResult.mean`).
        ref_mean: same shape, the reference policy's mean at the same step.
        std: ``> 0``; a python number, a 0-d tensor, a ``[B]`` tensor (one std per sample,
            always read as per-sample), or any tensor broadcastable to ``mean``.

    Returns:
        ``[B]`` float32.
    """
    if mean.shape != ref_mean.shape:
        raise ValueError(f"mean shape {list(mean.shape)} != ref_mean shape {list(ref_mean.shape)}")
    if mean.ndim < 1:
        raise ValueError("mean must have a batch dimension")
    sd = torch.as_tensor(std, dtype=torch.float32, device=mean.device)
    batch = mean.shape[0]
    if sd.ndim == 1 and sd.shape[0] == batch and mean.ndim > 1:
        sd = sd.reshape((batch,) + (1,) * (mean.ndim - 1))
    if not bool((sd > 0).all()):
        raise ValueError("std must be > 0 everywhere (a deterministic step has no KL)")
    try:
        shape = torch.broadcast_shapes(sd.shape, mean.shape)
    except RuntimeError:
        shape = None
    if shape != mean.shape:
        raise ValueError(
            f"std shape {list(sd.shape)} does not broadcast to mean shape {list(mean.shape)}"
        )
    diff = mean.float() - ref_mean.float()
    kl = diff * diff / (2.0 * sd * sd)
    return kl.reshape(batch, -1).mean(dim=1)
