"""Build report files from saved per-pair results, for one run or several.

``build_report`` writes into one folder:

* ``summary.json`` / ``summary.md`` -- overall means with bootstrap CIs, per prompt kind,
  per subject (for several runs: one section per run plus a side-by-side table);
* ``per_kind.csv`` / ``per_subject.csv`` (one run) or ``runs/<label>/...`` (several);
* ``pareto.png`` -- identity metric vs prompt metric, one labelled point per run with CI
  error bars (one run: its prompt kinds are shown as hollow markers);
* ``grids/[<label>/]<subject>.png`` -- reference | generations with prompt labels;
* ``report.html`` -- a static page (inline CSS, no scripts, relative image paths or, with
  ``embed_images``, base64 images) that opens offline.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cgrpo.evaluation.output.html import render_report
from cgrpo.evaluation.output.plots import ParetoPoint, image_grid, pareto_figure, save_figure
from cgrpo.evaluation.output.runs import RunResults, load_run
from cgrpo.evaluation.results import resolve_image
from cgrpo.evaluation.stats.bootstrap import DEFAULT_RESAMPLES, Estimate
from cgrpo.evaluation.stats.scales import metric_label
from cgrpo.evaluation.stats.tables import summary_markdown, write_summary_files

IDENTITY_PREFERENCE = ("dino-seg", "dino", "clip-i", "toy-id", "gt-colour")
"""Default x axis of the Pareto plot: the first of these a run has."""
PROMPT_PREFERENCE = ("hpsv3", "clip-t", "toy-prompt", "gt-scene")
"""Default y axis of the Pareto plot: the first of these a run has."""


def choose_axes(
    metrics: Sequence[str], x: str | None = None, y: str | None = None
) -> tuple[str, str]:
    """(identity metric, prompt metric) for the Pareto plot; explicit names win.

    Falls back to the first two metrics when none of the preferred names is present.
    """
    metrics = list(metrics)
    for name, given in (("--x-metric", x), ("--y-metric", y)):
        if given is not None and given not in metrics:
            raise ValueError(f"{name} {given!r} is not a scored metric; have {', '.join(metrics)}")
    if x is None:
        x = next((m for m in IDENTITY_PREFERENCE if m in metrics), None)
    if y is None:
        y = next((m for m in PROMPT_PREFERENCE if m in metrics and m != x), None)
    rest = [m for m in metrics if m not in (x, y)]
    if x is None:
        x = rest.pop(0) if rest else None
    if y is None:
        y = rest.pop(0) if rest else None
    if x is None or y is None:
        raise ValueError(f"a Pareto plot needs two metrics; the runs share only {metrics}")
    return x, y


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "run"


def _open_image(path: Path):
    import numpy as np
    from PIL import Image

    from cgrpo.image_io import read_image

    pixels = read_image(path, "image")
    return Image.fromarray(np.round(pixels * 255).astype(np.uint8))


def reference_image(run: RunResults, subject: str, records: Sequence[dict[str, Any]]):
    """The subject's reference: the saved copy, else the record's path, else a grey square."""
    from PIL import Image

    saved = run.directory / "references" / f"{subject}.png"
    if saved.is_file():
        return _open_image(saved)
    for r in records:
        first = str(r.get("reference", "")).split(";")[0]
        if first and resolve_image(run.directory, first).is_file():
            return _open_image(resolve_image(run.directory, first))
    return Image.new("RGB", (64, 64), (200, 200, 200))


def write_grids(
    run: RunResults, out_dir: str | Path, *, seed: int = 0, cell: int = 160, columns: int = 5
) -> dict[str, Path]:
    """One PNG per subject: reference | generations of seed ``seed`` (or its lowest seed).

    Returns ``{subject: path}``. Labels are ``<prompt_index>: <prompt>``.
    """
    out_dir = Path(out_dir)
    by_subject: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in run.records:
        by_subject[r["subject"]].append(r)
    paths = {}
    for subject, records in sorted(by_subject.items()):
        chosen: dict[int, dict[str, Any]] = {}
        for r in sorted(records, key=lambda r: (r["seed"] != seed, r["seed"])):
            chosen.setdefault(int(r["prompt_index"]), r)
        cells = []
        for index in sorted(chosen):
            r = chosen[index]
            path = resolve_image(run.directory, r["image"])
            if path.is_file():
                cells.append((_open_image(path), f"{index}: {r['prompt']}"))
        if not cells:
            continue
        grid = image_grid(
            reference_image(run, subject, records), cells, title=subject, cell=cell, columns=columns
        )
        paths[subject] = out_dir / f"{_safe(subject)}.png"
        paths[subject].parent.mkdir(parents=True, exist_ok=True)
        grid.save(paths[subject])
    return paths


def pareto_points(runs: Sequence[RunResults], x: str, y: str) -> list[ParetoPoint]:
    return [
        ParetoPoint(r.label, r.summary.overall.get(x, _nan()), r.summary.overall.get(y, _nan()))
        for r in runs
    ]


def _nan() -> Estimate:
    return Estimate(math.nan, math.nan, math.nan, 0)


def comparison_markdown(runs: Sequence[RunResults], metrics: Sequence[str]) -> str:
    """Side-by-side overall table (rows: runs; cells: mean [CI])."""
    header = ["run", "pairs", *map(metric_label, metrics)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in runs:
        cells = [
            r.summary.overall[m].format() if m in r.summary.overall else "n/a" for m in metrics
        ]
        lines.append("| " + " | ".join([r.label, str(r.summary.n_pairs), *cells]) + " |")
    return "\n".join(lines)


def build_report(
    runs: Sequence[RunResults],
    out_dir: str | Path,
    *,
    x_metric: str | None = None,
    y_metric: str | None = None,
    title: str | None = None,
    grids: bool = True,
    grid_seed: int = 0,
    embed_images: bool = False,
    intro_html: str = "",
) -> dict[str, Path]:
    """Write every report file for ``runs`` into ``out_dir`` (see module docstring).

    Returns the paths written, by name (``summary_json``, ``pareto``, ``html``, ...).
    """
    if not runs:
        raise ValueError("build_report needs at least one run")
    labels = [r.label for r in runs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"run labels must be unique, got {labels}; pass --labels")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    metrics: list[str] = []
    for r in runs:
        metrics += [m for m in r.metrics if m not in metrics]
    shared = [m for m in metrics if all(m in r.metrics for r in runs)]
    title = title or (
        "Evaluation: " + runs[0].label if len(runs) == 1 else f"Evaluation: {len(runs)} runs"
    )

    if len(runs) == 1:
        run = runs[0]
        written = write_summary_files(
            run.summary, out_dir, title, extra={"run": run.label, "settings": run.meta}
        )
        files.update(
            {f"summary_{k}" if k in ("json", "markdown") else k: v for k, v in written.items()}
        )
    else:
        for run in runs:
            write_summary_files(
                run.summary,
                out_dir / "runs" / _safe(run.label),
                f"Evaluation: {run.label}",
                extra={"run": run.label, "settings": run.meta},
            )
        files["summary_json"] = out_dir / "summary.json"
        files["summary_json"].write_text(
            json.dumps(
                {
                    "runs": {
                        r.label: {"directory": str(r.directory), **r.summary.to_dict()}
                        for r in runs
                    },
                },
                indent=2,
            )
            + "\n",
            encoding="utf-8",
        )
        files["summary_markdown"] = out_dir / "summary.md"
        files["summary_markdown"].write_text(
            f"# {title}\n\n## Overall (mean [95% CI] over pairs)\n\n"
            + comparison_markdown(runs, metrics)
            + "\n\n"
            + "\n".join(summary_markdown(r.summary, r.label, level=2) for r in runs),
            encoding="utf-8",
        )

    axes: tuple[str, str] | None = None
    try:
        axes = choose_axes(shared, x_metric, y_metric)
    except ValueError:
        if x_metric or y_metric:
            raise
    if axes is not None:
        points = pareto_points(runs, *axes)
        extra = []
        if len(runs) == 1:
            extra = [
                ParetoPoint(kind, ests[axes[0]], ests[axes[1]])
                for kind, ests in runs[0].summary.by_kind.items()
                if kind
            ]
        fig = pareto_figure(points, metric_label(axes[0]), metric_label(axes[1]), extra=extra)
        files["pareto"] = save_figure(fig, out_dir / "pareto.png")

    grid_paths: dict[str, dict[str, Path]] = {}
    if grids:
        for run in runs:
            where = out_dir / "grids" if len(runs) == 1 else out_dir / "grids" / _safe(run.label)
            grid_paths[run.label] = write_grids(run, where, seed=grid_seed)
    html = render_report(
        runs,
        out_dir,
        title=title,
        metrics=metrics,
        axes=axes,
        pareto=files.get("pareto"),
        grids=grid_paths,
        embed_images=embed_images,
        intro_html=intro_html,
    )
    files["html"] = out_dir / "report.html"
    files["html"].write_text(html, encoding="utf-8")
    return files


def report_runs(
    paths: Sequence[str | Path],
    out_dir: str | Path,
    *,
    labels: Sequence[str] | None = None,
    resamples: int = DEFAULT_RESAMPLES,
    ci_seed: int = 0,
    **options: Any,
) -> tuple[list[RunResults], dict[str, Path]]:
    """Load the evaluation folders ``paths`` and write their report into ``out_dir``.

    ``labels``: display names, one per path; ``options``: :func:`build_report` keywords.
    Returns the loaded runs and the files written.
    """
    if labels is not None and len(labels) != len(paths):
        raise ValueError(f"give one label per run ({len(paths)}), got {len(labels)}")
    runs = [
        load_run(p, labels[i] if labels else None, resamples=resamples, seed=ci_seed)
        for i, p in enumerate(paths)
    ]
    return runs, build_report(runs, out_dir, **options)


__all__ = [
    "IDENTITY_PREFERENCE",
    "PROMPT_PREFERENCE",
    "build_report",
    "choose_axes",
    "comparison_markdown",
    "pareto_points",
    "report_runs",
    "write_grids",
]
