"""A procedural subject world (numpy/PIL) to develop and test subject-driven RL cheaply.

Identities are shape x pattern x palette; scenes add backgrounds, positions, sizes and
property modifications; every render keeps its ground truth (identity, scene, mask) and
every prompt parses back into the attributes it requests. ``toybench`` is the world's
DreamBench (held-out identities x 25 prompts).
"""

from cgrpo.world.bench import BenchItem, toybench
from cgrpo.world.core import (
    KINDS,
    Identity,
    Rendered,
    Scene,
    SubjectWorld,
    make_prompt,
    parse_prompt,
)
from cgrpo.world.pairs import PairBatch, pair_batch, sample_pair
from cgrpo.world.templates import TEMPLATES

__all__ = [
    "KINDS",
    "TEMPLATES",
    "BenchItem",
    "Identity",
    "PairBatch",
    "Rendered",
    "Scene",
    "SubjectWorld",
    "make_prompt",
    "pair_batch",
    "parse_prompt",
    "sample_pair",
    "toybench",
]
