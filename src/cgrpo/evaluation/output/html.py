"""The static, offline ``report.html``: inline CSS, no scripts, no external resources.

Images are referenced by paths relative to the report (so the folder can be zipped and
moved) or, with ``embed_images``, inlined as base64 so the page is a single file.
"""

from __future__ import annotations

import base64
import datetime as _dt
import math
import os
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cgrpo.evaluation.output.plots import PALETTE
from cgrpo.evaluation.stats.bootstrap import Estimate, auto_digits
from cgrpo.evaluation.stats.scales import metric_label

if TYPE_CHECKING:
    from cgrpo.evaluation.output.runs import RunResults

CSS = """
:root { --ink: #1f2933; --muted: #616e7c; --line: #e4e7eb; --bg: #f5f7fa; --card: #ffffff;
        --accent: #0072B2; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
       sans-serif; color: var(--ink); background: var(--bg); }
header { background: #102a43; color: #f0f4f8; padding: 22px 32px 18px; }
header h1 { margin: 0 0 4px; font-size: 22px; font-weight: 600; }
header .sub { margin: 0; color: #bcccdc; font-size: 13px; }
main { max-width: 1180px; margin: 0 auto; padding: 20px 24px 40px; }
section { background: var(--card); border: 1px solid var(--line); border-radius: 8px;
          padding: 16px 20px; margin: 0 0 18px; }
h2 { font-size: 16px; margin: 0 0 12px; font-weight: 600; }
h3 { font-size: 14px; margin: 14px 0 8px; color: var(--muted); font-weight: 600; }
.runs { display: flex; flex-wrap: wrap; gap: 10px; margin-bottom: 12px; }
.run { border-left: 4px solid var(--accent); background: var(--bg); padding: 6px 12px;
       border-radius: 4px; font-size: 12px; color: var(--muted); }
.run b { color: var(--ink); font-size: 13px; }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
th, td { padding: 5px 10px; border-bottom: 1px solid var(--line); text-align: right;
         white-space: nowrap; }
th { font-size: 12px; color: var(--muted); font-weight: 600; background: #fafbfc; }
th:first-child, td:first-child { text-align: left; white-space: normal; }
td .v { font-weight: 600; }
td .ci { color: var(--muted); font-size: 11px; margin-left: 6px; }
tr:hover td { background: #f0f4f8; }
.grid2 { display: grid; grid-template-columns: minmax(0, 1.05fr) minmax(0, 1fr); gap: 18px;
         align-items: start; }
figure { margin: 0; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 6px;
             background: #fff; }
figcaption { font-size: 12px; color: var(--muted); margin-top: 4px; }
details > summary { cursor: pointer; color: var(--accent); font-weight: 600; margin: 6px 0; }
.gallery { display: flex; flex-direction: column; gap: 14px; }
.scroll { overflow-x: auto; }
.note { color: var(--muted); font-size: 12px; }
footer { color: var(--muted); font-size: 12px; text-align: center; padding: 0 0 24px; }
"""


def _src(path: Path, out_dir: Path, embed: bool) -> str:
    if embed:
        data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        return f"data:image/png;base64,{data}"
    return Path(os.path.relpath(Path(path).resolve(), out_dir.resolve())).as_posix()


def _cell(e: Estimate | None, shade: float | None = None) -> str:
    if e is None or math.isnan(e.mean):
        return "<td>n/a</td>"
    style = ""
    if shade is not None and not math.isnan(shade):
        style = f' style="background: rgba(0, 114, 178, {0.04 + 0.26 * shade:.3f})"'
    d = auto_digits(e.mean)
    return (
        f'<td{style}><span class="v">{e.mean:.{d}f}</span>'
        f'<span class="ci">[{e.low:.{d}f}, {e.high:.{d}f}]</span></td>'
    )


