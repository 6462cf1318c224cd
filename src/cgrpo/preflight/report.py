"""The pre-flight outputs: a printed table, ``preflight.json``, example-group grids and
``preflight.html``.

The page shows, per reward, the same example groups with each group's samples sorted by
that reward (best left) and labelled with it and the monitors: whether the order looks
like what the reward asks for is the first thing to check by eye.
"""

from __future__ import annotations

import json
import math
from html import escape
from pathlib import Path
from typing import Any

import torch

from cgrpo.preflight.sampling import SampledGroups

#: Example groups drawn per reward on the page.
EXAMPLE_GROUPS = 6


def _f(x: float, fmt: str = ".3f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def table_rows(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the per-reward table (one row per reward column)."""
    perts = list(result["perturbations"])
    monitors = list(result["monitors"])
    header = [
        "reward",
        "role",
        "within std",
        "between std",
        "noise std",
        "signal",
        *(f"rank@{p}" for p in perts),
        "flips@shift",
        *(f"~{m}" for m in monitors),
        "verdict",
    ]
    rows = []
    for c, m in result["rewards"].items():
        rows.append(
            [
                c,
                m["role"],
                _f(m["within_std"]),
                _f(m["between_std"]),
                _f(m["noise_std"]),
                _f(m["signal_share"], ".0%"),
                *(_f(m["noise"].get(p, {}).get("rank_agreement", math.nan), "+.2f") for p in perts),
                _f(m["noise"].get("shift", {}).get("sign_flips", math.nan), ".0%"),
                *(_f(m["monitors"].get(k, math.nan), "+.2f") for k in monitors),
                m["verdict"],
            ]
        )
    return header, rows


def format_table(result: dict[str, Any]) -> str:
    """The plain-text report: the table, the reward pairs and one verdict line per reward."""
    header, rows = table_rows(result)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
    if result["pairs"]:
        lines.append("")
        for p in result["pairs"]:
            lines.append(
                f"{p['a']} vs {p['b']}: pearson {_f(p['pearson'], '+.2f')}, spearman "
                f"{_f(p['spearman'], '+.2f')}, within-group spearman "
                f"{_f(p['within_spearman'], '+.2f')}, conflict rate {_f(p['conflict_rate'], '.0%')}"
            )
    lines.append("")
    lines += result["verdicts"]
    return "\n".join(lines)


def example_grid(sampled: SampledGroups, column: str, shown: list[str], count: int):
    """A PIL grid of the first ``count`` groups, each sorted by ``column`` (highest left),
    every sample labelled with ``column`` and the ``shown`` columns."""
    from cgrpo.evaluation.output.plots import group_grid

    g = sampled.group_size
    n = min(count, sampled.n_groups)
    images, labels = [], []
    for q in range(n):
        rows = range(q * g, (q + 1) * g)
        for i in sorted(rows, key=lambda r: -float(sampled.scores[column][r])):
            images.append(sampled.thumbs[i].float() / 255.0)
            first = f"{column[:14]} {float(sampled.scores[column][i]):.2f}"
            rest = " ".join(
                f"{short_name(c)}{round(100 * float(sampled.scores[c][i])):02d}"
                for c in shown
                if c != column
            )
            labels.append(f"{first}\n{rest}")
    examples = sampled.examples[:n]
    return group_grid(
        [e.references[0] for e in examples],
        torch.stack(images),
        g,
        [e.prompt for e in examples],
        labels,
        cell=128,
    )


def short_name(column: str) -> str:
    """Two letters for a grid label: the start of the column's last ``-`` part
    (``gt-colour`` -> ``co``, ``toy-id`` -> ``id``)."""
    return column.split("-")[-1][:2]


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<div class='scroll'><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


def render_html(result: dict[str, Any], grids: dict[str, str]) -> str:
    """``preflight.html``: verdicts, the table, reward pairs, one example grid per reward
    (``grids``: column -> PNG path relative to the page)."""
    from cgrpo.evaluation.output.html import CSS

    header, rows = table_rows(result)
    shown = [*result["rewards"], *result["monitors"]]
    sub = (
        f"{result['groups']} groups of {result['group_size']} · split {result['split']}"
        + (f" · kind {result['kind']}" if result["kind"] else "")
        + f" · {escape(str(result['config']))} · {result['seconds']['total']:.0f} s"
    )
    parts = [
        f"<header><h1>Pre-flight reward check</h1><p class='sub'>{escape(sub)}</p></header>",
        "<main><section><h2>Verdicts</h2>",
        "".join(f"<p>{escape(v)}</p>" for v in result["verdicts"]),
        "</section><section><h2>Per reward</h2>",
        _html_table(header, rows),
        "<p class='note'>within / between std: mean within-group std vs std of the group "
        "means. noise std: largest pooled within-group std of the score change under "
        f"{', '.join(result['noise_from'])}. signal: groups whose std exceeds 2 x noise. "
        "rank@p: mean within-group Spearman of the scores before and after p. ~m: mean "
        "within-group Spearman with monitor m.</p></section>",
    ]
    if result["pairs"]:
        pair_rows = [
            [
                f"{p['a']} vs {p['b']}",
                _f(p["pearson"], "+.2f"),
                _f(p["spearman"], "+.2f"),
                _f(p["within_spearman"], "+.2f"),
                _f(p["conflict_rate"], ".0%"),
            ]
            for p in result["pairs"]
        ]
        parts += [
            "<section><h2>Between rewards</h2>",
            _html_table(
                ["pair", "pearson", "spearman", "within-group spearman", "conflict rate"],
                pair_rows,
            ),
            "</section>",
        ]
    parts.append(
        "<section><h2>Example groups</h2><p class='note'>The same groups under each reward; "
        "each row: the reference, then the group's samples sorted by that reward, highest "
        "left. Under each sample: that reward, then the other columns x 100 ("
        + escape(", ".join(f"{short_name(c)} = {c}" for c in shown))
        + ").</p>"
    )
    for column, src in grids.items():
        parts.append(
            f"<h3>sorted by {escape(column)}</h3><figure><img src='{escape(src)}' "
            f"alt='example groups sorted by {escape(column)}'></figure>"
        )
    parts.append("</section></main>")
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>Pre-flight reward check</title><style>{CSS}</style></head><body>"
        + "".join(parts)
        + "</body></html>\n"
    )


def write_outputs(
    result: dict[str, Any], sampled: SampledGroups, out: str | Path
) -> dict[str, Path]:
    """Write ``preflight.json``, ``groups_<column>.png`` per reward and ``preflight.html``
    into ``out``; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": out / "preflight.json", "html": out / "preflight.html"}
    files["json"].write_text(json.dumps(_finite(result), indent=2, allow_nan=False) + "\n")
    shown = [*result["rewards"], *result["monitors"]]
    grids = {}
    for column in result["rewards"]:
        name = f"groups_{''.join(ch if ch.isalnum() else '_' for ch in column)}.png"
        example_grid(sampled, column, shown, EXAMPLE_GROUPS).save(out / name)
        files[f"grid:{column}"] = out / name
        grids[column] = name
    files["html"].write_text(render_html(result, grids), encoding="utf-8")
    return files


def _finite(x: Any) -> Any:
    """``x`` with NaN and infinities as None (null), so the JSON is strict."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    return x


__all__ = [
    "EXAMPLE_GROUPS",
    "example_grid",
    "format_table",
    "render_html",
    "table_rows",
    "write_outputs",
]
