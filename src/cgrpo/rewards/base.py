"""The one interface every reward implements.

A reward scores a batch of generated images against their prompts and reference images
and returns one or more *named* score columns (a VLM judge may return both
``"vlm.identity"`` and ``"vlm.prompt"``). Names travel end to end: logs, plots, reports.

Images are float tensors ``[B, 3, H, W]`` in ``[0, 1]`` (RGB), on any device; a reward
moves them where it needs them. References are per sample, because a sample may have
several reference images of its own size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from cgrpo.registry import Registry


class RewardFailure(RuntimeError):
    """A reward could not score a batch (server down or silent, a custom function that
    raised or returned the wrong type, ...).

    The trainer catches it, writes a checkpoint of the completed steps and stops with one
    line; so the message must already say everything a user needs: ``str(e)`` is
    ``"reward '<name>': <cause>"``.

    Attributes:
        reward: the reward's configured name (``"remote"``, ``"python:mod:fn"``, ...).
        cause: what went wrong, naming the URL, module or function at fault (line breaks
            in it, from a user's exception say, are joined into one line).
    """

    def __init__(self, reward: str, cause: str) -> None:
        cause = " / ".join(line.strip() for line in cause.splitlines() if line.strip())
        super().__init__(f"reward {reward!r}: {cause}")
        self.reward = reward
        self.cause = cause


@dataclass
class ScoreRequest:
    """What a reward sees for a batch of B generated images.

    Attributes:
        images: ``[B, 3, H, W]`` float in [0, 1], the generated images.
        prompts: B prompts, one per image.
        references: B items, each ``[R, 3, h, w]`` float in [0, 1] (R >= 1 references).
        reference_masks: B items, each ``[R, 1, h, w]`` float in {0, 1} (1 = subject) or None
            where no mask is known.
        metadata: B dicts of extra ground truth a reward may use (the toy world stores
            the subject's identity and requested attributes here); may be empty dicts.
    """

    images: torch.Tensor
    prompts: list[str]
    references: list[torch.Tensor]
    reference_masks: list[torch.Tensor | None] = field(default_factory=list)
    metadata: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        b = self.images.shape[0]
        if self.images.ndim != 4 or self.images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got {tuple(self.images.shape)}")
        if not self.reference_masks:
            self.reference_masks = [None] * b
        if not self.metadata:
            self.metadata = [{} for _ in range(b)]
        for name, seq in (
            ("prompts", self.prompts),
            ("references", self.references),
            ("reference_masks", self.reference_masks),
            ("metadata", self.metadata),
        ):
            if len(seq) != b:
                raise ValueError(f"{name} has {len(seq)} items for {b} images")

    def __len__(self) -> int:
        return self.images.shape[0]

    def select(self, index: Sequence[int] | slice) -> ScoreRequest:
        """The sub-batch at ``index`` (used for chunking and batch-invariance checks)."""
        idx = list(range(len(self)))[index] if isinstance(index, slice) else list(index)
        return ScoreRequest(
            images=self.images[idx],
            prompts=[self.prompts[i] for i in idx],
            references=[self.references[i] for i in idx],
            reference_masks=[self.reference_masks[i] for i in idx],
            metadata=[self.metadata[i] for i in idx],
        )


class Reward:
    """Base class of all rewards.

    Subclasses set ``name`` (the registry name), ``columns`` (the score column names they
    return) and implement :meth:`_score`. Higher is better for every column.
    """

    name: str = "reward"
    columns: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.device = torch.device("cpu")

    def to(self, device: torch.device | str) -> Reward:
        """Move the reward's models to ``device``; subclasses with models override."""
        self.device = torch.device(device)
        return self

    def offload(self) -> None:
        """Free accelerator memory between uses (default: move to CPU)."""
        self.to("cpu")

    def _score(self, request: ScoreRequest) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    @torch.no_grad()
    def score(self, request: ScoreRequest) -> dict[str, torch.Tensor]:
        """Score a batch: one float32 CPU tensor ``[B]`` per name in ``columns``.

        Raises ValueError naming the reward and column if a score is NaN or infinite.
        """
        out = self._score(request)
        missing = set(self.columns) - set(out)
        if missing:
            raise RuntimeError(f"reward {self.name!r} did not return columns {sorted(missing)}")
        result = {}
        for col in self.columns:
            v = out[col].detach().to("cpu", torch.float32).reshape(-1)
            if v.shape[0] != len(request):
                raise RuntimeError(
                    f"reward {self.name!r} column {col!r} has {v.shape[0]} scores "
                    f"for {len(request)} images"
                )
            bad = (~torch.isfinite(v)).nonzero().flatten().tolist()
            if bad:
                raise ValueError(
                    f"reward {self.name!r} gave a non-finite score in column {col!r} "
                    f"for batch rows {bad[:8]} (prompt {request.prompts[bad[0]]!r})"
                )
            result[col] = v
        return result


REWARDS: Registry[Any] = Registry("reward")
"""Reward factories by name. A factory takes ``(options: dict, context: RewardContext)``."""


@dataclass
class RewardContext:
    """What a reward factory may need beyond its own options."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    cache_dir: str | None = None


@dataclass
class RewardBatch:
    """Scores of a batch, one named float32 column ``[B]`` per reward column, in order."""

    columns: dict[str, torch.Tensor]

    @property
    def names(self) -> list[str]:
        return list(self.columns)

    def matrix(self, names: Sequence[str] | None = None) -> torch.Tensor:
        """The columns ``names`` (default: all) stacked as ``[B, K]``."""
        names = self.names if names is None else list(names)
        missing = [n for n in names if n not in self.columns]
        if missing:
            raise KeyError(f"no reward columns {missing}; have {self.names}")
        return torch.stack([self.columns[n] for n in names], dim=1)


__all__ = [
    "REWARDS",
    "Reward",
    "RewardContext",
    "RewardFailure",
    "ScoreRequest",
    "RewardBatch",
]
