"""The study's outputs: tables (markdown + JSON), plots, grids and ``report.html``.

Files written into the study directory:

* ``summary.md`` / ``summary.json`` -- per-arm held-out means (mean over seeds, 95% CI
  over seeds x clusters x items) for every metric and prompt kind, what training changed
  (after - base, paired by item), and each arm minus the baseline arm, paired by seed and
  item;
* the joint rates: per arm, the share of (seed, held-out item) pairs where both trained
  rewards rose, both fell, or one was traded for the other;
* ``pareto.png`` -- identity vs prompt metric: one dot per run, arm means with error bars;
* ``curves.png`` -- training rewards and conflict rate per arm over the steps;
* ``grids/compare.png`` (base and every arm's first seed on the same held-out items) and
  ``grids/<arm>.png`` (base and every seed of that arm);
* ``report.html`` -- the evaluation report page (:func:`cgrpo.evaluation.output.report.build_report`)
  over the base and each arm (scores averaged over seeds per item), with the study's own
  tables and figures on top.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

from cgrpo.study.analysis import (
    ALL_KINDS,
    JOINT_COLUMNS,
    Row,
    StudyResults,
    arm_table,
    change_table,
    joint_table,
    load_study_results,
    paired_table,
    training_curves,
)
from cgrpo.study.figures import comparison_grid, curves_figure, pareto_study_figure
from cgrpo.study.spec import StudyConfig

__all__ = ["StudySummary", "build_study_report", "rows_markdown"]

PROPERTY_KINDS = ("property", "property_modification")


@dataclass
class StudySummary:
    markdown: str
    files: dict[str, Path]


def _axes(study: StudyConfig, results: StudyResults, out: Path) -> tuple[str, str] | None:
    """(identity metric, prompt metric): the study's choice, else the trained rewards' columns."""
    x, y = study.identity_metric, study.prompt_metric
    if not (x and y):
        from cgrpo.config.train import load_config

        first = next(iter(next(iter(results.run_dirs.values())).values()))
        config = load_config(first / "config.yaml")
        roles = {}
        for spec in config.rewards:
            roles.setdefault(spec.role, spec.column or spec.name)
        x = x or roles.get("identity", "")
        y = y or roles.get("prompt", "")
    if x in results.metrics and y in results.metrics:
        return x, y
    return None


def rows_markdown(rows: list[Row], metrics: list[str], *, signed: bool = False) -> str:
    """A markdown table: arm, prompt kind, seeds, then ``mean [low, high]`` per metric."""
    fmt = "{:+.4f}" if signed else "{:.4f}"
    lines = [
        "| arm | prompts | seeds | " + " | ".join(metrics) + " |",
        "|---|---|---:|" + "---:|" * len(metrics),
    ]
    for row in rows:
        cells = []
        for m in metrics:
            e = row.estimates[m]
            text = f"{fmt.format(e.mean)} [{fmt.format(e.low)}, {fmt.format(e.high)}]"
            if signed and (e.low > 0 or e.high < 0):
                text = f"**{text}**"
            cells.append(text)
        seeds = str(row.seeds) if row.seeds else "-"
        lines.append(f"| {row.arm} | {row.kind} | {seeds} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _rows_json(rows: list[Row]) -> list[dict[str, Any]]:
    return [
        {
            "arm": r.arm,
            "kind": r.kind,
            "seeds": r.seeds,
            "metrics": {m: e.to_dict() for m, e in r.estimates.items()},
        }
        for r in rows
    ]


def _grid_items(results: StudyResults, count: int = 8) -> list[int]:
    """Held-out items for the grids: prompts that ask to change the subject first,
    one per cluster where possible."""
    order = sorted(range(len(results.keys)), key=lambda i: results.kinds[i] not in PROPERTY_KINDS)
    chosen, seen = [], set()
    for i in order:
        if results.clusters[i] not in seen:
            chosen.append(i)
            seen.add(results.clusters[i])
        if len(chosen) == count:
            break
    return chosen


def _seed_mean_records(results: StudyResults, arm: str | None) -> list[dict[str, Any]]:
    """One record per held-out item: the arm's scores averaged over its seeds (None: base)."""
    from cgrpo.evaluation.heldout import load_held_out

    first = next(iter(next(iter(results.run_dirs.values())).values()))
    template = {r["key"]: r for r in load_held_out(first).before}
    out = []
    for i, key in enumerate(results.keys):
        if arm is None:
            scores = {m: float(results.base[m][i]) for m in results.metrics}
        else:
            data = results.arms[arm].after
            scores = {m: float(data[m][:, i].mean()) for m in results.metrics}
        record = {k: v for k, v in template[key].items() if k not in ("scores", "image")}
        out.append({**record, "scores": scores})
    return out


