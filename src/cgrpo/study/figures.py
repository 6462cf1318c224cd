"""The study's pictures: the identity/prompt plane, training curves, sample grids."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cgrpo.evaluation.output.plots import PALETTE, save_figure
from cgrpo.study.analysis import ALL_KINDS, Row, StudyResults

__all__ = ["ArmStyle", "arm_styles", "comparison_grid", "curves_figure", "pareto_study_figure"]


@dataclass(frozen=True)
class ArmStyle:
    colour: str
    marker: str
    linestyle: str


MARKERS = ("o", "s", "^")
LINESTYLES = ("-", "--", ":")


def arm_styles(arms: Sequence[str]) -> dict[str, ArmStyle]:
    """One distinct look per arm: the palette's colours first, then the same colours again
    with another marker and line style, so a study with more arms than colours still tells
    every arm apart."""
    styles = {}
    for i, arm in enumerate(arms):
        cycle = (i // len(PALETTE)) % len(MARKERS)
        styles[arm] = ArmStyle(PALETTE[i % len(PALETTE)], MARKERS[cycle], LINESTYLES[cycle])
    return styles


def pareto_study_figure(
    results: StudyResults,
    change_rows: Sequence[Row],
    x: str,
    y: str,
    kinds: Sequence[str],
    path: str | Path,
) -> Path:
    """One panel per prompt kind, in changes from the untrained base (after - base, paired
    by item; :func:`cgrpo.study.analysis.change_table`): a small dot per run, each arm's
    mean change with its CI as error bars, the base at the origin. Up and right is better;
    a point left of 0 lost identity, one below 0 lost prompt following."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    styles = arm_styles(list(results.arms))
    fig = Figure(figsize=(5.2 * len(kinds), 4.6), dpi=150, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(kinds), squeeze=False)[0]
    for ax, kind in zip(axes, kinds):
        mask = results.kind_mask(kind)
        base_x, base_y = results.base[x][mask].mean(), results.base[y][mask].mean()
        ax.axhline(0.0, color="grey", linewidth=0.8, linestyle="--")
        ax.axvline(0.0, color="grey", linewidth=0.8, linestyle="--")
        ax.plot(0.0, 0.0, "*", color="black", markersize=12, label="base (no change)")
        for name, arm in results.arms.items():
            ax.scatter(
                arm.after[x][:, mask].mean(axis=1) - base_x,
                arm.after[y][:, mask].mean(axis=1) - base_y,
                s=14,
                color=styles[name].colour,
                marker=styles[name].marker,
                alpha=0.45,
                linewidths=0,
            )
        for row in change_rows:
            if row.kind != kind:
                continue
            ex, ey = row.estimates[x], row.estimates[y]
            ax.errorbar(
                ex.mean,
                ey.mean,
                xerr=[[ex.mean - ex.low], [ex.high - ex.mean]],
                yerr=[[ey.mean - ey.low], [ey.high - ey.mean]],
                fmt=styles[row.arm].marker,
                color=styles[row.arm].colour,
                capsize=3,
                markersize=7,
                label=f"{row.arm} ({row.seeds} seeds)",
            )
        ax.set_xlabel(f"change in {x} (identity)")
        ax.set_ylabel(f"change in {y} (prompt)")
        ax.set_title("all prompts" if kind == ALL_KINDS else f"{kind} prompts", fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.margins(0.15)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 5), fontsize=8,
               frameon=False)  # fmt: skip
    fig.suptitle(
        "held-out change from the base model (after - base): arm mean with 95% CI; "
        "dots: single runs",
        fontsize=10,
    )
    return save_figure(fig, path)


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or values.shape[-1] < window:
        return values
    kernel = np.ones(window) / window
    return np.stack([np.convolve(v, kernel, mode="valid") for v in np.atleast_2d(values)])


def curves_figure(
    curves: dict[str, dict[str, np.ndarray]],
    keys: Sequence[str],
    titles: Sequence[str],
    path: str | Path,
) -> Path:
    """One panel per training metric: each arm's mean over seeds (moving average over a
    tenth of the run), shaded between the lowest and highest seed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    styles = arm_styles(list(curves))
    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig = Figure(figsize=(4.6 * cols, 3.4 * rows), dpi=150, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, key, title in zip(axes, keys, titles):
        for arm, series in curves.items():
            if key not in series:
                continue
            values = series[key]
            window = max(1, values.shape[1] // 10)
            smooth = _smooth(values, window)
            steps = np.arange(smooth.shape[1]) + window  # the window's last step, 1-based
            ax.plot(
                steps,
                smooth.mean(axis=0),
                color=styles[arm].colour,
                linestyle=styles[arm].linestyle,
                label=arm,
                linewidth=1.4,
            )
            if smooth.shape[0] > 1:
                ax.fill_between(steps, smooth.min(axis=0), smooth.max(axis=0),
                                color=styles[arm].colour, alpha=0.15, linewidth=0)  # fmt: skip
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("training step")
        ax.grid(True, alpha=0.3)
    for ax in axes[len(keys) :]:
        ax.set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 4), fontsize=8,
               frameon=False)  # fmt: skip
    return save_figure(fig, path)


def comparison_grid(
    results: StudyResults,
    columns: Sequence[tuple[str, Path | None]],
    items: Sequence[int],
    label_metrics: Sequence[str],
    path: str | Path,
) -> Path:
    """Rows: held-out items; columns: reference, then each ``(label, run_dir)`` (None = the
    untrained base), read from the runs' saved held-out images."""
    from cgrpo.data.base import load_image
    from cgrpo.evaluation.heldout import load_held_out
    from cgrpo.evaluation.output.plots import group_grid

    first_dir = next(iter(next(iter(results.run_dirs.values())).values()))
    base = load_held_out(first_dir).before
    held = {label: (load_held_out(d).after, d) for label, d in columns if d is not None}
    references, images, labels = [], [], []
    for i in items:
        key = results.keys[i]
        subject = results.clusters[i]
        references.append(
            load_image(first_dir / "heldout" / "before" / "references" / f"{subject}.png")
        )
        for label, d in columns:
            records, folder = (base, first_dir / "heldout" / "before") if d is None else (
                held[label][0], held[label][1] / "heldout" / "after")  # fmt: skip
            record = next(r for r in records if r["key"] == key)
            images.append(load_image(folder / record["image"]))
            scores = " ".join(
                f"{m.split('-')[-1][:6]} {record['scores'][m]:.2f}" for m in label_metrics
            )
            labels.append(f"{label}\n{scores}")
    grid = group_grid(
        references,
        _stack(images),
        len(columns),
        [results_prompt(base, results.keys[i]) for i in items],
        labels,
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path


def results_prompt(records: Sequence[dict], key: str) -> str:
    return str(next(r for r in records if r["key"] == key).get("prompt", key))


def _stack(images):
    import torch

    size = max(im.shape[-1] for im in images)
    out = []
    for im in images:
        if im.shape[-1] != size:
            im = torch.nn.functional.interpolate(im[None], size=(size, size), mode="nearest")[0]
        out.append(im)
    return torch.stack(out)
