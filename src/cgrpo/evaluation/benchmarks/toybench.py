"""toybench: the toy world's DreamBench, plus HELD-OUT measures from ground truth.

Items are the world's held-out identities x its 25 fixed prompts
(:func:`cgrpo.world.toybench`), with the reference shot, its exact mask, and the dataset's
metadata (``identity``, ``scene``, ``requested``, ``attributes``, ``kind``) that the toy
rewards read.

The training rewards (``toy-id``, ``toy-prompt``) are learned/feature scores. To check
that training improved the images and not just those scores, toybench adds measures
that no reward optimises, both computed from the world's pixel-exact ground truth of the
*requested* scene (identity with the prompt's overrides, background, position, size):

* ``gt-colour`` -- colour fidelity where the subject must be. Take the pixels that are
  subject in all of 4 jittered ground-truth renders of the requested scene, eroded by one
  pixel (so jitter and the dark outline do not count); classify every generated pixel
  there to the nearest of the world's 10 named colours or 3 neutral greys; the score is
  the share of pixels whose colour is one of the two colours of the requested palette
  (identity palette, or the prompt's colour for "a red ..."). 1 = the right colours in the
  right place; a subject drawn elsewhere, in the wrong colours or washed out scores low.
* ``gt-scene`` -- coarse agreement with the requested scene. Both the generated image and
  the mean of ``renders`` ground-truth renders (random jitter averaged out) are
  area-averaged to 8 x 8; the score is ``1 - mean |difference|`` in [0, 1]. It rewards the
  right background, position and size as much as the subject.
* ``gt-pattern`` and ``gt-shape`` -- does the image show the requested pattern / shape?
  Renders of the requested scene with every value of that attribute are compared with the
  image; see :mod:`cgrpo.evaluation.benchmarks.edit_checks`. With ``gt-colour`` they are the
  ground-truth checks of the three property edits (colour, pattern, shape).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from cgrpo.evaluation.benchmarks.edit_checks import GroundTruthEdit
from cgrpo.evaluation.benchmarks.ground_truth import _cache_key, _erode, _resize, _world_and_scene
from cgrpo.evaluation.harness import EvalItem
from cgrpo.rewards.base import Reward, ScoreRequest

HELDOUT_METRICS = ("gt-colour", "gt-pattern", "gt-shape", "gt-scene")


NEUTRALS = {"grey-dark": (64, 64, 64), "grey": (128, 128, 128), "grey-light": (190, 190, 190)}
"""Colour classes that never count as a hit, so grey backdrops and washed-out images score 0."""


class GroundTruthColour(Reward):
    """``gt-colour``: share of requested-subject pixels in the requested palette's colours."""

    name = "gt-colour"
    columns = ("gt-colour",)

    def __init__(self, world: Any, renders: int = 4) -> None:
        super().__init__()
        from cgrpo.world.vocab import COLOURS, PALETTE_SECONDARY

        self.world, self.renders = world, renders
        self._regions: dict[str, tuple[np.ndarray, str]] = {}
        table = {**COLOURS, **NEUTRALS}
        self._names = list(table)
        self._colours = torch.tensor([table[n] for n in self._names], dtype=torch.float32) / 255
        self._secondary = dict(PALETTE_SECONDARY)

    def region(self, meta: dict[str, Any]) -> tuple[np.ndarray, str]:
        """Pixels that are subject in every jittered ground-truth render, and the palette."""
        key = _cache_key(meta)
        if key not in self._regions:
            self._regions[key] = self._region(meta)
        return self._regions[key]

    def _region(self, meta: dict[str, Any]) -> tuple[np.ndarray, str]:
        ident, scene = _world_and_scene(self.world, meta)
        truths = [
            self.world.render(ident, scene, np.random.default_rng(k)) for k in range(self.renders)
        ]
        core = np.logical_and.reduce([t.mask for t in truths])
        region = _erode(core)
        return (region if region.any() else core), truths[0].attributes["palette"]

    def score_one(self, image: torch.Tensor, meta: dict[str, Any]) -> float:
        """``image`` ``[3, H, W]`` in [0, 1] -> score in [0, 1]."""
        region, palette = self.region(meta)
        wanted = {self._names.index(palette), self._names.index(self._secondary[palette])}
        small = _resize(image.float().cpu(), self.world.size).permute(1, 2, 0)
        pixels = small[torch.from_numpy(region)]
        if pixels.shape[0] == 0:
            return 0.0
        nearest = torch.cdist(pixels, self._colours).argmin(dim=1)
        return sum(int((nearest == k).sum()) for k in wanted) / pixels.shape[0]

    def _score(self, request: ScoreRequest) -> dict[str, torch.Tensor]:
        return {
            "gt-colour": torch.tensor(
                [self.score_one(img, meta) for img, meta in zip(request.images, request.metadata)]
            )
        }