def _table(
    rows: Sequence[tuple[str, dict[str, Estimate]]],
    metrics: Sequence[str],
    first: str,
    heat: bool = False,
) -> str:
    """Rows of estimates; with ``heat``, cells are shaded by their rank within the column."""
    lo: dict[str, float] = {}
    hi: dict[str, float] = {}
    if heat:
        for m in metrics:
            vals = [r[m].mean for _, r in rows if m in r and not math.isnan(r[m].mean)]
            if vals:
                lo[m], hi[m] = min(vals), max(vals)
    out = [
        "<div class='scroll'><table><thead><tr>",
        f"<th>{escape(first)}</th>",
        *(f"<th>{escape(metric_label(m))}</th>" for m in metrics),
        "</tr></thead><tbody>",
    ]
    for name, ests in rows:
        cells = []
        for m in metrics:
            e = ests.get(m)
            shade = None
            if heat and e is not None and m in lo:
                span = hi[m] - lo[m]
                shade = (e.mean - lo[m]) / span if span > 0 else 0.5
            cells.append(_cell(e, shade))
        out.append(f"<tr><td>{escape(name)}</td>{''.join(cells)}</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def _settings_line(meta: dict[str, Any]) -> str:
    keys = (
        "protocol",
        "bench",
        "adapter",
        "checkpoint",
        "images",
        "reference",
        "num_steps",
        "shift",
        "dynamic_shift",
        "base_seed",
        "shared_seed",
        "seeds",
    )
    parts = []
    for k in keys:
        if meta.get(k) not in (None, "", False):
            parts.append(f"{k}: {meta[k]}")
    return " · ".join(escape(str(p)) for p in parts)


def render_report(
    runs: Sequence[RunResults],
    out_dir: str | Path,
    *,
    title: str,
    metrics: Sequence[str],
    axes: tuple[str, str] | None,
    pareto: Path | None,
    grids: dict[str, dict[str, Path]],
    embed_images: bool = False,
    intro_html: str = "",
) -> str:
    """The report page as a string (see module docstring); ``intro_html`` (sections a caller
    built, e.g. a study's tables) opens the page's main part."""
    out_dir = Path(out_dir)
    first = runs[0].summary
    n_pairs = max(r.summary.n_pairs for r in runs)
    sub = (
        f"{len(runs)} run{'s' if len(runs) > 1 else ''} · {n_pairs} pairs · "
        f"seeds {', '.join(map(str, first.seeds))} · mean over pairs with "
        f"{int(round(first.confidence * 100))}% bootstrap CI ({first.resamples} resamples of "
        "subjects, then of pairs within them)"
    )
    body = [
        f"<header><h1>{escape(title)}</h1><p class='sub'>{escape(sub)}</p></header><main>",
        intro_html,
    ]

    cards = []
    for i, r in enumerate(runs):
        color = PALETTE[i % len(PALETTE)]
        details = " · ".join(
            x for x in (f"{r.summary.n_records} images", _settings_line(r.meta)) if x
        )
        cards.append(
            f"<div class='run' style='border-left-color: {color}'><b>{escape(r.label)}"
            f"</b><br>{details}</div>"
        )
    body.append(
        "<section><h2>Overall</h2><div class='runs'>"
        + "".join(cards)
        + "</div>"
        + _table([(r.label, r.summary.overall) for r in runs], metrics, "run")
        + "</section>"
    )

    kind_rows = [
        (f"{kind} · {r.label}" if len(runs) > 1 else kind, ests)
        for r in runs
        for kind, ests in r.summary.by_kind.items()
    ]
    left = "<p class='note'>The Pareto plot needs two metrics all runs share.</p>"
    right = ""
    if pareto is not None and axes is not None:
        left = (
            f"<figure><img src='{_src(pareto, out_dir, embed_images)}' alt='Pareto plot of "
            f"{escape(axes[1])} against {escape(axes[0])}'><figcaption>{escape(axes[1])} "
            f"(prompt) vs {escape(axes[0])} (identity); bars: 95% CI"
            + ("; dashed: Pareto front" if len(runs) > 1 else "; hollow: prompt kinds")
            + ".</figcaption></figure>"
        )
        plotted = [(r.label, r.summary.overall) for r in runs]
        if len(runs) == 1:
            plotted += list(runs[0].summary.by_kind.items())
        right = "<h2>Plotted values</h2>" + _table(
            plotted, list(axes), "run", heat=len(plotted) > 1
        )
    body.append(
        f"<section><div class='grid2'><div><h2>Trade-off</h2>{left}</div>"
        f"<div>{right}</div></div></section>"
    )
    body.append(
        "<section><h2>By prompt kind</h2>"
        + _table(kind_rows, metrics, "kind", heat=True)
        + "</section>"
    )

    subject_rows = [
        (f"{s} · {r.label}" if len(runs) > 1 else s, ests)
        for r in runs
        for s, ests in r.summary.by_subject.items()
    ]
    body.append(
        "<section><h2>By subject</h2><details open><summary>"
        f"{len(subject_rows)} rows (shaded by rank within each column)</summary>"
        + _table(subject_rows, metrics, "subject", heat=True)
        + "</details></section>"
    )

    if any(grids.values()):
        parts = [
            "<section><h2>Samples</h2><p class='note'>Each grid: the reference (framed) "
            "and one generation per prompt, labelled with the prompt index and text.</p>"
        ]
        for r in runs:
            paths = grids.get(r.label, {})
            if not paths:
                continue
            if len(runs) > 1:
                parts.append(f"<h3>{escape(r.label)}</h3>")
            figures = "".join(
                f"<figure><img loading='lazy' src='{_src(p, out_dir, embed_images)}' "
                f"alt='{escape(s)}'></figure>"
                for s, p in paths.items()
            )
            parts.append(
                f"<details{' open' if len(runs) == 1 else ''}><summary>{len(paths)} "
                f"subjects</summary><div class='gallery'>{figures}</div></details>"
            )
        body.append("".join(parts) + "</section>")

    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    body.append(
        f"</main><footer>cgrpo evaluation report · {escape(stamp)} · rebuild with "
        "<code>cgrpo report RUN...</code></footer>"
    )
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>"
        + "".join(body)
        + "</body></html>\n"
    )


__all__ = ["CSS", "render_report"]
