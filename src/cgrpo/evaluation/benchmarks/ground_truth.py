"""The toy world's ground truth for one toybench item, shared by the held-out measures.

``gt-colour`` and ``gt-scene`` (:mod:`cgrpo.evaluation.benchmarks.toybench`), ``gt-pattern``
and ``gt-shape`` (:mod:`cgrpo.evaluation.benchmarks.edit_checks`) and their accuracy check
(:mod:`cgrpo.evaluation.benchmarks.check_accuracy`) all read an item's identity and
requested scene from its metadata, cache renders per scene, bring images to the world's size
and erode masks with these helpers.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch


def _world_and_scene(world: Any, meta: dict[str, Any]):
    from cgrpo.world.core import Scene

    if "identity" not in meta or "scene" not in meta:
        raise ValueError(
            "toybench held-out measures need metadata 'identity' and 'scene' "
            "(items from cgrpo.evaluation.benchmarks.toybench.toybench_items)"
        )
    scene = Scene.from_dict(meta["scene"])
    return world.identity(meta["identity"]), scene


def _cache_key(meta: dict[str, Any]) -> str:
    # Seeds of one pair share the ground truth; renders are pure functions of these fields.
    return json.dumps([meta.get("identity"), meta.get("scene")], sort_keys=True)


def _resize(image: torch.Tensor, size: int) -> torch.Tensor:
    """``[3, H, W]`` -> ``[3, size, size]`` (area average; images may differ from the world size)."""
    if image.shape[-1] == size and image.shape[-2] == size:
        return image
    return torch.nn.functional.interpolate(image[None], size=(size, size), mode="area")[0]


def _erode(mask: np.ndarray) -> np.ndarray:
    p = np.pad(mask, 1, constant_values=False)
    return mask & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
