"""A noise floor for group advantages: no advantage from a spread the reward's noise explains.

A group's z-scored advantages look the same whether its samples differ by a lot or by the
reward's own jitter: dividing by the group std blows a spread of 0.001 up to +-1. When a
reward's scores move by ``noise`` under changes no one can see (a JPEG round trip, a 1-px
shift: ``cgrpo preflight`` measures this), a group whose within-group std is below a small
multiple of that ``noise`` ranks its samples by chance, and training on it teaches the
policy to please the reward's noise. :func:`floor_mask` says which groups keep each
reward's advantage; :func:`flatten_groups` sets the others' scores in that reward to their
group mean, before the advantage stage normalises and combines anything (per reward: a
group may keep its identity advantage and lose its prompt advantage).

With ``advantage.normalize: group`` (the default) such a group's advantage from that reward
is exactly 0. With ``batch`` or ``none`` it keeps the part that tells the group from the
other groups (its mean), and loses only its within-group ranking, the part the noise set.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from cgrpo.config.schema import ConfigError

__all__ = [
    "flatten_groups",
    "floor_mask",
    "floor_rewards",
    "group_std",
    "measured_noise",
    "resolve_noise_floors",
]


def group_std(rewards: Tensor, group_size: int) -> Tensor:
    """``[G, K]``: the unbiased within-group std of each column of ``rewards`` ``[B, K]``
    (groups of ``group_size`` contiguous rows), in float64."""
    if rewards.ndim != 2:
        raise ValueError(f"rewards must be a [B, K] tensor, got {tuple(rewards.shape)}")
    if group_size < 2 or rewards.shape[0] % group_size:
        raise ValueError(
            f"batch size {rewards.shape[0]} does not split into groups of {group_size} (>= 2)"
        )
    grouped = rewards.double().reshape(-1, group_size, rewards.shape[1])
    return grouped.std(dim=1, unbiased=True)


def floor_mask(rewards: Tensor, group_size: int, floors: Tensor | Sequence[float]) -> Tensor:
    """``[G, K]`` bool: True where group ``g``'s std in column ``k`` reaches ``floors[k]``.

    Args:
        rewards: ``[B, K]`` scores, groups of ``group_size`` contiguous rows.
        group_size: samples per group (``>= 2``).
        floors: ``K`` minimum within-group stds (``>= 0``; 0 keeps every group, a flat
            group included: its advantage is 0 anyway).
    """
    std = group_std(rewards, group_size)
    floor = torch.as_tensor(floors, dtype=torch.float64).flatten()
    if floor.numel() != rewards.shape[1]:
        raise ValueError(f"{floor.numel()} floors for {rewards.shape[1]} reward columns")
    if bool((floor < 0).any()) or not bool(torch.isfinite(floor).all()):
        raise ValueError(f"noise floors must be finite and >= 0, got {floor.tolist()}")
    return std >= floor


def flatten_groups(rewards: Tensor, kept: Tensor, group_size: int) -> Tensor:
    """``rewards`` ``[B, K]`` with each group not ``kept`` (``[G, K]``) in a column set to
    its mean in that column: it keeps what tells it from other groups, and its samples no
    longer differ, so its group-normalised advantage from that column is exactly 0."""
    b, k = rewards.shape
    if b % group_size or tuple(kept.shape) != (b // group_size, k):
        raise ValueError(
            f"kept mask {tuple(kept.shape)} does not match {b} rows in groups of {group_size} "
            f"and {k} columns"
        )
    grouped = rewards.double().reshape(-1, group_size, k)
    mean = grouped.mean(dim=1, keepdim=True).expand_as(grouped)
    out = torch.where(kept[:, None, :].to(rewards.device), grouped, mean)
    return out.reshape(b, k).to(rewards.dtype)


def floor_rewards(
    rewards: Tensor, group_size: int, columns: Sequence[str], floors: Tensor | None
) -> tuple[Tensor, dict[str, float]]:
    """The advantage stage's floor, applied to the step's rewards before any normalisation:
    ``rewards`` with the groups under each column's floor flattened (:func:`flatten_groups`),
    and ``{"noise_floor/<column>/kept": share of groups kept}``. ``floors`` None: the
    rewards unchanged, no metrics."""
    if floors is None:
        return rewards, {}
    kept = floor_mask(rewards, group_size, floors)
    share = kept.double().mean(dim=0)
    metrics = {f"noise_floor/{c}/kept": float(share[k]) for k, c in enumerate(columns)}
    return flatten_groups(rewards, kept, group_size), metrics


def measured_noise(path: str | Path, key: str = "advantage.noise_floor_from") -> dict[str, float]:
    """Each reward column's measured noise std from a ``cgrpo preflight`` JSON
    (``rewards.<column>.noise_std``); errors name ``key`` and the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(key, str(path), "file not found (write it with cgrpo preflight)")
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
        rewards = data["rewards"]
        return {str(c): float(r["noise_std"]) for c, r in rewards.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ConfigError(
            key, str(path), f"not a preflight.json with rewards.<column>.noise_std ({e!r})"
        ) from None


def resolve_noise_floors(advantage: Any, columns: Sequence[str]) -> Tensor | None:
    """``[K]`` floors for the trained ``columns`` from the ``advantage`` config section
    (``noise_floor``, ``noise_floor_from`` x ``noise_floor_scale``), or None when no floor
    is set. Unknown or untrained columns and negative floors raise :class:`ConfigError`."""
    floors: dict[str, float] = {}
    if advantage.noise_floor_from:
        measured = measured_noise(advantage.noise_floor_from)
        missing = [c for c in columns if c not in measured]
        if missing:
            raise ConfigError(
                "advantage.noise_floor_from",
                advantage.noise_floor_from,
                f"has no measured noise for trained column(s) {', '.join(missing)} "
                f"(it measured {', '.join(measured) or 'none'}); run cgrpo preflight with "
                "this config",
            )
        floors = {c: advantage.noise_floor_scale * measured[c] for c in columns}
    for column, value in advantage.noise_floor.items():
        key = f"advantage.noise_floor.{column}"
        if column not in columns:
            raise ConfigError(
                key, value, f"not a trained reward column; choose from {', '.join(columns)}"
            )
        if value < 0:
            raise ConfigError(key, value, "must be >= 0")
        floors[column] = value
    if not floors:
        return None
    return torch.tensor([floors.get(c, 0.0) for c in columns], dtype=torch.float64)
