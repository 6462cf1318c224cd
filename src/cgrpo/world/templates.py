"""The 25 toybench prompt templates, with a ``{noun}`` placeholder.

The list mirrors DreamBench's object prompts: mostly recontextualisation (backgrounds, and
here also positions and sizes), plus property modifications that conflict with identity
(colour, pattern, shape), and one that combines both. :mod:`cgrpo.world.bench` fills them
in for every held-out identity; :meth:`cgrpo.world.core.SubjectWorld.prompt_templates`
lists them.
"""

from __future__ import annotations

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
