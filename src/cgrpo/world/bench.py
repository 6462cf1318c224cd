"""toybench: the toy world's DreamBench - held-out identities x 25 fixed prompts.

The prompt list mirrors DreamBench's object prompts: mostly recontextualisation
(backgrounds, and here also positions and sizes), plus property modifications that
conflict with identity (colour, pattern, shape), and one that combines both.
"""

from __future__ import annotations

from dataclasses import dataclass

from cgrpo.world.core import Identity, Scene, SubjectWorld

TEMPLATES: tuple[str, ...] = (
    # recontextualisation: backgrounds (12)
    "a {noun} in the jungle",
    "a {noun} in the snow",
    "a {noun} on the beach",
    "a {noun} on a cobblestone street",
    "a {noun} on top of pink fabric",
    "a {noun} on top of a wooden floor",
    "a {noun} with a city in the background",
    "a {noun} with a mountain in the background",
    "a {noun} on the grass",
    "a {noun} in a kitchen",
    "a {noun} floating on top of water",
    "a {noun} on top of a purple rug",
    # recontextualisation: position (3) and size (2)
    "a {noun} in the top left corner",
    "a {noun} in the bottom right corner",
    "a small {noun} on the left",
    "a small {noun}",
    "a big {noun}",
    # property modification: colour (3), pattern (2), shape (2), combined (1)
    "a red {noun}",
    "a purple {noun}",
    "a yellow {noun}",
    "a striped {noun}",
    "a dotted {noun}",
    "a cube shaped {noun}",
    "a star shaped {noun}",
    "a red {noun} on the beach",
)


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
