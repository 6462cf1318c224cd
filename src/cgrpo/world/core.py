"""The procedural subject world: identities, scenes, renders and the prompt grammar.

A subject's *identity* is (shape, surface pattern, palette). A *scene* places it on a
background at a position and size, and may override palette, pattern or shape (a property
modification, which conflicts with identity on purpose, like DreamBench's "a red X").
Every scene has one natural-language prompt and every prompt of the grammar parses back
into the attributes it asks for, so rewards can be checked against ground truth.

Grammar (one optional word or phrase per slot, in this order)::

    a|an [small|big] [<colour>] [plain|striped|dotted|checkered] [<shape> shaped] <noun>
         [<background phrase>] [<position phrase>]

Attributes a prompt leaves unsaid take their defaults (plain background, center, medium).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from cgrpo.world.draw import paint_background, paint_subject
from cgrpo.world.templates import TEMPLATES
from cgrpo.world.vocab import (
    BACKGROUND_PHRASES,
    COLOURS,
    DEFAULTS,
    NOUN_SHAPES,
    PALETTES,
    PATTERNS,
    POSITIONS,
    SCENE_BACKGROUNDS,
    SHAPE_NOUNS,
    SHAPES,
    SIZES,
)

KINDS = ("recontext", "property")
SPLITS = ("train", "heldout", "all")


@dataclass(frozen=True)
class Identity:
    """A subject: shape x surface pattern x palette; ``noun`` is its class word in prompts."""

    index: int
    shape: str
    pattern: str
    palette: str

    @property
    def noun(self) -> str:
        return SHAPE_NOUNS[self.shape]

    @property
    def key(self) -> str:
        """Stable name, e.g. ``"round-striped-red"`` (independent of seed and split)."""
        return f"{self.shape}-{self.pattern}-{self.palette}"


@dataclass(frozen=True)
class Scene:
    """How one image of a subject is staged, and the prompt that asks for it.

    ``kind`` is "recontext" (background/position/size only), "property" (overrides an
    identity attribute) or "reference" (the neutral reference shot).
    ``overrides`` holds ``(attribute, value)`` pairs with attribute in palette/pattern/shape.
    """

    kind: str
    background: str
    position: str
    size: str
    overrides: tuple[tuple[str, str], ...]
    prompt: str

    @classmethod
    def from_dict(cls, data: dict) -> Scene:
        """Inverse of :meth:`to_dict` (e.g. from an Example's ``metadata["scene"]``)."""
        return cls(
            kind=data["kind"],
            background=data["background"],
            position=data["position"],
            size=data["size"],
            overrides=tuple(dict(data["overrides"]).items()),
            prompt=data["prompt"],
        )

    def to_dict(self) -> dict:
        """Plain JSON-safe form."""
        return {
            "kind": self.kind,
            "background": self.background,
            "position": self.position,
            "size": self.size,
            "overrides": dict(self.overrides),
            "prompt": self.prompt,
        }


@dataclass
class Rendered:
    """One image with its ground truth.

    Attributes:
        image: ``[H, W, 3]`` uint8 RGB.
        mask: ``[H, W]`` bool, True on subject pixels.
        identity, scene, prompt: what was drawn and the text that asks for it.
        attributes: the attribute values actually shown (identity with overrides applied,
            plus background/position/size).
    """

    image: np.ndarray
    mask: np.ndarray
    identity: Identity
    scene: Scene
    prompt: str
    attributes: dict[str, str] = field(default_factory=dict)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def make_prompt(
    noun: str,
    background: str = "plain",
    position: str = "center",
    size: str = "medium",
    overrides: Sequence[tuple[str, str]] = (),
) -> str:
    """The grammar's prompt for these attributes; defaults are left unsaid."""
    over = dict(overrides)
    words = []
    if size != DEFAULTS["size"]:
        words.append(SIZES[size][0])
    if "palette" in over:
        words.append(over["palette"])
    if "pattern" in over:
        words.append(over["pattern"])
    if "shape" in over:
        words += [over["shape"], "shaped"]
    words.append(noun)
    if background != DEFAULTS["background"]:
        words.append(BACKGROUND_PHRASES[background])
    if position != DEFAULTS["position"]:
        words.append(POSITIONS[position][0])
    return " ".join([_article(words[0]), *words])


_SIZE_WORDS = {adj: name for name, (adj, _) in SIZES.items() if adj}
_POSITION_PHRASES = {phrase: name for name, (phrase, _) in POSITIONS.items()}
_BACKGROUND_BY_PHRASE = {phrase: name for name, phrase in BACKGROUND_PHRASES.items()}


def parse_prompt(prompt: str) -> dict[str, str]:
    """Attributes a prompt of the grammar asks for (see module docstring).

    Returns a dict with ``"noun"`` and any of background, position, size, palette, pattern,
    shape. Raises ValueError naming the prompt if it is not in the grammar.
    """

    def fail(why: str) -> ValueError:
        return ValueError(f"prompt {prompt!r} is not in the toy world's grammar: {why}")

    text = " ".join(str(prompt).lower().strip().rstrip(".").split())
    tokens = text.split(" ")
    if len(tokens) < 2 or tokens[0] not in ("a", "an"):
        raise fail("it must start with 'a' or 'an' followed by the subject")
    out: dict[str, str] = {}

    def put(key: str, value: str) -> None:
        if key in out:
            raise fail(f"it names the {key} twice")
        out[key] = value

    i = 1
    while i < len(tokens):
        tok = tokens[i]
        # "<shape> shaped" first: some shape names are also nouns ("a vase shaped tent").
        if tok in SHAPES and i + 1 < len(tokens) and tokens[i + 1] == "shaped":
            put("shape", tok)
            i += 2
            continue
        if tok in NOUN_SHAPES:
            break
        if tok in _SIZE_WORDS:
            put("size", _SIZE_WORDS[tok])
        elif tok in COLOURS:
            put("palette", tok)
        elif tok in PATTERNS:
            put("pattern", tok)
        else:
            raise fail(f"unknown word {tok!r} before the subject noun")
        i += 1
    if i == len(tokens):
        raise fail(f"no subject noun (one of {', '.join(NOUN_SHAPES)})")
    out["noun"] = tokens[i]
    rest = " ".join(tokens[i + 1 :])
    for phrase, name in _POSITION_PHRASES.items():
        if rest == phrase or rest.endswith(" " + phrase):
            out["position"] = name
            rest = rest[: len(rest) - len(phrase)].strip()
            break
    if rest:
        if rest not in _BACKGROUND_BY_PHRASE:
            raise fail(f"unknown phrase {rest!r} after the subject noun")
        out["background"] = _BACKGROUND_BY_PHRASE[rest]
    return out


class SubjectWorld:
    """A deterministic procedural world of subjects, scenes and prompts.

    Args:
        size: image side in pixels (32 by default; 64 draws the same world finer).
        seed: fixes the train/held-out identity split.
        heldout_fraction: share of identities kept out of training (for evaluation).
    """

    def __init__(self, size: int = 32, seed: int = 0, heldout_fraction: float = 0.2) -> None:
        if size < 16:
            raise ValueError(f"world size must be >= 16 pixels, got {size}")
        if not 0.0 < heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
        self.size = int(size)
        self.seed = int(seed)
        combos = itertools.product(SHAPES, PATTERNS, PALETTES)
        self._all = [Identity(i, s, p, c) for i, (s, p, c) in enumerate(combos)]
        self._by_key = {ident.key: ident for ident in self._all}
        order = np.random.default_rng(self.seed).permutation(len(self._all))
        n_held = int(round(heldout_fraction * len(self._all)))
        held = set(order[:n_held].tolist())
        self._split = {
            "train": [x for x in self._all if x.index not in held],
            "heldout": [x for x in self._all if x.index in held],
            "all": list(self._all),
        }
        self._references: dict[str, Rendered] = {}

    # --- identities -----------------------------------------------------------------------

    def identities(self, split: str = "all") -> list[Identity]:
        """Identities of ``split`` ("train", "heldout" or "all"), in index order."""
        if split not in self._split:
            raise ValueError(f"unknown identity split {split!r}; choose one of {SPLITS}")
        return list(self._split[split])

    def identity(self, key: str) -> Identity:
        """The identity named ``key`` (``Identity.key``)."""
        try:
            return self._by_key[key]
        except KeyError:
            raise ValueError(
                f"unknown identity key {key!r} (form: shape-pattern-palette)"
            ) from None

    # --- prompts and scenes ---------------------------------------------------------------

    @staticmethod
    def requested(prompt: str) -> dict[str, str]:
        """Attributes ``prompt`` asks for; ValueError naming the prompt if not in the grammar."""
        return parse_prompt(prompt)

    @staticmethod
    def prompt_templates() -> list[str]:
        """The 25 toybench prompts with a ``{noun}`` placeholder (see :mod:`cgrpo.world.bench`)."""
        return list(TEMPLATES)

    def scene_from_prompt(self, identity: Identity, prompt: str) -> Scene:
        """The scene a prompt asks for; unsaid attributes take their defaults.

        Raises ValueError if the prompt's noun is not ``identity``'s noun.
        """
        req = parse_prompt(prompt)
        if req["noun"] != identity.noun:
            raise ValueError(
                f"prompt {prompt!r} names a {req['noun']!r} but identity {identity.key} "
                f"is a {identity.noun!r}"
            )
        overrides = tuple((k, req[k]) for k in ("palette", "pattern", "shape") if k in req)
        return Scene(
            kind="property" if overrides else "recontext",
            background=req.get("background", DEFAULTS["background"]),
            position=req.get("position", DEFAULTS["position"]),
            size=req.get("size", DEFAULTS["size"]),
            overrides=overrides,
            prompt=prompt,
        )

    def sample_scene(
        self,
        identity: Identity,
        rng: np.random.Generator,
        kinds: Sequence[str] = KINDS,
    ) -> Scene:
        """A random scene of one of ``kinds`` (chosen uniformly).

        recontext: a background (85%), a non-centre position (35%) and/or a non-medium size
        (30%); at least one of them. property: one override of palette, pattern or shape to a
        value different from the identity's, with a background 30% of the time.
        """
        kinds = tuple(kinds)
        bad = [k for k in kinds if k not in KINDS]
        if not kinds or bad:
            raise ValueError(f"kinds must be a non-empty subset of {KINDS}, got {kinds}")
        kind = kinds[int(rng.integers(len(kinds)))]
        background, position, size = DEFAULTS["background"], "center", "medium"
        overrides: tuple[tuple[str, str], ...] = ()
        if kind == "recontext":
            while (background, position, size) == ("plain", "center", "medium"):
                if rng.random() < 0.85:
                    background = _choice(rng, SCENE_BACKGROUNDS)
                if rng.random() < 0.35:
                    position = _choice(rng, [p for p in POSITIONS if p != "center"])
                if rng.random() < 0.3:
                    size = _choice(rng, ["small", "big"])
        else:
            attr = _choice(rng, ("palette", "pattern", "shape"))
            values = {"palette": PALETTES, "pattern": PATTERNS, "shape": SHAPES}[attr]
            own = getattr(identity, attr)
            overrides = ((attr, _choice(rng, [v for v in values if v != own])),)
            if rng.random() < 0.3:
                background = _choice(rng, SCENE_BACKGROUNDS)
        prompt = make_prompt(identity.noun, background, position, size, overrides)
        return Scene(kind, background, position, size, overrides, prompt)

    # --- rendering ------------------------------------------------------------------------

    @staticmethod
    def attributes(identity: Identity, scene: Scene) -> dict[str, str]:
        """Attribute values an image of ``identity`` in ``scene`` shows."""
        out = {
            "background": scene.background,
            "position": scene.position,
            "size": scene.size,
            "palette": identity.palette,
            "pattern": identity.pattern,
            "shape": identity.shape,
        }
        out.update(dict(scene.overrides))
        return out

    def reference(self, identity: Identity) -> Rendered:
        """The reference shot: centred, medium size, plain backdrop, no jitter."""
        cached = self._references.get(identity.key)
        if cached is None:
            prompt = make_prompt(identity.noun)
            scene = Scene("reference", "plain", "center", "medium", (), prompt)
            cached = self._references[identity.key] = self._draw(identity, scene, None)
        # Copies, so a caller editing its arrays cannot change later references.
        return dataclasses.replace(
            cached,
            image=cached.image.copy(),
            mask=cached.mask.copy(),
            attributes=dict(cached.attributes),
        )

    def render(self, identity: Identity, scene: Scene, rng: np.random.Generator) -> Rendered:
        """Draw ``identity`` in ``scene`` with small random jitter (position, scale, light)."""
        return self._draw(identity, scene, rng)

    def _draw(self, identity: Identity, scene: Scene, rng: np.random.Generator | None) -> Rendered:
        attrs = self.attributes(identity, scene)
        s = self.size
        half = SIZES[attrs["size"]][1]
        jitter = rng is not None
        if jitter:
            half *= float(rng.uniform(0.93, 1.07))
        margin = 1.0 / s
        ax, ay = POSITIONS[attrs["position"]][1]
        span = 1.0 - 2.0 * (margin + half)
        cx, cy = margin + half + ax * span, margin + half + ay * span
        if jitter:
            dx, dy = rng.uniform(-1.2, 1.2, size=2) / s
            cx = float(np.clip(cx + dx, half, 1.0 - half))
            cy = float(np.clip(cy + dy, half, 1.0 - half))
        canvas = paint_background(attrs["background"], s, rng or np.random.default_rng(0))
        if jitter:
            canvas *= float(rng.uniform(0.92, 1.06))
        mask = paint_subject(
            canvas, attrs["shape"], attrs["pattern"], attrs["palette"], (cx, cy), half
        )
        image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
        return Rendered(image, mask, identity, scene, scene.prompt, attrs)


def _choice(rng: np.random.Generator, values: Sequence[str]) -> str:
    return values[int(rng.integers(len(values)))]
