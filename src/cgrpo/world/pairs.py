"""Batches of (reference, prompt, target) pairs, for pretraining generators and rewards."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cgrpo.world.core import Identity, Rendered, Scene, SubjectWorld


@dataclass
class PairBatch:
    """n pairs; images are uint8 ``[n, H, W, 3]``, masks bool ``[n, H, W]``.

    Attributes:
        reference, reference_mask: the subject's reference shot and its mask.
        prompts: what the target shows, in the world's grammar.
        target, target_mask: the subject rendered in the prompt's scene (ground truth).
        requested: ``world.requested(prompt)`` per pair.
        attributes: every attribute value the target shows (see ``SubjectWorld.attributes``).
        identities: ``Identity.key`` per pair.
        kinds: "recontext" or "property" per pair.
    """

    reference: np.ndarray
    reference_mask: np.ndarray
    prompts: list[str]
    target: np.ndarray
    target_mask: np.ndarray
    requested: list[dict[str, str]]
    attributes: list[dict[str, str]]
    identities: list[str]
    kinds: list[str]

    def __len__(self) -> int:
        return len(self.prompts)

    def tensors(self) -> dict[str, torch.Tensor]:
        """Float tensors: images ``[n, 3, H, W]`` in [0, 1], masks ``[n, 1, H, W]`` in {0, 1}."""

        def img(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(a).permute(0, 3, 1, 2).float() / 255.0

        def msk(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(a).unsqueeze(1).float()

        return {
            "reference": img(self.reference),
            "reference_mask": msk(self.reference_mask),
            "target": img(self.target),
            "target_mask": msk(self.target_mask),
        }


def sample_pair(
    world: SubjectWorld,
    identities: list[Identity],
    rng: np.random.Generator,
    property_fraction: float = 0.3,
) -> tuple[Rendered, Rendered]:
    """(reference render, target render) for a random identity of ``identities``.

    The target is a property-modification scene with probability ``property_fraction``,
    else a recontextualisation.
    """
    if not identities:
        raise ValueError("no identities to sample from")
    if not 0.0 <= property_fraction <= 1.0:
        raise ValueError(f"property_fraction must be in [0, 1], got {property_fraction}")
    ident = identities[int(rng.integers(len(identities)))]
    kind = "property" if rng.random() < property_fraction else "recontext"
    scene: Scene = world.sample_scene(ident, rng, kinds=(kind,))
    return world.reference(ident), world.render(ident, scene, rng)


def pair_batch(
    world: SubjectWorld,
    n: int,
    rng: np.random.Generator,
    property_fraction: float = 0.3,
    split: str = "train",
) -> PairBatch:
    """n random (reference, prompt, target) pairs of ``split``'s identities.

    Example::

        world = SubjectWorld(size=32, seed=0)
        batch = pair_batch(world, 64, np.random.default_rng(1))
        t = batch.tensors()   # t["reference"], t["target"]: [64, 3, 32, 32] in [0, 1]
        batch.prompts[0]      # e.g. "a striped kite in the snow"
    """
    pool = world.identities(split)
    pairs = [sample_pair(world, pool, rng, property_fraction) for _ in range(int(n))]
    refs, tgts = [p[0] for p in pairs], [p[1] for p in pairs]
    return PairBatch(
        reference=np.stack([r.image for r in refs]),
        reference_mask=np.stack([r.mask for r in refs]),
        prompts=[t.prompt for t in tgts],
        target=np.stack([t.image for t in tgts]),
        target_mask=np.stack([t.mask for t in tgts]),
        requested=[world.requested(t.prompt) for t in tgts],
        attributes=[dict(t.attributes) for t in tgts],
        identities=[t.identity.key for t in tgts],
        kinds=[t.scene.kind for t in tgts],
    )