def _relative(path: Path, page_dir: Path) -> str:
    return escape(Path(os.path.relpath(path, page_dir)).as_posix())


def _html_sections(
    study: StudyConfig, markdown_tables: dict[str, str], files: dict[str, Path], page_dir: Path
) -> str:
    """The study's own sections of report.html (tables, figures), linked from ``page_dir``."""

    def md_to_html(table: str) -> str:
        lines = [ln for ln in table.splitlines() if ln.strip()]
        head = [c.strip() for c in lines[0].strip("|").split("|")]
        body = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]]
        cells = "".join(f"<th>{escape(h)}</th>" for h in head)
        rows = "".join(
            "<tr>"
            + "".join(
                f"<td><b>{escape(c.strip('*'))}</b></td>" if c.startswith("**") else
                f"<td>{escape(c)}</td>"
                for c in row
            )
            + "</tr>"
            for row in body
        )  # fmt: skip
        return f"<table><thead><tr>{cells}</tr></thead><tbody>{rows}</tbody></table>"

    parts = [
        "<section><h2>Study</h2><p class='note'>"
        + escape(
            f"{len(study.arms)} arms x seeds {study.seeds} on {Path(study.base).name}; "
            "held-out means after training, mean over seeds with 95% CIs that resample "
            "seeds, held-out clusters and items."
        )
        + "</p>"
        + md_to_html(markdown_tables["arms"])
        + "</section>"
    ]
    parts.append(
        "<section><h2>What training changed (after - base, paired by item; bold: the CI "
        "excludes 0)</h2>" + md_to_html(markdown_tables["change"]) + "</section>"
    )
    if markdown_tables.get("paired"):
        parts.append(
            f"<section><h2>Difference to {escape(study.reference_arm)} (paired by seed and "
            "item; bold: the CI excludes 0)</h2>"
            + md_to_html(markdown_tables["paired"])
            + "</section>"
        )
    if markdown_tables.get("joint"):
        parts.append(
            "<section><h2>Joint rates (share of seed x item pairs where both trained rewards "
            "rose, both fell, or one was traded for the other)</h2>"
            + md_to_html(markdown_tables["joint"])
            + "</section>"
        )
    for name, caption in (("pareto_study", "Identity vs prompt"), ("curves", "Training")):
        if name in files:
            parts.append(
                f"<section><h2>{caption}</h2><figure><img src='"
                f"{_relative(files[name], page_dir)}'></figure></section>"
            )
    grids = [p for k, p in files.items() if k.startswith("grid_")]
    if grids:
        figures = "".join(
            f"<figure><img loading='lazy' src='{_relative(p, page_dir)}'>"
            f"<figcaption>{escape(p.stem)}</figcaption></figure>"
            for p in grids
        )
        parts.append(f"<section><h2>Held-out samples</h2>{figures}</section>")
    return "".join(parts)


