"""Gradient balancing across rewards (MGDA, as MARBLE uses it: arXiv 2605.06507).

Each reward ``k`` gives its own policy gradient ``g_k``. Scaled to unit length,
``u_k = g_k / |g_k|``, the weights ``alpha`` on the simplex that minimise
``|sum_k alpha_k u_k|`` (the min-norm point of their convex hull) give a direction that
does not decrease any reward to first order, when one exists. ``alpha`` is smoothed by an
EMA across updates, and the update is ``sum_k alpha_k u_k * mean_k |g_k|``.

A reward whose gradient is exactly zero (a constant reward gives zero advantages) takes no
part: its weight is 0 and its norm is left out of the mean, so it contributes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["MGDAStep", "min_norm_weights", "mgda_direction", "project_to_simplex"]


def project_to_simplex(v: Tensor) -> Tensor:
    """Euclidean projection of ``v`` ``[K]`` onto ``{a : a >= 0, sum a = 1}`` (sort-based)."""
    u, _ = torch.sort(v, descending=True)
    cssv = u.cumsum(0) - 1.0
    ind = torch.arange(1, v.numel() + 1, dtype=v.dtype, device=v.device)
    rho = int((u - cssv / ind > 0).nonzero().max())
    theta = cssv[rho] / (rho + 1)
    return (v - theta).clamp_min(0.0)


def min_norm_weights(gram: Tensor, *, iterations: int = 2000, tol: float = 1e-12) -> Tensor:
    """``alpha`` ``[K]`` on the simplex minimising ``alpha^T M alpha`` for ``M = gram``.

    ``M[i, j] = <u_i, u_j>`` is the Gram matrix of the (unit) gradients, so the objective is
    ``|sum_k alpha_k u_k|^2``. K = 1: ``[1]``. K = 2, closed form:
    ``alpha_1 = clip((M22 - M12) / (M11 + M22 - 2 M12), 0, 1)`` (``1/2`` each when the two
    gradients coincide). K > 2: projected gradient descent with step ``1 / L``
    (``L = 2 * largest eigenvalue of M``) from the uniform point, stopped when a step moves
    ``alpha`` by less than ``tol``. Computed in float64.

    Args:
        gram: ``[K, K]`` symmetric positive semi-definite.

    Returns:
        ``[K]`` float64, non-negative, summing to 1.
    """
    m = gram.double()
    k = m.shape[0]
    if m.shape != (k, k) or k == 0:
        raise ValueError(f"gram must be a square [K, K] matrix, got {tuple(gram.shape)}")
    if k == 1:
        return torch.ones(1, dtype=torch.float64)
    if k == 2:
        denom = m[0, 0] + m[1, 1] - 2 * m[0, 1]
        if denom <= 0:
            return torch.full((2,), 0.5, dtype=torch.float64)
        a = float(((m[1, 1] - m[0, 1]) / denom).clamp(0.0, 1.0))
        return torch.tensor([a, 1.0 - a], dtype=torch.float64)
    lipschitz = 2 * float(torch.linalg.eigvalsh(m).max())
    alpha = torch.full((k,), 1.0 / k, dtype=torch.float64)
    if lipschitz <= 0:
        return alpha
    for _ in range(iterations):
        nxt = project_to_simplex(alpha - (2 * m @ alpha) / lipschitz)
        moved = float((nxt - alpha).abs().max())
        alpha = nxt
        if moved < tol:
            break
    return alpha


@dataclass
class MGDAStep:
    """One balanced update.

    Attributes:
        direction: one tensor per parameter, ``sum_k alpha_k g_k / |g_k| * mean |g_k|``.
        alpha: ``[K]`` the weights used (after the EMA).
        raw_alpha: ``[K]`` this update's min-norm weights (before the EMA).
        norms: ``[K]`` ``|g_k|``.
    """

    direction: list[Tensor]
    alpha: Tensor
    raw_alpha: Tensor
    norms: Tensor


def mgda_direction(
    grads: Sequence[Sequence[Tensor]], previous: Tensor | None = None, ema: float = 0.0
) -> MGDAStep:
    """Balance the per-reward gradients ``grads[k][p]`` (reward ``k``, parameter ``p``).

    Args:
        grads: ``K`` lists of the same parameters' gradients (all-reduced already when
            several processes train: every process must see the same ``grads``).
        previous: ``[K]`` the smoothed ``alpha`` of the previous update, or ``None``.
        ema: decay in ``[0, 1)``: ``alpha = ema * previous + (1 - ema) * raw_alpha``.

    Returns:
        :class:`MGDAStep`. With no non-zero gradient the direction is zero and ``alpha``
        stays ``previous`` (uniform without one).
    """
    k = len(grads)
    if k == 0 or any(len(g) != len(grads[0]) for g in grads):
        raise ValueError("grads must hold the same parameters for each of K >= 1 rewards")
    if not 0.0 <= ema < 1.0:
        raise ValueError(f"ema must lie in [0, 1), got {ema}")
    gram = torch.zeros(k, k, dtype=torch.float64)
    for i in range(k):
        for j in range(i, k):
            dot = sum(float((a.double() * b.double()).sum()) for a, b in zip(grads[i], grads[j]))
            gram[i, j] = gram[j, i] = dot
    norms = gram.diagonal().clamp_min(0.0).sqrt()
    active = norms > 0
    uniform = torch.full((k,), 1.0 / k, dtype=torch.float64)
    keep = previous.double().cpu() if previous is not None else uniform
    if not bool(active.any()):
        return MGDAStep([torch.zeros_like(p) for p in grads[0]], keep, keep.clone(), norms)
    idx = active.nonzero().flatten()
    unit_gram = gram[idx][:, idx] / torch.outer(norms[idx], norms[idx])
    raw = torch.zeros(k, dtype=torch.float64)
    raw[idx] = min_norm_weights(unit_gram)
    alpha = raw if previous is None else ema * keep + (1.0 - ema) * raw
    scale = float(norms[idx].mean())
    coef = [float(alpha[i]) * scale / float(norms[i]) if active[i] else 0.0 for i in range(k)]
    direction = []
    for p in range(len(grads[0])):
        d = torch.zeros_like(grads[0][p])
        for i in range(k):
            if coef[i]:
                d.add_(grads[i][p], alpha=coef[i])
        direction.append(d)
    return MGDAStep(direction, alpha, raw, norms)
