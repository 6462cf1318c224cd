"""Seeds of a run: every random draw derives from ``(config.seed, what, step, group...)``,
never from the process, so a run is the same on any number of processes and resumes exactly."""

from __future__ import annotations

import hashlib
from typing import Any

import torch


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any parts (stable across processes and Python versions)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def generator_for(*parts: Any) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*parts))
