"""Figures: the identity-vs-prompt Pareto plot (matplotlib, Agg) and image grids.

Image grids: per subject (reference | generations with prompt labels, for reports) and per
group (:func:`group_grid`: reference | a group's samples with their rewards, for training's
sample grids, the held-out before/after grid, pre-flight and the study).

Both return objects (a matplotlib ``Figure``, a PIL image) so tests and notebooks can
inspect them; ``save_*`` helpers write PNGs. Nothing here touches pyplot's global state.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cgrpo.evaluation.stats.bootstrap import Estimate

if TYPE_CHECKING:
    import torch
    from matplotlib.figure import Figure
    from PIL import Image

# Colour-blind-safe palette (Okabe-Ito), used by the plot and the HTML report alike.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")


@dataclass(frozen=True)
class ParetoPoint:
    """One run on the identity/prompt plane: ``x`` and ``y`` estimates with intervals."""

    label: str
    x: Estimate
    y: Estimate


def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """Mask of non-dominated points (higher is better on both axes).

    A point is dominated when another is >= on both coordinates and > on at least one.
    """
    mask = []
    for i, (xi, yi) in enumerate(points):
        dominated = any(
            (xj >= xi and yj >= yi) and (xj > xi or yj > yi)
            for j, (xj, yj) in enumerate(points)
            if j != i
        )
        mask.append(not dominated)
    return mask


def pareto_figure(
    points: Sequence[ParetoPoint],
    x_label: str,
    y_label: str,
    title: str = "",
    extra: Sequence[ParetoPoint] = (),
) -> Figure:
    """Scatter of runs with CI error bars; the Pareto front is joined by a dashed line.

    ``extra`` points (e.g. one run's prompt kinds) are drawn as small hollow markers and
    take no part in the front. Points with NaN estimates are left out (a missing metric).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.6), dpi=150, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    shown = [p for p in points if not (math.isnan(p.x.mean) or math.isnan(p.y.mean))]
    for i, p in enumerate(shown):
        color = PALETTE[i % len(PALETTE)]
        ax.errorbar(
            p.x.mean,
            p.y.mean,
            xerr=[[p.x.mean - p.x.low], [p.x.high - p.x.mean]],
            yerr=[[p.y.mean - p.y.low], [p.y.high - p.y.mean]],
            fmt="o",
            color=color,
            ecolor=color,
            elinewidth=1.2,
            capsize=3,
            markersize=7,
            label=p.label,
        )
    for p in extra:
        if math.isnan(p.x.mean) or math.isnan(p.y.mean):
            continue
        ax.plot(
            p.x.mean, p.y.mean, "o", markerfacecolor="none", markeredgecolor="#777777", markersize=6
        )
        ax.annotate(
            p.label,
            (p.x.mean, p.y.mean),
            textcoords="offset points",
            xytext=(5, -10),
            fontsize=7,
            color="#555555",
        )
    if len(shown) > 1:
        front = [
            p for p, keep in zip(shown, pareto_front([(p.x.mean, p.y.mean) for p in shown])) if keep
        ]
        front.sort(key=lambda p: p.x.mean)
        ax.plot(
            [p.x.mean for p in front],
            [p.y.mean for p in front],
            "--",
            color="#888888",
            linewidth=1,
            zorder=0,
        )
    if shown:
        # Below the axes, so close runs (a base and its fine-tune) never hide each other's labels.
        fig.legend(loc="outside lower center", ncols=min(len(shown), 3), fontsize=8, frameon=False)
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.set_title(title or f"{y_label} vs {x_label} (mean, 95% CI)", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.margins(0.15)
    return fig


def save_figure(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, facecolor="white")
    return path


# ----- image grids -----------------------------------------------------------------------------


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def _fit(image: Image.Image, size: int) -> Image.Image:
    """``image`` scaled to fit a ``size`` square, centred on white (aspect kept)."""
    from PIL import Image as PILImage

    im = image.convert("RGB")
    scale = size / max(im.size)
    # Small images (the toy world's 32 px) are blown up with visible pixels, not blurred.
    method = PILImage.Resampling.NEAREST if scale >= 2 else PILImage.Resampling.LANCZOS
    im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), method)
    canvas = PILImage.new("RGB", (size, size), "white")
    canvas.paste(im, ((size - im.width) // 2, (size - im.height) // 2))
    return canvas


def image_grid(
    reference: Image.Image,
    cells: Sequence[tuple[Image.Image, str]],
    *,
    title: str = "",
    cell: int = 160,
    columns: int = 5,
    label_lines: int = 3,
) -> Image.Image:
    """A labelled grid: the reference on the left, generations in ``columns`` columns.

    Args:
        reference: the subject's reference image (drawn with a coloured frame).
        cells: ``(generated image, label)`` pairs, e.g. labelled with the prompt.
        title: drawn across the top.
        cell: side of each square thumbnail in pixels.
        columns: generations per row.
        label_lines: lines of wrapped label text under each thumbnail.
    """
    from PIL import Image as PILImage
    from PIL import ImageDraw

    pad, font_size = 8, max(10, cell // 13)
    font, title_font = _font(font_size), _font(font_size + 4)
    line_h = font_size + 3
    label_h = label_lines * line_h + 4
    title_h = (font_size + 4) + 2 * pad if title else pad
    rows = max(1, math.ceil(len(cells) / columns))
    width = pad + (cell + pad) * (columns + 1) + pad  # +1: the reference column (with a gap)
    height = title_h + rows * (cell + label_h + pad) + pad
    grid = PILImage.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(grid)
    if title:
        draw.text((pad, pad), title, fill="#222222", font=title_font)
    chars = max(8, int(cell / (font_size * 0.55)))

    def put(image: Image.Image, label: str, x: int, y: int, frame: str | None = None) -> None:
        grid.paste(_fit(image, cell), (x, y))
        if frame:
            draw.rectangle([x - 2, y - 2, x + cell + 1, y + cell + 1], outline=frame, width=3)
        lines = textwrap.wrap(label, chars)[:label_lines]
        for k, text in enumerate(lines):
            draw.text((x, y + cell + 3 + k * line_h), text, fill="#333333", font=font)

    put(reference, "reference", pad, title_h, frame=PALETTE[0])
    x0 = pad + cell + 2 * pad
    for i, (image, label) in enumerate(cells):
        r, c = divmod(i, columns)
        put(image, label, x0 + c * (cell + pad), title_h + r * (cell + label_h + pad))
    return grid


def to_pil(image: torch.Tensor, scale: int = 1):
    """``[3, H, W]`` float in [0, 1] -> PIL image, optionally upscaled (nearest)."""
    from PIL import Image

    arr = (image.detach().float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    pil = Image.fromarray(arr)
    if scale > 1:
        pil = pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST)
    return pil


def group_grid(
    references: Sequence[torch.Tensor],
    images: torch.Tensor,
    group_size: int,
    prompts: Sequence[str],
    labels: Sequence[str],
    cell: int = 96,
):
    """A grid with one row per group: reference | G generations, captions under each cell.

    ``references`` has one ``[3, h, w]`` image per group; ``images`` is ``[n*G, 3, H, W]``;
    ``labels`` has one caption per generated image (e.g. its reward values).
    """
    from PIL import Image, ImageDraw

    n_groups = len(references)
    text_h = 24
    width = cell * (group_size + 1)
    height = n_groups * (cell + text_h + 14)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for g in range(n_groups):
        y = g * (cell + text_h + 14)
        draw.text((2, y), prompts[g][: width // 6], fill="black")
        y += 12
        canvas.paste(to_pil(references[g]).resize((cell, cell)), (0, y))
        draw.text((2, y + cell + 1), "reference", fill="black")
        for j in range(group_size):
            k = g * group_size + j
            canvas.paste(to_pil(images[k]).resize((cell, cell)), ((j + 1) * cell, y))
            for line_no, line in enumerate(labels[k].split("\n")[:2]):
                draw.text(((j + 1) * cell + 2, y + cell + 1 + 11 * line_no), line, fill="black")
    return canvas


__all__ = [
    "PALETTE",
    "ParetoPoint",
    "group_grid",
    "image_grid",
    "pareto_figure",
    "pareto_front",
    "save_figure",
    "to_pil",
]
