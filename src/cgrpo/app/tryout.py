"""Trying a trained adapter: base and trained images for one reference and prompt, scored.

This is the whole of ``cgrpo app`` apart from the page (:mod:`cgrpo.app.page`): it loads a run
(its config, the adapter, every configured reward), offers the first examples of the run's
data as references, reads uploaded references through :mod:`cgrpo.image_io` (its pixel limit
and modes), and generates with deterministic sampling as ``cgrpo sample`` does, the base model
being the same policy with the adapter switched off.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cgrpo.data.base import build_dataset, load_image
from cgrpo.rewards.base import ScoreRequest
from cgrpo.sampling import generate
from cgrpo.training.runs import load_run_policy
from cgrpo.training.scoring import build_rewards

log = logging.getLogger("cgrpo.app")

#: Seeds feed torch.Generator.manual_seed (64-bit).
MAX_SEED = 2**63 - 1


@dataclass
class Reference:
    """A reference set to try: from the run's data (with its prompt) or uploaded."""

    label: str
    references: torch.Tensor  # [R, 3, h, w] float in [0, 1]
    prompt: str = ""
    reference_masks: torch.Tensor | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class Comparison:
    """Base and trained images (``[3, H, W]`` in [0, 1]) of one request, their scores by
    reward column (``{column: (base, trained)}``) and the seconds each generation took."""

    base: torch.Tensor
    trained: torch.Tensor
    scores: dict[str, tuple[float, float]]
    roles: dict[str, str]
    seconds: tuple[float, float]

    def table(self) -> str:
        """The scores and times as a markdown table."""
        rows = ["| reward | role | base | trained | change |", "|---|---|---:|---:|---:|"]
        for column, (base, trained) in self.scores.items():
            rows.append(
                f"| {column} | {self.roles[column]} | {base:.4f} | {trained:.4f} | "
                f"{trained - base:+.4f} |"
            )
        rows.append(f"| time (s) | | {self.seconds[0]:.2f} | {self.seconds[1]:.2f} | |")
        return "\n".join(rows)


class Tryout:
    """A run loaded for trying: ``compare(reference, prompt, seed)``; thread-safe (one at a
    time: the adapter is switched off for the base image)."""

    def __init__(
        self,
        run_dir: str | Path,
        checkpoint: str = "final",
        device: str | torch.device = "cpu",
        num_steps: int | None = None,
        max_examples: int = 24,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.config, self.policy = load_run_policy(self.run_dir, checkpoint, device)
        self.device = torch.device(device)
        self.num_steps = num_steps or self.config.sampling.num_steps
        if self.num_steps < 1:
            raise ValueError(f"--num-steps must be >= 1, got {self.num_steps}")
        self.scorer = build_rewards(self.config.rewards, self.device)
        self.examples = self._examples(max_examples)
        self._lock = threading.Lock()

    def _examples(self, limit: int) -> list[Reference]:
        data = self.config.data
        try:
            dataset = build_dataset(data.name, data.options, "train")
        except (OSError, ValueError) as e:  # data moved since training: uploads still work
            log.warning("the run's data (%s) is not available: %s; use uploads", data.name, e)
            return []
        out = []
        for i in range(min(limit, len(dataset))):
            ex = dataset[i]
            label = f"{ex.key or i}: {ex.prompt}"
            out.append(Reference(label, ex.references, ex.prompt, ex.reference_masks, ex.metadata))
        return out

    @staticmethod
    def upload(paths: Sequence[str | Path]) -> Reference:
        """Uploaded reference files, read by :func:`cgrpo.image_io.read_image` (its limits);
        later ones take the first one's size."""
        if not paths:
            raise ValueError("no reference image uploaded")
        images = [load_image(p, "uploaded reference") for p in paths]
        size = tuple(images[0].shape[-2:])
        images = [
            im
            if tuple(im.shape[-2:]) == size
            else torch.nn.functional.interpolate(
                im[None], size=size, mode="bilinear", antialias=True
            )[0].clamp(0, 1)
            for im in images
        ]
        return Reference(", ".join(Path(p).name for p in paths), torch.stack(images))

    def compare(self, reference: Reference, prompt: str, seed: int = 0) -> Comparison:
        prompt = prompt.strip()
        if not prompt:
            raise ValueError("the prompt is empty")
        if not 0 <= seed <= MAX_SEED:
            raise ValueError(f"the seed must be between 0 and {MAX_SEED}, got {seed}")
        sampling = self.config.sampling
        kwargs = dict(
            num_steps=self.num_steps,
            shift=sampling.shift,
            dynamic_shift=sampling.dynamic_shift,
            seed=seed,
        )
        with self._lock:
            t0 = time.perf_counter()
            with self.policy.adapter_disabled():
                base = generate(self.policy, [prompt], [reference.references], **kwargs)
            t1 = time.perf_counter()
            trained = generate(self.policy, [prompt], [reference.references], **kwargs)
            t2 = time.perf_counter()
            images = torch.cat([base, trained])
            batch = self.scorer.score(
                ScoreRequest(
                    images=images,
                    prompts=[prompt, prompt],
                    references=[reference.references] * 2,
                    reference_masks=[reference.reference_masks] * 2,
                    metadata=[dict(reference.metadata), dict(reference.metadata)],
                )
            )
        scores = {c: (float(v[0]), float(v[1])) for c, v in batch.columns.items()}
        roles = {c: spec.role for c, spec in self.scorer.columns.items()}
        return Comparison(base[0], trained[0], scores, roles, (t1 - t0, t2 - t1))


__all__ = ["Comparison", "MAX_SEED", "Reference", "Tryout"]
