"""The "toyworld" dataset: toy-world examples in the library's :class:`Example` form.

Registered in :data:`cgrpo.data.base.DATASETS`. Example ``i`` of a split is a pure function
of (seed, split, i), so every epoch, worker and resumed run sees the same items.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cgrpo.config import ConfigError, option, parse
from cgrpo.data.base import DATASETS, Example
from cgrpo.world.bench import BenchItem, toybench
from cgrpo.world.core import KINDS, Identity, Rendered, Scene, SubjectWorld

_SPLIT_IDENTITIES = {"train": "train", "heldout": "heldout", "eval": "heldout", "test": "heldout"}


@dataclass
class ToyWorldOptions:
    size: int = option(32, "image side in pixels", min=16, max=256)
    seed: int = option(0, "world seed: fixes the train/held-out identity split and the examples")
    source: str = option(
        "sampled",
        "sampled: random scenes; toybench: held-out identities x the 25 fixed prompts",
        choices=("sampled", "toybench"),
    )
    num_examples: int = option(
        1024, "examples per split for source=sampled (toybench has its own size)", min=1
    )
    kinds: list[str] = option(
        default_factory=lambda: list(KINDS), help="scene kinds to sample", choices=KINDS
    )
    property_fraction: float = option(
        0.3, "share of property-modification prompts when both kinds are allowed", min=0.0, max=1.0
    )
    identities: str = option(
        "auto",
        "identity pool; auto: train identities for split train, held-out ones otherwise",
        choices=("auto", "train", "heldout", "all"),
    )

    def validate(self, prefix: str) -> None:
        if not self.kinds:
            key = f"{prefix}.kinds" if prefix else "kinds"
            raise ConfigError(key, self.kinds, f"choose at least one of {', '.join(KINDS)}")


class ToyWorldDataset:
    """Examples with the reference shot, the prompt and plain-JSON ground truth in metadata.

    ``metadata`` holds ``identity`` (key), ``scene`` (dict), ``requested`` (what the prompt
    asks for), ``attributes`` (what the ground-truth target shows) and ``kind``.
    """

    def __init__(self, options: ToyWorldOptions, split: str) -> None:
        if split not in _SPLIT_IDENTITIES:
            raise ValueError(
                f"toyworld has no split {split!r}; choose one of {', '.join(_SPLIT_IDENTITIES)}"
            )
        self.options = options
        self.split = split
        self.world = SubjectWorld(size=options.size, seed=options.seed)
        pool = _SPLIT_IDENTITIES[split] if options.identities == "auto" else options.identities
        self.pool: list[Identity] = self.world.identities(pool)
        self._bench: list[BenchItem] | None = None
        if options.source == "toybench":
            self._bench = [b for b in toybench(self.world) if b.kind in options.kinds]

    def __len__(self) -> int:
        return len(self._bench) if self._bench is not None else self.options.num_examples

    def scene(self, index: int) -> tuple[Identity, Scene, str]:
        """(identity, scene, key) of example ``index``."""
        if not 0 <= index < len(self):
            raise IndexError(f"toyworld {self.split} index {index} out of range [0, {len(self)})")
        if self._bench is not None:
            item = self._bench[index]
            key = f"toybench/{item.identity.key}/{item.prompt_index:02d}"
            return item.identity, item.scene, key
        rng = self._rng(index)
        ident = self.pool[int(rng.integers(len(self.pool)))]
        kinds = tuple(self.options.kinds)
        if len(kinds) == 2:
            kinds = (
                ("property",) if rng.random() < self.options.property_fraction else ("recontext",)
            )
        scene = self.world.sample_scene(ident, rng, kinds=kinds)
        return ident, scene, f"toyworld/{self.split}/{index:06d}/{ident.key}"

    def target(self, index: int) -> Rendered:
        """The ground-truth render of example ``index`` (what a perfect generator would draw)."""
        ident, scene, _ = self.scene(index)
        return self.world.render(ident, scene, self._rng(index, stream=1))

    def __getitem__(self, index: int) -> Example:
        ident, scene, key = self.scene(index)
        ref = self.world.reference(ident)
        image = torch.from_numpy(ref.image).permute(2, 0, 1).float().div(255.0)
        mask = torch.from_numpy(ref.mask).float()
        metadata: dict[str, Any] = {
            "identity": ident.key,
            "scene": scene.to_dict(),
            "requested": self.world.requested(scene.prompt),
            "attributes": self.world.attributes(ident, scene),
            "kind": scene.kind,
        }
        return Example(
            prompt=scene.prompt,
            references=image[None],
            reference_masks=mask[None, None],
            metadata=metadata,
            key=key,
        )

    def _rng(self, index: int, stream: int = 0) -> np.random.Generator:
        split_id = sorted(_SPLIT_IDENTITIES).index(self.split)
        return np.random.default_rng([self.options.seed, split_id, index, stream])


@DATASETS.register("toyworld")
def build_toyworld(options: dict[str, Any], split: str) -> ToyWorldDataset:
    """Factory for the dataset registry; ``options`` are :class:`ToyWorldOptions` fields."""
    return ToyWorldDataset(parse(ToyWorldOptions, options, prefix="data.options"), split)
