"""How good are the ground-truth checks? How often each prefers the right answer.

:func:`check_accuracy` scores a render of the requested scene and a render of the same scene
with one attribute changed, both degraded alike (:data:`DEGRADATIONS`: clean, blurred,
speckled, JPEG-compressed like a small generator's samples), and counts how often the right
one scores higher. ``python -m cgrpo.evaluation.benchmarks.check_accuracy`` prints the table
for ``gt-colour``, ``gt-pattern`` and ``gt-shape`` over the toybench items (README,
docs/TESTBED.md).
"""

from __future__ import annotations

import dataclasses
import io
from typing import Any

import numpy as np
import torch

from cgrpo.evaluation.benchmarks.ground_truth import _world_and_scene
from cgrpo.image_io import read_image
from cgrpo.rewards.base import Reward, ScoreRequest
from cgrpo.rewards.images import gaussian_blur


def degrade(image: torch.Tensor, kind: str, rng: np.random.Generator) -> torch.Tensor:
    """A ``[3, S, S]`` render made to look like a small generator's sample.

    ``clean``: unchanged. ``blur``: Gaussian sigma 0.8. ``speckle``: blur 0.6 plus pixel noise
    of std 24/255 (the generator's speckle, measured in docs/TESTBED.md). ``jpeg``: a JPEG
    round trip at quality 50.
    """
    if kind == "clean":
        return image
    if kind == "blur":
        return gaussian_blur(image[None], 0.8)[0]
    if kind == "speckle":
        noise = torch.from_numpy(rng.normal(0, 24 / 255, image.shape)).float()
        return (gaussian_blur(image[None], 0.6)[0] + noise).clamp(0, 1)
    if kind == "jpeg":
        from PIL import Image

        arr = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=50)
        back = read_image(buf.getvalue(), "JPEG round trip")
        return torch.from_numpy(back).permute(2, 0, 1)
    raise ValueError(f"unknown degradation {kind!r}; choose clean, blur, speckle or jpeg")


DEGRADATIONS = ("clean", "blur", "speckle", "jpeg")


def check_accuracy(
    check: Reward, world: Any, metadata: list[dict[str, Any]], attribute: str, seed: int = 7
) -> dict[str, float]:
    """How often ``check`` scores a render of the requested scene above a render of the same
    scene with ``attribute`` changed to a random other value, per degradation (both images
    degraded alike, with jitter seeds the check's own templates do not use)."""
    from cgrpo.world.vocab import ATTRIBUTE_VALUES

    rng = np.random.default_rng(seed)
    wins = {k: 0 for k in DEGRADATIONS}
    for i, meta in enumerate(metadata):
        ident, scene = _world_and_scene(world, meta)
        wanted = world.attributes(ident, scene)[attribute]
        other = str(rng.choice([v for v in ATTRIBUTE_VALUES[attribute] if v != wanted]))
        overrides = {**dict(scene.overrides), attribute: other}
        wrong = dataclasses.replace(scene, overrides=tuple(overrides.items()))
        shots = [
            world.render(ident, s, np.random.default_rng(1000 + i)).image for s in (scene, wrong)
        ]
        right_img, wrong_img = (torch.from_numpy(s).permute(2, 0, 1).float() / 255 for s in shots)
        for kind in DEGRADATIONS:
            a, b = degrade(right_img, kind, rng), degrade(wrong_img, kind, rng)
            request = ScoreRequest(torch.stack([a, b]), [scene.prompt] * 2, [a[None]] * 2,
                                   metadata=[meta, meta])  # fmt: skip
            scores = check.score(request)[check.columns[0]]
            wins[kind] += int(scores[0] > scores[1])
    return {k: v / max(1, len(metadata)) for k, v in wins.items()}


__all__ = ["DEGRADATIONS", "check_accuracy", "degrade"]


# python -m cgrpo.evaluation.benchmarks.check_accuracy: how often each check is right
if __name__ == "__main__":
    from cgrpo.evaluation.benchmarks.toybench import heldout_metric, toybench_items

    items, world = toybench_items({})
    metas = [it.metadata for it in items]
    print(f"right render scored above a wrong one, {len(metas)} toybench items (world seed 0)")
    print(f"{'check':<12}" + "".join(f"{k:>10}" for k in DEGRADATIONS))
    for name, attr in (("gt-colour", "palette"), ("gt-pattern", "pattern"), ("gt-shape", "shape")):
        acc = check_accuracy(heldout_metric(name, world), world, metas, attr)
        print(f"{name:<12}" + "".join(f"{acc[k]:>10.3f}" for k in DEGRADATIONS))