class GroundTruthScene(Reward):
    """``gt-scene``: ``1 - mean |image - mean ground-truth render|`` at 8 x 8."""

    name = "gt-scene"
    columns = ("gt-scene",)

    def __init__(self, world: Any, renders: int = 4, grid: int = 8) -> None:
        super().__init__()
        self.world, self.renders, self.grid = world, renders, grid
        self._expected: dict[str, torch.Tensor] = {}

    def expected(self, meta: dict[str, Any]) -> torch.Tensor:
        """The mean ground-truth render of the requested scene, ``[3, grid, grid]``."""
        key = _cache_key(meta)
        if key not in self._expected:
            self._expected[key] = self._mean_render(meta)
        return self._expected[key]

    def _mean_render(self, meta: dict[str, Any]) -> torch.Tensor:
        ident, scene = _world_and_scene(self.world, meta)
        renders = [
            self.world.render(ident, scene, np.random.default_rng(k)).image
            for k in range(self.renders)
        ]
        mean = torch.from_numpy(np.mean(renders, axis=0)).permute(2, 0, 1).float() / 255
        return _resize(mean, self.grid)

    def score_one(self, image: torch.Tensor, meta: dict[str, Any]) -> float:
        small = _resize(image.float().cpu(), self.grid)
        return float(1.0 - (small - self.expected(meta)).abs().mean())

    def _score(self, request: ScoreRequest) -> dict[str, torch.Tensor]:
        return {
            "gt-scene": torch.tensor(
                [self.score_one(img, meta) for img, meta in zip(request.images, request.metadata)]
            )
        }


def heldout_metric(name: str, world: Any) -> Reward:
    """Build one of :data:`HELDOUT_METRICS` for ``world``."""
    if name == "gt-colour":
        return GroundTruthColour(world)
    if name == "gt-scene":
        return GroundTruthScene(world)
    if name in ("gt-pattern", "gt-shape"):
        return GroundTruthEdit(world, name)
    raise ValueError(
        f"unknown toybench held-out metric {name!r}; choose one of {', '.join(HELDOUT_METRICS)}"
    )


def toybench_items(data_options: dict[str, Any] | None = None) -> tuple[list[EvalItem], Any]:
    """toybench as :class:`EvalItem` s, and the world they come from.

    ``data_options`` are the ``toyworld`` dataset options of a training config (``size``,
    ``seed``; sampling options are ignored): the same world, so the held-out identities
    are those the run never trained on.
    """
    from cgrpo.world.bench import toybench
    from cgrpo.world.core import KINDS
    from cgrpo.world.dataset import build_toyworld

    options = {k: v for k, v in dict(data_options or {}).items() if k in ("size", "seed")}
    dataset = build_toyworld({**options, "source": "toybench", "kinds": list(KINDS)}, "heldout")
    bench = toybench(dataset.world)
    if len(bench) != len(dataset):
        raise RuntimeError(f"toybench has {len(bench)} items but the dataset {len(dataset)}")
    items = []
    for i, case in enumerate(bench):
        example = dataset[i]
        subject = case.identity.key
        items.append(
            EvalItem(
                index=i,
                key=f"{subject}/{case.prompt_index:02d}",
                subject=subject,
                prompt_index=case.prompt_index,
                prompt=example.prompt,
                kind=case.kind,
                references=example.references,
                reference_masks=example.reference_masks,
                metadata=dict(example.metadata),
                reference_label=f"toyworld:{subject}",
            )
        )
    return items, dataset.world


def ground_truth_image(world: Any, item: EvalItem, seed: int = 99) -> torch.Tensor:
    """A ground-truth render ``[3, S, S]`` of the scene ``item`` asks for (a perfect answer)."""
    ident, scene = _world_and_scene(world, item.metadata)
    image = world.render(ident, scene, np.random.default_rng(seed)).image
    return torch.from_numpy(image).permute(2, 0, 1).float() / 255


def calibrate(items: list[EvalItem], world: Any) -> dict[str, dict[str, dict[str, float]]]:
    """Mean held-out scores of three reference "systems", per prompt kind.

    ``ground truth`` (a render of the requested scene: the ceiling), ``copy reference``
    (returns the reference shot unchanged: perfect identity, ignores the prompt) and
    ``flat grey``. Returns ``{system: {kind: {metric: mean}}}``.
    """
    systems = {
        "ground truth": lambda it: ground_truth_image(world, it),
        "copy reference": lambda it: it.references[0],
        "flat grey": lambda it: torch.full_like(it.references[0], 0.5),
    }
    metrics = [heldout_metric(name, world) for name in HELDOUT_METRICS]
    out: dict[str, dict[str, dict[str, float]]] = {}
    for system, make in systems.items():
        images = torch.stack([make(it) for it in items])
        request = ScoreRequest(
            images,
            [it.prompt for it in items],
            [it.references for it in items],
            metadata=[it.metadata for it in items],
        )
        scores = {m.name: m.score(request)[m.name] for m in metrics}
        for kind in sorted({it.kind for it in items}) + ["all"]:
            rows = [i for i, it in enumerate(items) if kind in ("all", it.kind)]
            out.setdefault(system, {})[kind] = {n: float(v[rows].mean()) for n, v in scores.items()}
    return out


__all__ = [
    "HELDOUT_METRICS",
    "calibrate",
    "ground_truth_image",
    "GroundTruthColour",
    "GroundTruthScene",
    "heldout_metric",
    "toybench_items",
]


# python -m cgrpo.evaluation.benchmarks.toybench: what the gt-* numbers mean
if __name__ == "__main__":
    items, world = toybench_items({})
    table = calibrate(items, world)
    print(f"toybench held-out measures on {len(items)} items (world size {world.size}, seed 0)")
    print(f"{'system':<16}{'kind':<11}" + "".join(f"{m:>11}" for m in HELDOUT_METRICS))
    for system, kinds in table.items():
        for kind, values in kinds.items():
            print(
                f"{system:<16}{kind:<11}" + "".join(f"{values[m]:>11.3f}" for m in HELDOUT_METRICS)
            )
