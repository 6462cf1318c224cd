"""The advantage stage: raw rewards -> one advantage per (sample, trained step).

Three steps, each optional where a strategy says so:

1. **group-relative normalisation** of each reward (:func:`~cgrpo.grpo.group_normalize`,
   ``normalize = "group" | "batch" | "none"``);
2. a **combiner** merging the K columns with the reward weights (``linear``, ``sars``, ...);
   strategies with a ``raw_combiner`` (``sum-normalize``, ``gate``) combine the raw rewards
   and apply step 1 to the combined value;
3. an optional **batch normalisation** of the result (always on for ``gdpo``).

``mgda`` stops after step 1 (and 3, per reward): it returns every reward's advantage and is
combined in the update, where each reward's policy gradient is weighted by min-norm weights
(:mod:`cgrpo.grpo.mgda`).

Shapes: ``B`` samples in contiguous groups of ``group_size``, ``K`` reward columns, ``T``
trained steps per sample. Batch statistics are over the tensor given: pass every process's
rows (as the trainer does) for statistics of the whole batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ._checks import check_finite_float, unknown_name
from .advantages import ADVANTAGE_STRATEGIES, AdvantageCombiner, _as_weights, combine_advantages
from .normalize import (
    NORMALIZATIONS,
    check_finite_columns,
    check_groups,
    float_dtype,
    group_normalize,
    zscore_groups,
)
from .normalize import batch_normalize as batch_zscore

__all__ = [
    "STRATEGIES",
    "GateParams",
    "Strategy",
    "check_strategy",
    "compute_advantages",
    "register_strategy",
]

ROLES = ("prompt", "identity")


@dataclass(frozen=True)
class GateParams:
    """``gate``: the prompt reward minus ``penalty * max(0, threshold - r_id)^2``."""

    threshold: float = 0.5
    penalty: float = 10.0


RawCombiner = Callable[[Tensor, Tensor, Sequence[str], GateParams], Tensor]


def _sum_raw(raw: Tensor, weights: Tensor, roles: Sequence[str], gate: GateParams) -> Tensor:
    """``sum_k w_k r_k`` of the raw rewards ``[B, K]`` -> ``[B]``."""
    return (weights * raw).sum(dim=1)


def _gate(raw: Tensor, weights: Tensor, roles: Sequence[str], gate: GateParams) -> Tensor:
    """``sum_{k prompt} w_k r_k - penalty * sum_{k identity} w_k max(0, threshold - r_k)^2``.

    With equal weights this is the identity gate of DivRL (arXiv 2606.23950) up to a factor
    the group-relative step removes; with a schedule (TDW) the penalty's weight follows the
    identity weight at each step. Identity above the threshold costs nothing.
    """
    is_prompt = torch.tensor([r == "prompt" for r in roles], device=raw.device)
    deficit = (gate.threshold - raw).clamp_min(0.0).square()
    prompt = torch.where(is_prompt, weights * raw, torch.zeros_like(raw)).sum(dim=1)
    penalty = torch.where(is_prompt, torch.zeros_like(raw), weights * deficit).sum(dim=1)
    return prompt - gate.penalty * penalty


@dataclass(frozen=True)
class Strategy:
    """One ``advantage.strategy``.

    The formulas: README "Advantage strategies" and :func:`compute_advantages`.

    Attributes:
        combiner: name in :data:`~cgrpo.grpo.ADVANTAGE_STRATEGIES` applied to the per-reward
            advantages, or ``None`` (``raw`` strategies, and ``mgda``).
        raw_combiner: ``(raw [B, K], weights [B, K], roles, gate) -> [B]``, for strategies
            that combine the raw rewards; the group-relative step comes after it.
        batch_normalize: z-score the result over the batch (GDPO).
        per_reward: return every reward's advantage ``[..., K]`` (combined in the update).
        needs: ``"roles"``: rewards of both roles prompt and identity; ``"several"``: K >= 2.
    """

    combiner: str | None = None
    raw_combiner: RawCombiner | None = None
    batch_normalize: bool = False
    per_reward: bool = False
    needs: str = ""


#: Every ``advantage.strategy``; unknown names raise ValueError listing these.
STRATEGIES: dict[str, Strategy] = {
    "linear": Strategy(combiner="linear"),
    "sars": Strategy(combiner="sars", needs="roles"),
    "harmonic": Strategy(combiner="harmonic", needs="roles"),
    "min": Strategy(combiner="min"),
    "max": Strategy(combiner="max"),
    "product": Strategy(combiner="product"),
    "product-2w": Strategy(combiner="product-2w"),
    "sum-normalize": Strategy(raw_combiner=_sum_raw),
    "gdpo": Strategy(combiner="linear", batch_normalize=True),
    "gate": Strategy(raw_combiner=_gate, needs="roles"),
    "mgda": Strategy(per_reward=True, needs="several"),
}


def register_strategy(
    name: str, strategy: Strategy | AdvantageCombiner, *, needs: str = ""
) -> Strategy:
    """Add ``advantage.strategy: name`` without editing cgrpo (tests/recipes/recipe_strategy.py).

    ``strategy`` is a :class:`Strategy`, or a combiner of the per-reward advantages
    (:class:`~cgrpo.grpo.advantages.AdvantageCombiner`: ``(adv [B, K], weights [B, K], gamma,
    group_size) -> [B]``), then also registered in ``ADVANTAGE_STRATEGIES`` and wrapped as
    ``Strategy(combiner=name, needs=needs)``. The name becomes a valid config value.

    Raises:
        ValueError: ``name`` is already a strategy.
    """
    from cgrpo.config.sections import ADVANTAGE_STRATEGIES as CONFIG_NAMES

    if name in STRATEGIES or name in ADVANTAGE_STRATEGIES:
        raise ValueError(f"advantage strategy {name!r} is already registered")
    if not isinstance(strategy, Strategy):
        ADVANTAGE_STRATEGIES[name] = strategy
        strategy = Strategy(combiner=name, needs=needs)
    STRATEGIES[name] = strategy
    if name not in CONFIG_NAMES:
        CONFIG_NAMES.append(name)
    return strategy


def lookup_strategy(name: str) -> Strategy:
    try:
        return STRATEGIES[name]
    except (KeyError, TypeError):
        raise unknown_name("advantage strategy", name, STRATEGIES) from None


def check_strategy(name: str, roles: Sequence[str]) -> Strategy:
    """The strategy ``name`` if trained rewards with these ``roles`` (one per column, each
    ``"prompt"`` or ``"identity"``) fit its definition; ValueError naming it and K if not."""
    spec = lookup_strategy(name)
    bad = sorted({r for r in roles if r not in ROLES})
    if bad:
        raise ValueError(f"reward roles must be prompt or identity, got {bad}")
    k = len(roles)
    if spec.needs == "roles" and set(roles) != set(ROLES):
        raise ValueError(
            f"strategy {name!r} needs rewards of both roles prompt and identity, got K={k} "
            f"({', '.join(roles) or 'none'})"
        )
    if spec.needs == "several" and k < 2:
        raise ValueError(
            f"strategy {name!r} balances the gradients of several rewards and needs K >= 2 "
            f"trained rewards, got K={k}"
        )
    return spec


def compute_advantages(
    rewards: Tensor,
    weights: Tensor | Sequence[float],
    strategy: str,
    *,
    group_size: int,
    roles: Sequence[str] | None = None,
    normalize: str = "group",
    batch_normalize: bool = False,
    gamma: float = 0.4,
    gate: GateParams | None = None,
    column_names: Sequence[str] | None = None,
) -> Tensor:
    """Advantages of ``strategy`` from raw rewards (see the module docstring).

    Args:
        rewards: ``[B, K]`` raw rewards, groups of ``group_size`` contiguous rows.
        weights: ``[K]`` (shared), ``[B, K]`` (per sample) or ``[B, T, K]`` (per sample and
            trained step, e.g. TDW at each step's denoising index).
        strategy: a key of :data:`STRATEGIES`.
        group_size: rows per group (``>= 2``).
        roles: ``K`` roles (``"prompt"`` / ``"identity"``); required by ``sars``,
            ``harmonic`` and ``gate``; without it only K is checked.
        normalize: :data:`~cgrpo.grpo.normalize.NORMALIZATIONS`, the divisor of the
            group-relative step.
        batch_normalize: z-score the result over all its entries (``gdpo`` always does).
        gamma: interaction strength of ``sars`` / ``harmonic``.
        gate: threshold and penalty of ``gate``.
        column_names: ``K`` names for error messages.

    Returns:
        ``[B]`` for ``[K]`` / ``[B, K]`` weights, ``[B, T]`` for ``[B, T, K]`` weights; a
        trailing ``K`` axis for ``per_reward`` strategies (``mgda``: weights unused).
        float32 (float64 for float64 rewards).

    Raises:
        ValueError: unknown strategy or normalisation (lists the choices), rewards that do
            not fit the strategy (names it and K), bad shapes, non-finite values.
    """
    if normalize not in NORMALIZATIONS:
        raise unknown_name("normalization", normalize, NORMALIZATIONS)
    spec = lookup_strategy(strategy)
    if not isinstance(rewards, Tensor) or rewards.ndim != 2:
        shape = tuple(rewards.shape) if isinstance(rewards, Tensor) else type(rewards).__name__
        raise ValueError(f"rewards must be a [B, K] tensor, got {shape}")
    batch, k = rewards.shape
    if roles is not None:
        if len(roles) != k:
            raise ValueError(f"{len(roles)} roles for K={k} reward columns")
        check_strategy(strategy, roles)
    elif spec.needs == "roles":
        raise ValueError(f"strategy {strategy!r} needs the reward roles (roles=...)")
    elif spec.needs == "several":
        check_strategy(strategy, ["prompt"] * k)
    gamma = check_finite_float("gamma", gamma)
    values = rewards.to(float_dtype(rewards))
    w = torch.as_tensor(weights, dtype=values.dtype, device=values.device)
    per_step = w.ndim == 3
    if not per_step:
        w = _as_weights(w, batch, k, values).unsqueeze(1)
    elif w.shape[0] != batch or w.shape[2] != k:
        raise ValueError(f"weights must have shape [{batch}, T, {k}], got {list(w.shape)}")
    steps = w.shape[1]

    if spec.raw_combiner is not None:
        check_groups(batch, group_size)
        check_finite_columns(values, column_names, "reward")
        params = gate or GateParams()
        combined = torch.stack(
            [
                spec.raw_combiner(
                    values, _as_weights(w[:, t], batch, k, values), roles or (), params
                )
                for t in range(steps)
            ],
            dim=1,
        )
        out = zscore_groups(combined, group_size, normalize)
    else:
        adv = group_normalize(values, group_size, column_names, normalize=normalize)
        if spec.per_reward:
            out = adv.unsqueeze(1).expand(batch, steps, k).clone()
        else:
            assert spec.combiner is not None
            out = torch.stack(
                [
                    combine_advantages(adv, w[:, t], spec.combiner, gamma, group_size)
                    for t in range(steps)
                ],
                dim=1,
            )
    if spec.batch_normalize or batch_normalize:
        out = batch_zscore(out, dim=-1 if spec.per_reward else None)
    return out if per_step else out.squeeze(1)
