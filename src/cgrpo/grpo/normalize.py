"""Group-relative normalisation of rewards, and z-scores over a whole batch.

Shapes: ``B`` samples, ``K`` columns, groups of ``group_size`` consecutive rows sharing a
prompt/reference (``B = n_groups * group_size``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ._checks import check_positive_int, unknown_name

__all__ = ["NORMALIZATIONS", "batch_normalize", "group_normalize"]

#: Added to every standard deviation, as in the guide, so tiny spreads stay finite.
STD_EPS = 1e-8

#: What divides a reward once its group mean is subtracted (:func:`group_normalize`).
NORMALIZATIONS = ("group", "batch", "none")


def float_dtype(t: Tensor) -> torch.dtype:
    """The dtype statistics are returned in: reduced precision is upcast, float64 kept."""
    return torch.promote_types(t.dtype, torch.float32)


def check_groups(batch: int, group_size: int) -> int:
    """The number of groups; ValueError unless ``group_size >= 2`` divides ``batch``."""
    check_positive_int("group_size", group_size, minimum=2)
    if batch % group_size != 0:
        raise ValueError(
            f"batch size {batch} is not divisible by group_size {group_size}; "
            "every group must be complete and contiguous"
        )
    return batch // group_size


def check_finite_columns(values: Tensor, column_names: Sequence[str] | None, what: str) -> None:
    """ValueError naming the first non-finite entry's column (by name when given) and row."""
    bad = ~torch.isfinite(values)
    if bool(bad.any()):
        row, col = (int(i) for i in bad.nonzero()[0])
        label = f"{column_names[col]!r} (index {col})" if column_names else f"index {col}"
        count = int(bad[:, col].sum())
        raise ValueError(
            f"{what} column {label} has a non-finite value {float(values[row, col])} "
            f"at row {row} ({count} non-finite value(s) in that column)"
        )


def zscore_groups(values: Tensor, group_size: int, normalize: str = "group") -> Tensor:
    """Group-relative values of ``values`` ``[B, K]`` per column; no input checks."""
    batch, k = values.shape
    # Statistics in float64: a float32 mean of large, close rewards (e.g. -41.17, -41.12)
    # leaves a residue that the small std turns into a group sum of ~1e-4 instead of 0.
    grouped = values.reshape(batch // group_size, group_size, k).double()
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if normalize == "group":
        centred = centred / (grouped.std(dim=1, unbiased=True, keepdim=True) + STD_EPS)
    elif normalize == "batch":
        spread = values.double().std(dim=0, unbiased=True)
        centred = centred / (spread + STD_EPS)
    # Decide "no variance" by max == min rather than std == 0: the mean of identical floats
    # can differ from them in the last bit, which would leave ~1e-9 instead of an exact 0.
    flat = (grouped.amax(dim=1, keepdim=True) - grouped.amin(dim=1, keepdim=True)) == 0
    centred = torch.where(flat, torch.zeros_like(centred), centred)
    return centred.reshape(batch, k).to(values.dtype)


def group_normalize(
    rewards: Tensor,
    group_size: int,
    column_names: Sequence[str] | None = None,
    *,
    normalize: str = "group",
) -> Tensor:
    """Per-reward group-relative advantages.

    For every column ``k`` and group ``G`` the group mean is subtracted and the result is
    divided according to ``normalize``:

    * ``"group"`` (GRPO): ``A_k = (r_k - mean_G(r_k)) / (std_G(r_k) + 1e-8)``;
    * ``"batch"`` (Flow-GRPO's global std): ``(r_k - mean_G(r_k)) / (std_B(r_k) + 1e-8)``,
      ``std_B`` over all ``B`` rows of the column;
    * ``"none"`` (Dr. GRPO): ``r_k - mean_G(r_k)``.

    Standard deviations are unbiased. A group whose values in a column are all equal gets
    exactly ``0`` in that column (never NaN, never a rounding residue). Further options
    (e.g. a floor on the group std) are keyword-only.

    Args:
        rewards: ``[B, K]`` rewards, ``B = n_groups * group_size``, groups contiguous
            (rows ``g*group_size ... (g+1)*group_size - 1`` form group ``g``).
        group_size: samples per group, ``>= 2`` (an unbiased std needs two samples).
        column_names: optional ``K`` names, used only to make error messages readable.
        normalize: one of :data:`NORMALIZATIONS`.

    Returns:
        ``[B, K]`` advantages, float32 (float64 if ``rewards`` is float64).

    Raises:
        ValueError: wrong rank, ``group_size < 2``, ``B`` not divisible by ``group_size``,
            ``len(column_names) != K``, an unknown ``normalize`` (lists the choices), or a
            NaN/inf reward (the message names the column, by name when given, and the
            first offending row).
    """
    if normalize not in NORMALIZATIONS:
        raise unknown_name("normalization", normalize, NORMALIZATIONS)
    if not isinstance(rewards, Tensor) or rewards.ndim != 2:
        shape = tuple(rewards.shape) if isinstance(rewards, Tensor) else type(rewards).__name__
        raise ValueError(f"rewards must be a [B, K] tensor, got {shape}")
    batch, k = rewards.shape
    if column_names is not None and len(column_names) != k:
        raise ValueError(f"column_names has {len(column_names)} names for K={k} reward columns")
    check_groups(batch, group_size)
    values = rewards.to(float_dtype(rewards))
    check_finite_columns(values, column_names, "reward")
    return zscore_groups(values, group_size, normalize)


def batch_normalize(values: Tensor, dim: int | None = None) -> Tensor:
    """z-score ``values`` over the whole batch: ``(x - mean) / (std + 1e-8)``, unbiased std.

    Args:
        values: any shape, e.g. ``[B]`` or ``[B, T]`` combined advantages.
        dim: ``None`` pools every entry; an int keeps that axis apart (each slice along it
            gets its own mean and std), e.g. ``dim=-1`` for ``[B, T, K]`` per-reward values.

    Returns:
        Same shape and dtype rule as :func:`group_normalize`; a constant input (or a single
        entry) gives exactly 0.
    """
    x = values.to(float_dtype(values))
    if dim is not None:
        moved = x.movedim(dim, -1)
        cols = moved.reshape(-1, moved.shape[-1])
    else:
        cols = x.reshape(-1, 1)
    d = cols.double()
    mean = d.mean(dim=0, keepdim=True)
    std = d.std(dim=0, unbiased=True, keepdim=True) if d.shape[0] > 1 else torch.zeros_like(mean)
    z = (d - mean) / (std + STD_EPS)
    flat = (d.amax(dim=0, keepdim=True) - d.amin(dim=0, keepdim=True)) == 0
    z = torch.where(flat, torch.zeros_like(z), z).to(x.dtype)
    if dim is not None:
        return z.reshape(moved.shape).movedim(-1, dim)
    return z.reshape(x.shape)
