"""Ground-truth edit checks on the subject world: does an image show the requested pattern
or shape?

The world can draw every answer, so these checks need no learned model. For an item that
asks for attribute value ``v*`` (the identity's own value, or the prompt's override), the
check renders the requested scene once per value ``v`` the attribute can take (everything
else unchanged) at a few jittered positions, and measures how far the image is from each:

    d_v = min over renders k of mean over the region of |blur(image) - blur(render_{v,k})|^2
    score = softmax(-d / temperature)[v*]        in [0, 1]

* ``gt-pattern`` compares the pixels that are subject in every requested render (the
  pattern lives inside the subject; the outline does not count).
* ``gt-shape`` compares the pixels that are subject in any render of any shape (the
  silhouette is what differs).

Both image and renders are blurred with the same Gaussian (sigma ``blur`` px) first: the
small generator's samples are blurry and speckled, and a check that reacted to speckle
would rank a group's samples by noise (the failure measured in docs/TESTBED.md). The
minimum over jittered renders forgives the 1-px placement jitter the world itself draws.

With ``gt-colour`` (:mod:`cgrpo.evaluation.benchmarks.toybench`) they cover the three property
edits: colour, pattern and shape. :mod:`cgrpo.evaluation.benchmarks.check_accuracy` measures
how often each check prefers the right answer over a wrong one, on clean and degraded renders.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from cgrpo.evaluation.benchmarks.ground_truth import _cache_key, _erode, _resize, _world_and_scene
from cgrpo.rewards.base import Reward, ScoreRequest
from cgrpo.rewards.images import gaussian_blur

EDIT_ATTRIBUTES = {"gt-pattern": "pattern", "gt-shape": "shape"}
"""Check name -> the identity attribute it checks."""

TEMPERATURES = {"gt-pattern": 0.005, "gt-shape": 0.0015}
"""Default softmax temperatures: about a quarter of the median distance margin between the
requested value and the nearest wrong one on ground-truth renders (silhouettes differ in
fewer pixels than patterns, so shape's margin, and its temperature, are smaller)."""


@dataclasses.dataclass
class _Templates:
    renders: torch.Tensor  # [V, R, 3, S, S], blurred
    region: torch.Tensor  # [S, S] bool
    target: int  # index of the requested value


class GroundTruthEdit(Reward):
    """``gt-pattern`` / ``gt-shape``: probability that the image shows the requested value.

    Args:
        world: the :class:`~cgrpo.world.core.SubjectWorld` the items come from.
        name: ``"gt-pattern"`` or ``"gt-shape"``.
        renders: jittered renders per candidate value.
        blur: Gaussian sigma in world pixels applied to image and renders alike.
        temperature: softmax temperature on the squared distances (mean over the region,
            pixel values in [0, 1]); None: :data:`TEMPERATURES`.

    Eight jittered renders (not four) matter: with four, the nearest render was often a
    pixel off, and a plain subject with its rim came out closer to "dotted" (accuracy on
    ground-truth renders 0.94 -> 0.99 for patterns, 0.93 -> 0.97 for shapes).
    """

    def __init__(
        self,
        world: Any,
        name: str,
        renders: int = 8,
        blur: float = 0.6,
        temperature: float | None = None,
    ) -> None:
        super().__init__()
        if name not in EDIT_ATTRIBUTES:
            raise ValueError(
                f"unknown edit check {name!r}; choose one of {', '.join(EDIT_ATTRIBUTES)}"
            )
        self.world, self.name, self.columns = world, name, (name,)
        self.attribute = EDIT_ATTRIBUTES[name]
        self.renders, self.blur = renders, blur
        self.temperature = TEMPERATURES[name] if temperature is None else temperature
        self._cache: dict[str, _Templates] = {}

    def values(self) -> tuple[str, ...]:
        from cgrpo.world.vocab import ATTRIBUTE_VALUES

        return ATTRIBUTE_VALUES[self.attribute]

    def templates(self, meta: dict[str, Any]) -> _Templates:
        """The blurred renders of the requested scene for every value (cached per scene)."""
        key = _cache_key(meta)
        if key not in self._cache:
            self._cache[key] = self._templates(meta)
        return self._cache[key]

    def _templates(self, meta: dict[str, Any]) -> _Templates:
        ident, scene = _world_and_scene(self.world, meta)
        wanted = self.world.attributes(ident, scene)[self.attribute]
        values = self.values()
        images, masks = [], []
        for value in values:
            overrides = dict(scene.overrides)
            overrides[self.attribute] = value
            alt = dataclasses.replace(scene, overrides=tuple(overrides.items()))
            shots = [
                self.world.render(ident, alt, np.random.default_rng(k)) for k in range(self.renders)
            ]
            images.append(np.stack([s.image for s in shots]))
            masks.append(np.stack([s.mask for s in shots]))
        t = torch.from_numpy(np.stack(images)).permute(0, 1, 4, 2, 3).float() / 255
        v, r = t.shape[:2]
        t = gaussian_blur(t.flatten(0, 1), self.blur).view(v, r, *t.shape[2:])
        target = values.index(wanted)
        if self.attribute == "shape":
            region = np.logical_or.reduce(np.concatenate(masks))
        else:
            core = np.logical_and.reduce(masks[target])
            eroded = _erode(core)
            region = eroded if eroded.any() else core
        return _Templates(t, torch.from_numpy(region), target)

    def distances(self, image: torch.Tensor, meta: dict[str, Any]) -> tuple[torch.Tensor, int]:
        """``image`` ``[3, H, W]`` -> (``[V]`` distance to each value, index of the requested)."""
        tpl = self.templates(meta)
        small = _resize(image.float().cpu().clamp(0, 1), self.world.size)
        small = gaussian_blur(small[None], self.blur)[0]
        diff = (tpl.renders - small).pow(2).sum(dim=2)  # [V, R, S, S]
        d = diff[..., tpl.region].mean(dim=-1) / 3  # [V, R]
        return d.amin(dim=1), tpl.target

    def score_one(self, image: torch.Tensor, meta: dict[str, Any]) -> float:
        d, target = self.distances(image, meta)
        return float(torch.softmax(-d / self.temperature, dim=0)[target])

    def _score(self, request: ScoreRequest) -> dict[str, torch.Tensor]:
        return {
            self.name: torch.tensor(
                [self.score_one(img, meta) for img, meta in zip(request.images, request.metadata)]
            )
        }


__all__ = [
    "EDIT_ATTRIBUTES",
    "GroundTruthEdit",
    "gaussian_blur",
]
