"""Pixel drawing for the toy world: shape masks, surface patterns and backgrounds.

Everything is evaluated at pixel centres with numpy, without anti-aliasing, so a subject
pixel is either fully the subject or fully background and the mask is exact ground truth.
Shapes and patterns live in subject-local coordinates ``(u, v)`` in ``[-1, 1]^2`` (v grows
downwards), so they scale with the subject; backgrounds live in image coordinates in
``[0, 1]^2``, so they look the same at 32 and 64 pixels.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from cgrpo.world.vocab import COLOURS, PALETTE_SECONDARY

Array = np.ndarray


def _polygon(u: Array, v: Array, points: list[tuple[float, float]]) -> Array:
    """Even-odd point-in-polygon test of every ``(u, v)`` against ``points`` [(u, v), ...]."""
    inside = np.zeros(u.shape, dtype=bool)
    n = len(points)
    for i in range(n):
        (u1, v1), (u2, v2) = points[i], points[(i + 1) % n]
        crosses = (v1 > v) != (v2 > v)
        with np.errstate(divide="ignore", invalid="ignore"):
            at = u1 + (v - v1) * (u2 - u1) / (v2 - v1)
        inside ^= crosses & (u < at)
    return inside


def _star_points(spikes: int = 5, outer: float = 1.0, inner: float = 0.45):
    angles = -np.pi / 2 + np.arange(2 * spikes) * np.pi / spikes
    radii = np.where(np.arange(2 * spikes) % 2 == 0, outer, inner)
    return [(float(r * np.cos(a)), float(r * np.sin(a) + 0.08)) for r, a in zip(radii, angles)]


_STAR = _star_points()


def shape_mask(shape: str, u: Array, v: Array) -> Array:
    """Boolean mask of ``shape`` over local coordinates ``u, v`` (same shape arrays)."""
    if shape == "round":
        return u**2 + v**2 <= 0.92**2
    if shape == "cube":
        return (np.abs(u) <= 0.82) & (np.abs(v) <= 0.82)
    if shape == "triangle":
        return (v <= 0.85) & (np.abs(u) <= (v + 0.95) / 1.8 * 1.0)
    if shape == "diamond":
        return np.abs(u) / 0.85 + np.abs(v) <= 1.0
    if shape == "star":
        return _polygon(u, v, _STAR)
    if shape == "heart":
        x, y = u / 0.78, -(v - 0.05) / 0.78
        return (x**2 + y**2 - 1) ** 3 - x**2 * y**3 <= 0
    if shape == "mug":
        body = (u >= -0.85) & (u <= 0.35) & (v >= -0.72) & (v <= 0.85)
        r2 = (u - 0.38) ** 2 + (v - 0.02) ** 2
        handle = (u > 0.35) & (r2 <= 0.58**2) & (r2 >= 0.24**2)
        return body | handle
    if shape == "vase":
        belly = u**2 / 0.75**2 + (v - 0.35) ** 2 / 0.6**2 <= 1.0
        neck = (np.abs(u) <= 0.3) & (v >= -0.8) & (v <= 0.1)
        lip = (np.abs(u) <= 0.48) & (v >= -0.95) & (v <= -0.72)
        return belly | neck | lip
    if shape == "ring":
        r2 = u**2 + v**2
        return (r2 <= 0.95**2) & (r2 >= 0.42**2)
    if shape == "house":
        walls = (np.abs(u) <= 0.7) & (v >= -0.1) & (v <= 0.9)
        roof = (v >= -0.95) & (v < -0.1) & (np.abs(u) <= (v + 0.95) / 0.85 * 0.92)
        return walls | roof
    raise ValueError(f"unknown shape {shape!r}")


def pattern_mask(pattern: str, u: Array, v: Array) -> Array:
    """Where the surface shows the *secondary* colour, over local coordinates ``u, v``."""
    if pattern == "plain":
        return np.zeros(u.shape, dtype=bool)
    if pattern == "striped":
        return np.floor((v + 1.0) * 2.6).astype(int) % 2 == 1
    if pattern == "dotted":
        fu, fv = (u * 2.0 + 0.25) % 1.0 - 0.5, (v * 2.0 + 0.25) % 1.0 - 0.5
        return fu**2 + fv**2 <= 0.2**2
    if pattern == "checkered":
        return (np.floor((u + 1.0) * 2.0) + np.floor((v + 1.0) * 2.0)).astype(int) % 2 == 1
    raise ValueError(f"unknown pattern {pattern!r}")


def edge(mask: Array) -> Array:
    """Mask pixels with a 4-neighbour outside the mask (or on the image border)."""
    padded = np.pad(mask, 1, constant_values=False)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def paint_subject(
    canvas: Array,
    shape: str,
    pattern: str,
    palette: str,
    centre: tuple[float, float],
    half: float,
) -> Array:
    """Draw the subject onto ``canvas`` [S, S, 3] float in place; return its mask [S, S] bool.

    ``centre`` is (x, y) and ``half`` the half-extent of the subject box, both as fractions
    of the image side. Plain subjects get a rim in the secondary colour so every palette shows
    both of its colours; all subjects get a dark outline so they separate from any backdrop.
    """
    s = canvas.shape[0]
    grid = (np.arange(s) + 0.5) / s
    u = (grid[None, :] - centre[0]) / half
    v = (grid[:, None] - centre[1]) / half
    u, v = np.broadcast_to(u, (s, s)), np.broadcast_to(v, (s, s))
    mask = shape_mask(shape, u, v)
    main = np.array(COLOURS[palette], dtype=np.float32)
    second = np.array(COLOURS[PALETTE_SECONDARY[palette]], dtype=np.float32)
    secondary = pattern_mask(pattern, u, v)
    outline = edge(mask)
    if pattern == "plain":
        secondary = edge(mask & ~outline)
    canvas[mask] = main
    canvas[mask & secondary] = second
    canvas[outline] = _outline_colour(main)
    return mask


def _outline_colour(main: Array) -> Array:
    # Darken bright colours; very dark ones get a mid grey so the outline still shows.
    return main * 0.45 if main.mean() > 60 else np.full(3, 110.0, dtype=np.float32)


# --- backgrounds -------------------------------------------------------------------------

Background = Callable[[int, np.random.Generator], Array]


def _coords(s: int) -> tuple[Array, Array]:
    g = (np.arange(s) + 0.5) / s
    return np.broadcast_to(g[None, :], (s, s)), np.broadcast_to(g[:, None], (s, s))


def _fill(s: int, colour: tuple[int, int, int]) -> Array:
    return np.broadcast_to(np.array(colour, np.float32), (s, s, 3)).copy()


def _speckle(img: Array, rng: np.random.Generator, frac: float, colour, where=None) -> None:
    hit = rng.random(img.shape[:2]) < frac
    if where is not None:
        hit &= where
    img[hit] = colour


def _plain(s, rng):
    return _fill(s, (190, 190, 190))


def _snow(s, rng):
    x, y = _coords(s)
    horizon = 0.3 + rng.uniform(-0.04, 0.04)
    img = _fill(s, (242, 246, 252))
    img[y < horizon] = (175, 195, 225)
    _speckle(img, rng, 0.12, (255, 255, 255), y < horizon)
    _speckle(img, rng, 0.10, (205, 215, 232), y >= horizon)
    return img


def _beach(s, rng):
    x, y = _coords(s)
    h = 0.25 + rng.uniform(-0.04, 0.04)
    img = _fill(s, (236, 206, 140))
    img[y < h + 0.15] = (25, 105, 185)
    img[y < h] = (125, 195, 245)
    _speckle(img, rng, 0.08, (205, 175, 110), y >= h + 0.15)
    return img


def _jungle(s, rng):
    x, y = _coords(s)
    img = _fill(s, (18, 70, 28))
    for _ in range(14):
        cx, cy = rng.random(2)
        a, b = rng.uniform(0.08, 0.16), rng.uniform(0.03, 0.06)
        t = rng.uniform(0, np.pi)
        dx, dy = x - cx, y - cy
        p, q = dx * np.cos(t) + dy * np.sin(t), -dx * np.sin(t) + dy * np.cos(t)
        img[(p / a) ** 2 + (q / b) ** 2 <= 1] = (
            (70, 155, 45) if rng.random() < 0.6 else (35, 110, 40)
        )
    return img


def _cobblestone(s, rng):
    x, y = _coords(s)
    cell = 0.14
    row = np.floor((y + rng.uniform(0, cell)) / cell)
    col = np.floor((x + 0.5 * cell * (row % 2) + rng.uniform(0, cell)) / cell)
    shade = 105 + 30 * (((row * 7 + col * 13) % 5) / 4.0)
    img = np.repeat(shade[..., None], 3, axis=2).astype(np.float32)
    img[..., 2] += 8
    fy = ((y / cell) % 1.0 + 1.0) % 1.0
    fx = (((x + 0.5 * cell * (row % 2)) / cell) % 1.0 + 1.0) % 1.0
    gap = (np.abs(fy - 0.5) > 0.38) | (np.abs(fx - 0.5) > 0.4)
    img[gap] = (60, 60, 66)
    return img


def _pink_fabric(s, rng):
    x, y = _coords(s)
    img = _fill(s, (242, 170, 205))
    off = rng.uniform(0, 1)
    weave = np.floor((x + y) * 10 + off).astype(int) % 2 == 0
    img[weave] = (222, 140, 182)
    return img


def _wood_floor(s, rng):
    x, y = _coords(s)
    plank = 0.16
    row = np.floor((y + rng.uniform(0, plank)) / plank)
    tone = 150 + 25 * ((row * 5) % 3) / 2.0
    img = np.stack([tone, tone * 0.68, tone * 0.38], axis=-1).astype(np.float32)
    seam = ((y + 0.0) / plank % 1.0) < 0.14
    img[seam] = (85, 52, 25)
    return img


def _city(s, rng):
    x, y = _coords(s)
    img = np.stack([255 - 40 * (1 - y), 170 - 90 * (1 - y), 110 + 40 * (1 - y)], -1)
    img = img.astype(np.float32)
    left = 0.0
    while left < 1.0:
        w = rng.uniform(0.12, 0.22)
        top = rng.uniform(0.2, 0.55)
        block = (x >= left) & (x < left + w) & (y >= top)
        img[block] = (48, 46, 68)
        lit = block & ((np.floor(x * 16) + np.floor(y * 16)) % 3 == 0) & (rng.random((s, s)) < 0.7)
        img[lit] = (250, 215, 90)
        left += w + rng.uniform(0.0, 0.04)
    return img


def _mountain(s, rng):
    x, y = _coords(s)
    img = _fill(s, (140, 195, 245))
    peak_x, peak_y = rng.uniform(0.35, 0.65), rng.uniform(0.12, 0.22)
    slope = rng.uniform(1.1, 1.4)
    rock = y >= peak_y + slope * np.abs(x - peak_x)
    img[rock] = (105, 100, 115)
    img[rock & (y < peak_y + 0.16)] = (245, 245, 250)
    img[y >= 0.82] = (70, 140, 60)
    return img


def _grass(s, rng):
    x, y = _coords(s)
    h = 0.3 + rng.uniform(-0.04, 0.04)
    img = _fill(s, (75, 185, 60))
    img[y < h] = (165, 210, 250)
    blade = (y >= h) & ((np.floor(x * s) + np.floor(y * s * 0.5)) % 4 == 0)
    blade &= rng.random((s, s)) < 0.7
    img[blade] = (40, 130, 40)
    return img


def _kitchen(s, rng):
    x, y = _coords(s)
    counter = 0.62 + rng.uniform(-0.04, 0.04)
    img = _fill(s, (238, 236, 228))
    tile = 0.125
    grout = ((x / tile) % 1.0 < 0.16) | ((y / tile) % 1.0 < 0.16)
    img[grout & (y < counter)] = (150, 170, 185)
    img[y >= counter] = (85, 85, 95)
    img[(y >= counter) & (y < counter + 0.06)] = (140, 140, 150)
    return img


def _water(s, rng):
    x, y = _coords(s)
    img = _fill(s, (30, 110, 195))
    phase = rng.uniform(0, 2 * np.pi)
    crest = np.sin(x * 2 * np.pi * 2 + phase + y * 9) * 0.02
    wave = ((y + crest) * 7 % 1.0) < 0.2
    img[wave] = (120, 185, 240)
    return img


def _purple_rug(s, rng):
    x, y = _coords(s)
    img = _fill(s, (110, 55, 140))
    knot = ((np.floor(x * s) + 2 * np.floor(y * s)) % 5 == 0) & (rng.random((s, s)) < 0.8)
    img[knot] = (150, 95, 180)
    return img


BACKGROUND_PAINTERS: dict[str, Background] = {
    "plain": _plain,
    "jungle": _jungle,
    "snow": _snow,
    "beach": _beach,
    "cobblestone": _cobblestone,
    "pink_fabric": _pink_fabric,
    "wood_floor": _wood_floor,
    "city": _city,
    "mountain": _mountain,
    "grass": _grass,
    "kitchen": _kitchen,
    "water": _water,
    "purple_rug": _purple_rug,
}


def paint_background(name: str, size: int, rng: np.random.Generator) -> Array:
    """Background ``name`` as ``[size, size, 3]`` float32 in [0, 255]; texture varies with rng."""
    try:
        painter = BACKGROUND_PAINTERS[name]
    except KeyError:
        raise ValueError(
            f"unknown background {name!r}; choose one of {', '.join(BACKGROUND_PAINTERS)}"
        ) from None
    return np.ascontiguousarray(painter(size, rng), dtype=np.float32)