def build_study_report(
    study: StudyConfig, out: str | Path, *, resamples: int = 1000
) -> StudySummary:
    """Write every study output for the finished runs under ``out`` (see module docstring)."""
    from cgrpo.evaluation.output.report import build_report
    from cgrpo.evaluation.output.runs import RunResults
    from cgrpo.evaluation.stats.tables import summarize

    out = Path(out)
    results = load_study_results(study, out)
    files: dict[str, Path] = {}
    arms_rows = arm_table(results, resamples=resamples)
    change_rows = change_table(results, resamples=resamples)
    paired_rows = paired_table(results, study.reference_arm, resamples=resamples)
    tables = {
        "arms": rows_markdown(arms_rows, results.metrics),
        "change": rows_markdown(change_rows, results.metrics, signed=True),
    }
    if paired_rows:
        tables["paired"] = rows_markdown(paired_rows, results.metrics, signed=True)

    axes = _axes(study, results, out)
    joint_rows = joint_table(results, *axes, resamples=resamples) if axes else []
    if joint_rows:
        tables["joint"] = rows_markdown(joint_rows, list(JOINT_COLUMNS))
    kinds = [k for k in results.kind_names if k == ALL_KINDS or k in PROPERTY_KINDS]
    if axes is not None:
        files["pareto_study"] = pareto_study_figure(
            results, change_rows, axes[0], axes[1], kinds, out / "pareto.png"
        )
    label_metrics = list(axes) if axes else results.metrics[:2]
    curve_keys = [f"reward/{m}/mean" for m in label_metrics] + ["conflict_rate"]
    curves = training_curves(results, curve_keys)
    present = [k for k in curve_keys if any(k in c for c in curves.values())]
    if present:
        titles = [
            "conflict rate (share of samples whose rewards disagree)" if k == "conflict_rate"
            else f"training reward: {k.split('/')[1]}"
            for k in present
        ]  # fmt: skip
        files["curves"] = curves_figure(curves, present, titles, out / "curves.png")
    items = _grid_items(results)
    first_seeds = [(arm, results.run_dirs[arm][results.arms[arm].seeds[0]]) for arm in results.arms]
    files["grid_compare"] = comparison_grid(
        results, [("base", None), *first_seeds], items, label_metrics, out / "grids" / "compare.png"
    )
    for arm, data in results.arms.items():
        columns = [("base", None)] + [(f"seed {s}", results.run_dirs[arm][s]) for s in data.seeds]
        files[f"grid_{arm}"] = comparison_grid(
            results, columns, items, label_metrics, out / "grids" / f"{arm}.png"
        )

    md = [
        f"# Study: {len(results.arms)} arms on `{Path(study.base).name}`",
        "",
        f"Seeds {study.seeds}; held-out items: {len(results.keys)} in "
        f"{len(set(results.clusters))} clusters. Means after training, averaged over seeds; "
        "95% CIs resample seeds, clusters and items (see `cgrpo.study.analysis`).",
        "",
    ]
    if results.missing:
        md += [f"Not finished (left out): {', '.join(results.missing)}", ""]
    md += ["## Held-out metrics per arm", "", tables["arms"], ""]
    md += [
        "## What training changed: after - base (paired by item)",
        "",
        "Bold: the 95% CI excludes 0.",
        "",
        tables["change"],
        "",
    ]
    if "paired" in tables:
        md += [
            f"## Each arm minus `{study.reference_arm}` (paired by seed and item)",
            "",
            "Bold: the 95% CI excludes 0.",
            "",
            tables["paired"],
            "",
        ]
    if "joint" in tables:
        md += [
            f"## Joint rates: {axes[0]} and {axes[1]} on the same item (after vs base)",
            "",
            "Share of (seed, item) pairs where both rose, both fell, or one rose while the "
            "other fell; the rest are ties. Means can rise while many items trade one reward "
            "for the other.",
            "",
            tables["joint"],
            "",
        ]
    for key, caption in (("pareto_study", "pareto"), ("curves", "training curves")):
        if key in files:
            md += [f"![{caption}]({files[key].relative_to(out).as_posix()})", ""]
    md += [f"![held-out samples]({files['grid_compare'].relative_to(out).as_posix()})", ""]
    markdown = "\n".join(md)
    files["summary_markdown"] = out / "summary.md"
    files["summary_markdown"].write_text(markdown, encoding="utf-8")
    files["summary_json"] = out / "summary.json"
    files["summary_json"].write_text(
        json.dumps(
            {
                "arms": {a: d.seeds for a, d in results.arms.items()},
                "baseline": study.reference_arm,
                "items": len(results.keys),
                "clusters": len(set(results.clusters)),
                "missing": results.missing,
                "per_arm": _rows_json(arms_rows),
                "change": _rows_json(change_rows),
                "paired": _rows_json(paired_rows),
                "joint": {
                    "metrics": list(axes) if axes else [],
                    "rows": _rows_json(joint_rows),
                },
            },
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )

    page_runs = []
    for label, arm in [("base", None), *[(a, a) for a in results.arms]]:
        records = _seed_mean_records(results, arm)
        page_runs.append(
            RunResults(label, out, records, {"seeds": "mean over seeds"}, summarize(records))
        )
    report_dir = out / "report"
    files["html"] = build_report(
        page_runs,
        report_dir,
        x_metric=axes[0] if axes else None,
        y_metric=axes[1] if axes else None,
        title=f"cgrpo study: {', '.join(results.arms)}",
        grids=False,
        intro_html=_html_sections(study, tables, files, report_dir),
    )["html"]
    return StudySummary(markdown, files)
