"""toybench: the toy world's DreamBench - held-out identities x 25 fixed prompts.

The prompts are :data:`cgrpo.world.templates.TEMPLATES`, which mirror DreamBench's object
prompts: mostly recontextualisation (backgrounds, and here also positions and sizes), plus
property modifications that conflict with identity (colour, pattern, shape), and one that
combines both.
"""

from __future__ import annotations

from dataclasses import dataclass

from cgrpo.world.core import Identity, Scene, SubjectWorld
from cgrpo.world.templates import TEMPLATES


@dataclass(frozen=True)
class BenchItem:
    """One toybench case: ``identity`` with template ``prompt_index`` (0-24) filled in."""

    identity: Identity
    prompt_index: int
    prompt: str
    scene: Scene
    kind: str


def toybench(world: SubjectWorld) -> list[BenchItem]:
    """Every held-out identity with every template, identity-major (n_heldout x 25 items)."""
    items = []
    for ident in world.identities("heldout"):
        for i, template in enumerate(TEMPLATES):
            prompt = template.format(noun=ident.noun)
            scene = world.scene_from_prompt(ident, prompt)
            items.append(BenchItem(ident, i, prompt, scene, scene.kind))
    return items
