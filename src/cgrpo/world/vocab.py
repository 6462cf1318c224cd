"""The toy world's vocabulary: attribute values and the words prompts use for them.

An identity is (shape, pattern, palette). A scene adds background, position and size, and
may override the identity's palette, pattern or shape (property modification). Every value
here has exactly one phrase, so prompts can be parsed back into attributes without guessing.
"""

from __future__ import annotations

# shape -> class noun used in prompts ("a ball in the snow"). Nouns are unique, so the noun
# names the identity's own shape even when the prompt asks for another ("a cube shaped ball").
SHAPE_NOUNS: dict[str, str] = {
    "round": "ball",
    "cube": "box",
    "triangle": "tent",
    "diamond": "kite",
    "star": "starfish",
    "heart": "cushion",
    "mug": "mug",
    "vase": "vase",
    "ring": "donut",
    "house": "birdhouse",
}
SHAPES: tuple[str, ...] = tuple(SHAPE_NOUNS)
NOUN_SHAPES: dict[str, str] = {noun: shape for shape, noun in SHAPE_NOUNS.items()}

PATTERNS: tuple[str, ...] = ("plain", "striped", "dotted", "checkered")

# Colour words (RGB). A palette is named by its main colour and carries a fixed secondary
# colour (stripes, dots, checks, and the rim of plain subjects).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (245, 135, 20),
    "yellow": (245, 215, 35),
    "green": (40, 160, 55),
    "blue": (40, 75, 215),
    "purple": (135, 45, 175),
    "pink": (250, 135, 195),
    "white": (250, 250, 250),
    "black": (25, 25, 25),
    "brown": (125, 75, 35),
}
PALETTE_SECONDARY: dict[str, str] = {
    "red": "white",
    "orange": "blue",
    "yellow": "purple",
    "green": "white",
    "blue": "yellow",
    "purple": "yellow",
    "pink": "green",
    "white": "red",
    "black": "orange",
    "brown": "white",
}
PALETTES: tuple[str, ...] = tuple(PALETTE_SECONDARY)

# background -> the phrase after the noun. "plain" is the neutral studio backdrop of the
# reference images; it is the default when a prompt names no background.
BACKGROUND_PHRASES: dict[str, str] = {
    "plain": "on a plain background",
    "jungle": "in the jungle",
    "snow": "in the snow",
    "beach": "on the beach",
    "cobblestone": "on a cobblestone street",
    "pink_fabric": "on top of pink fabric",
    "wood_floor": "on top of a wooden floor",
    "city": "with a city in the background",
    "mountain": "with a mountain in the background",
    "grass": "on the grass",
    "kitchen": "in a kitchen",
    "water": "floating on top of water",
    "purple_rug": "on top of a purple rug",
}
BACKGROUNDS: tuple[str, ...] = tuple(BACKGROUND_PHRASES)
SCENE_BACKGROUNDS: tuple[str, ...] = tuple(b for b in BACKGROUNDS if b != "plain")

# position -> (phrase, anchor). The anchor in [0, 1]^2 (x, y) says where the subject's box
# sits: 0 = touching the left/top margin, 1 = touching the right/bottom margin.
POSITIONS: dict[str, tuple[str, tuple[float, float]]] = {
    "center": ("in the center", (0.5, 0.5)),
    "top_left": ("in the top left corner", (0.0, 0.0)),
    "top_right": ("in the top right corner", (1.0, 0.0)),
    "bottom_left": ("in the bottom left corner", (0.0, 1.0)),
    "bottom_right": ("in the bottom right corner", (1.0, 1.0)),
    "left": ("on the left", (0.0, 0.5)),
    "right": ("on the right", (1.0, 0.5)),
}
POSITION_NAMES: tuple[str, ...] = tuple(POSITIONS)

# size -> (adjective or "" for the default, half-extent of the subject box as a fraction of
# the image side). A medium subject spans about half the image side.
SIZES: dict[str, tuple[str, float]] = {
    "small": ("small", 0.18),
    "medium": ("", 0.28),
    "big": ("big", 0.38),
}
SIZE_NAMES: tuple[str, ...] = tuple(SIZES)

DEFAULTS: dict[str, str] = {"background": "plain", "position": "center", "size": "medium"}
"""Scene attributes a prompt leaves unsaid take these values."""

OVERRIDABLE: tuple[str, ...] = ("palette", "pattern", "shape")
"""Identity attributes a property-modification prompt may change."""

ATTRIBUTE_VALUES: dict[str, tuple[str, ...]] = {
    "background": BACKGROUNDS,
    "position": POSITION_NAMES,
    "size": SIZE_NAMES,
    "palette": PALETTES,
    "pattern": PATTERNS,
    "shape": SHAPES,
}
"""Every attribute a rendered image has, with its values in a fixed order (class indices)."""
