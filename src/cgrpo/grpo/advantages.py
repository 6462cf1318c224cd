"""Group-relative advantages and the strategies that merge several rewards into one.

Shapes used throughout: ``B`` samples, ``K`` reward columns, groups of ``group_size``
consecutive rows sharing a prompt/reference (so ``B = n_groups * group_size``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
from torch import Tensor

from ._checks import check_finite_float, unknown_name
from .normalize import check_groups, float_dtype, group_normalize, zscore_groups

__all__ = [
    "ADVANTAGE_STRATEGIES",
    "AdvantageCombiner",
    "combine_advantages",
    "group_normalize",
]

#: Added to ``A_j + A_l`` in the harmonic combiner (the paper's constant).
HARMONIC_EPS = 1e-6


class AdvantageCombiner(Protocol):
    """Signature of a registered strategy.

    ``adv`` is ``[B, K]``, ``weights`` is ``[B, K]`` (already broadcast and validated),
    ``gamma`` is the interaction strength, ``group_size`` is ``None`` unless the caller
    passed it. Returns ``[B]``.
    """

    def __call__(
        self, adv: Tensor, weights: Tensor, gamma: float, group_size: int | None
    ) -> Tensor: ...


def _pairs(adv: Tensor, strategy: str) -> tuple[Tensor, Tensor]:
    k = adv.shape[1]
    if k < 2:
        raise ValueError(
            f"strategy {strategy!r} combines pairs of rewards and needs K >= 2, got K={k}"
        )
    i, j = torch.triu_indices(k, k, offset=1, device=adv.device)
    return adv[:, i], adv[:, j]


def _linear(adv: Tensor, weights: Tensor, gamma: float, group_size: int | None) -> Tensor:
    """``sum_k w_k A_k`` (naive multi-reward GRPO); ``gamma`` unused."""
    return (weights * adv).sum(dim=1)


def _sars(adv: Tensor, weights: Tensor, gamma: float, group_size: int | None) -> Tensor:
    """Synergy-Aware Reward Shaping: ``sum_k w_k A_k + S``.

    ``S`` averages a synergy term over the ``P = K(K-1)/2`` unordered pairs ``(j, l)``:
    ``S = (gamma / P) * sum_{j<l} sign_jl * tanh(A_j * A_l)`` with ``sign_jl = +1`` if
    ``A_j > 0 or A_l > 0`` else ``-1``. For ``K = 2`` (one pair) this is exactly the paper's
    rule: both good -> bonus, mixed -> penalty (product < 0), both bad -> penalty (sign
    flipped). Averaging (not summing) keeps the bonus within ``[-gamma, gamma]`` for any K.
    """
    a, b = _pairs(adv, "sars")
    sign = torch.where((a > 0) | (b > 0), 1.0, -1.0).to(adv.dtype)
    synergy = (sign * torch.tanh(a * b)).mean(dim=1)
    return _linear(adv, weights, gamma, group_size) + gamma * synergy


def _harmonic(adv: Tensor, weights: Tensor, gamma: float, group_size: int | None) -> Tensor:
    """``sum_k w_k A_k + (gamma / P) * sum_{j<l} A_j A_l / (A_j + A_l + 1e-6)``.

    For ``K = 2`` this is the paper's ``w.A + g*A1*A2/(A1+A2+1e-6)``; for ``K > 2`` the
    pair term is averaged over all ``P = K(K-1)/2`` pairs. Faithful to the paper, the term
    is unbounded when ``A_j + A_l`` is close to ``-1e-6``.
    """
    a, b = _pairs(adv, "harmonic")
    interaction = (a * b / (a + b + HARMONIC_EPS)).mean(dim=1)
    return _linear(adv, weights, gamma, group_size) + gamma * interaction


def _min(adv: Tensor, weights: Tensor, gamma: float, group_size: int | None) -> Tensor:
    """``min_k A_k``: a sample counts as good only if it is good on every reward.

    Weights and ``gamma`` are ignored (scaling before a min would change which reward wins).
    """
    return adv.amin(dim=1)


def _max(adv: Tensor, weights: Tensor, gamma: float, group_size: int | None) -> Tensor:
    """``max_k A_k``: weights and ``gamma`` are ignored, as for ``"min"``."""
    return adv.amax(dim=1)


def _weighted_product(
    adv: Tensor, weights: Tensor, group_size: int | None, exponent: float, name: str
) -> Tensor:
    """``p = prod_k softplus(A_k) ** (exponent * w_k)``, re-normalised within each group.

    ``p`` is always positive, so on its own it would push every sample up; it is therefore
    z-scored again within each group of ``group_size`` rows, with the same zero-variance rule
    as :func:`group_normalize` (a group of equal products gives exactly 0). Because of that
    re-normalisation the exponent matters: ``exponent = 2`` gives ``p**2`` (which stretches
    the high end), not a rescaled ``p``.

    The product is formed in log space in float64, with softplus floored at ``1e-30`` and the
    log clamped to ``[-300, 300]``, so finite advantages never produce inf or NaN.
    """
    if group_size is None:
        raise ValueError(
            f"strategy {name!r} re-normalises within groups and needs group_size; "
            "pass combine_advantages(..., group_size=G)"
        )
    check_groups(adv.shape[0], group_size)
    soft = torch.nn.functional.softplus(adv.double()).clamp_min(1e-30)
    log_p = (exponent * weights.double() * soft.log()).sum(dim=1).clamp(-300.0, 300.0)
    z = zscore_groups(log_p.exp().unsqueeze(1), group_size)
    return z.squeeze(1).to(adv.dtype)


def _product(adv: Tensor, weights: Tensor, gamma: float, group_size: int | None) -> Tensor:
    """``prod_k softplus(A_k) ** w_k`` (a weighted geometric combination; with unit weights
    the plain product), z-scored within groups. Requires ``group_size``; ``gamma`` unused."""
    return _weighted_product(adv, weights, group_size, 1.0, "product")


def _product_2w(adv: Tensor, weights: Tensor, gamma: float, group_size: int | None) -> Tensor:
    """``prod_k softplus(A_k) ** (2 w_k)``, z-scored within groups: the exponent of the
    official Customized-GRPO code's product ablation (its constant baseline
    ``softplus(0) ** (2 w_1 + 2 w_2)`` cancels in the z-score). Requires ``group_size``."""
    return _weighted_product(adv, weights, group_size, 2.0, "product-2w")


#: Strategy name -> combiner. Lookups go through :func:`combine_advantages`, which
#: raises ``ValueError`` listing these names for anything else.
ADVANTAGE_STRATEGIES: dict[str, AdvantageCombiner] = {
    "linear": _linear,
    "sars": _sars,
    "harmonic": _harmonic,
    "min": _min,
    "max": _max,
    "product": _product,
    "product-2w": _product_2w,
}


def _as_weights(weights: Tensor | Sequence[float], batch: int, k: int, like: Tensor) -> Tensor:
    w = torch.as_tensor(weights, dtype=like.dtype, device=like.device)
    if w.ndim == 1 and w.shape[0] == k:
        w = w.unsqueeze(0).expand(batch, k)
    elif w.shape != (batch, k):
        raise ValueError(
            f"weights must have K={k} entries (shape [{k}]) or shape [{batch}, {k}], "
            f"got shape {list(w.shape)}"
        )
    if not bool(torch.isfinite(w).all()):
        raise ValueError("weights must be finite")
    return w


def combine_advantages(
    adv: Tensor,
    weights: Tensor | Sequence[float],
    strategy: str,
    gamma: float = 0.4,
    group_size: int | None = None,
) -> Tensor:
    """Merge per-reward advantages into one scalar advantage per sample.

    Strategies (see each combiner's docstring in this module for the K > 2 definitions):

    * ``"linear"``: ``sum_k w_k A_k``.
    * ``"sars"``: linear plus ``gamma`` times the mean over reward pairs of
      ``+-tanh(A_j A_l)`` (``+`` if either is positive, else ``-``); K = 2 is the paper's SARS.
    * ``"harmonic"``: linear plus ``gamma`` times the mean over pairs of
      ``A_j A_l / (A_j + A_l + 1e-6)``.
    * ``"min"`` / ``"max"``: elementwise min/max over ``k`` of ``A_k``; weights ignored.
    * ``"product"``: ``prod_k softplus(A_k)**w_k`` re-normalised within groups
      (needs ``group_size``); ``"product-2w"``: the same with exponent ``2 w_k``, as the
      official code's ablation.

    Args:
        adv: ``[B, K]`` per-reward advantages (normally from :func:`group_normalize`).
        weights: ``K`` weights (sequence or ``[K]`` tensor) shared by all samples, or a
            ``[B, K]`` tensor of per-sample weights (e.g. TDW at each sample's timestep).
        strategy: a key of :data:`ADVANTAGE_STRATEGIES`.
        gamma: interaction strength for ``"sars"`` and ``"harmonic"`` (paper: 0.4).
        group_size: rows per group; required by ``"product"`` and ``"product-2w"``,
            ignored by the others.

    Returns:
        ``[B]`` combined advantages, float32 (float64 for float64 input).

    Raises:
        ValueError: unknown strategy (lists the choices), wrong weight shape (names the
            expected K), non-finite advantages/weights/gamma, or a strategy-specific
            requirement (K >= 2 for pairwise ones, ``group_size`` for ``"product"``).
    """
    try:
        combiner = ADVANTAGE_STRATEGIES[strategy]
    except (KeyError, TypeError):
        raise unknown_name("advantage strategy", strategy, ADVANTAGE_STRATEGIES) from None
    if not isinstance(adv, Tensor) or adv.ndim != 2:
        shape = tuple(adv.shape) if isinstance(adv, Tensor) else type(adv).__name__
        raise ValueError(f"adv must be a [B, K] tensor, got {shape}")
    gamma = check_finite_float("gamma", gamma)
    values = adv.to(float_dtype(adv))
    if not bool(torch.isfinite(values).all()):
        raise ValueError("advantages contain NaN or inf")
    batch, k = values.shape
    w = _as_weights(weights, batch, k, values)
    return combiner(values, w, gamma, group_size)
