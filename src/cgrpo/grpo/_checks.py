"""Small argument checks shared by the GRPO math modules (private)."""

from __future__ import annotations

import math
from collections.abc import Iterable


def check_positive_int(name: str, value: int, minimum: int = 1) -> int:
    """Return ``value`` if it is an ``int`` >= ``minimum``, else raise ``ValueError``."""
    # bool is an int subclass; True as a step count is always a bug upstream.
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def check_finite_float(name: str, value: float, *, positive: bool = False) -> float:
    """Return ``float(value)`` if finite (and > 0 when ``positive``), else raise ``ValueError``."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a real number, got {value!r}") from None
    if not math.isfinite(out):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if positive and out <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return out


def unknown_name(kind: str, name: object, choices: Iterable[str]) -> ValueError:
    """Build the error raised when a registry lookup misses; lists every valid choice."""
    listed = ", ".join(repr(c) for c in sorted(choices))
    return ValueError(f"unknown {kind} {name!r}; choose one of: {listed}")
