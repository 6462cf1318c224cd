"""Aggregate per-pair records into overall, per-prompt-kind and per-subject tables.

The statistical unit is the evaluation pair (``record["key"]``): a pair's score is the mean
over its seeds, and every mean below is a mean over pairs. Its bootstrap interval
(:mod:`cgrpo.evaluation.stats.bootstrap`) resamples the pairs' clusters, ``record["subject"]``
(DreamBench subjects, toybench identities), then pairs within them: the prompts of one
subject are not independent, nor are the seeds of one pair.
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cgrpo.evaluation.results import metric_names
from cgrpo.evaluation.stats.bootstrap import (
    DEFAULT_CONFIDENCE,
    DEFAULT_RESAMPLES,
    Estimate,
    bootstrap_ci,
    paired_bootstrap_ci,
)
from cgrpo.evaluation.stats.scales import metric_label

NAN_ESTIMATE = Estimate(math.nan, math.nan, math.nan, 0)


def unit_scores(records: Iterable[dict[str, Any]], metric: str) -> dict[str, float]:
    """``{pair key: mean of metric over that pair's seeds}``; records without it are skipped."""
    sums: dict[str, list[float]] = defaultdict(list)
    for r in records:
        value = r.get("scores", {}).get(metric)
        if value is not None and math.isfinite(float(value)):
            sums[r["key"]].append(float(value))
    return {k: float(np.mean(v)) for k, v in sums.items()}


def unit_clusters(records: Iterable[dict[str, Any]]) -> dict[str, str]:
    """``{pair key: its cluster}``: the record's ``subject``."""
    return {r["key"]: str(r.get("subject", "")) for r in records}


def estimate(
    records: Sequence[dict[str, Any]],
    metric: str,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> Estimate:
    """Mean over pairs of ``metric`` with a cluster-bootstrap interval (NaN if no scores)."""
    units = unit_scores(records, metric)
    if not units:
        return NAN_ESTIMATE
    keys = sorted(units)
    cluster = unit_clusters(records)
    return bootstrap_ci(
        [units[k] for k in keys],
        clusters=[cluster[k] for k in keys],
        resamples=resamples,
        confidence=confidence,
        seed=seed,
    )


@dataclass
class Summary:
    """Tables of one evaluation.

    Attributes:
        metrics: score columns, in record order.
        overall: ``{metric: Estimate}`` over all pairs.
        by_kind: ``{prompt kind: {metric: Estimate}}``.
        by_subject: ``{subject: {metric: Estimate}}``.
        n_records, n_pairs: images scored and distinct pairs.
        seeds: the seed indices present.
    """

    metrics: list[str]
    overall: dict[str, Estimate]
    by_kind: dict[str, dict[str, Estimate]] = field(default_factory=dict)
    by_subject: dict[str, dict[str, Estimate]] = field(default_factory=dict)
    n_records: int = 0
    n_pairs: int = 0
    seeds: list[int] = field(default_factory=list)
    resamples: int = DEFAULT_RESAMPLES
    confidence: float = DEFAULT_CONFIDENCE

    def to_dict(self) -> dict[str, Any]:
        def table(rows: dict[str, dict[str, Estimate]]) -> dict[str, Any]:
            return {k: {m: e.to_dict() for m, e in v.items()} for k, v in rows.items()}

        return {
            "metrics": self.metrics,
            "n_records": self.n_records,
            "n_pairs": self.n_pairs,
            "seeds": self.seeds,
            "bootstrap": {
                "resamples": self.resamples,
                "confidence": self.confidence,
                "unit": "pair (mean over seeds)",
                "clusters": "subject (resampled, then pairs within each)",
            },
            "overall": {m: e.to_dict() for m, e in self.overall.items()},
            "by_kind": table(self.by_kind),
            "by_subject": table(self.by_subject),
        }


def summarize(
    records: Sequence[dict[str, Any]],
    metrics: Sequence[str] | None = None,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> Summary:
    """Overall, per-kind and per-subject means with bootstrap intervals (seeded)."""
    metrics = list(metrics) if metrics is not None else metric_names(records)
    kw = {"resamples": resamples, "confidence": confidence, "seed": seed}

    def group(field_name: str) -> dict[str, dict[str, Estimate]]:
        groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in records:
            groups[str(r.get(field_name, ""))].append(r)
        return {g: {m: estimate(rs, m, **kw) for m in metrics} for g, rs in sorted(groups.items())}

    return Summary(
        metrics=metrics,
        overall={m: estimate(records, m, **kw) for m in metrics},
        by_kind=group("kind"),
        by_subject=group("subject"),
        n_records=len(records),
        n_pairs=len({r["key"] for r in records}),
        seeds=sorted({int(r["seed"]) for r in records}),
        resamples=resamples,
        confidence=confidence,
    )


@dataclass(frozen=True)
class Delta:
    """Run B minus run A on one metric over the pairs both runs scored."""

    metric: str
    mean_a: float
    mean_b: float
    delta: Estimate

    @property
    def significant(self) -> bool:
        """The interval excludes zero."""
        return not self.delta.contains(0.0)


def compare_records(
    a: Sequence[dict[str, Any]],
    b: Sequence[dict[str, Any]],
    metrics: Sequence[str] | None = None,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> list[Delta]:
    """Paired per-metric deltas (B - A) on shared pairs; metrics default to those both have.

    The interval resamples A's subjects, then pairs within them (module docstring).
    """
    if metrics is None:
        names_b = set(metric_names(b))
        metrics = [m for m in metric_names(a) if m in names_b]
    cluster = unit_clusters(a)
    out = []
    for m in metrics:
        ua, ub = unit_scores(a, m), unit_scores(b, m)
        shared = sorted(set(ua) & set(ub))
        if not shared:
            raise ValueError(f"metric {m!r}: the two runs share no scored pairs")
        va = np.array([ua[k] for k in shared])
        vb = np.array([ub[k] for k in shared])
        ci = paired_bootstrap_ci(
            va,
            vb,
            clusters=[cluster[k] for k in shared],
            resamples=resamples,
            confidence=confidence,
            seed=seed,
        )
        out.append(Delta(m, float(va.mean()), float(vb.mean()), ci))
    return out


def deltas_table(deltas: Sequence[Delta], label_a: str, label_b: str) -> str:
    """The ``cgrpo compare`` table (``*``: the interval excludes zero)."""
    labels = [metric_label(d.metric) for d in deltas]
    width = max([len(label) for label in labels] + [6])
    lines = [
        f"A = {label_a}",
        f"B = {label_b}",
        "",
        f"{'metric':<{width}}  {'A':>9}  {'B':>9}  {'B - A':>9}  {'95% CI (paired)':>22}"
        f"  {'pairs':>5}  {'subjects':>8}",
    ]
    for d, label in zip(deltas, labels):
        ci = f"[{d.delta.low:+.4f}, {d.delta.high:+.4f}]"
        lines.append(
            f"{label:<{width}}  {d.mean_a:>9.4f}  {d.mean_b:>9.4f}  "
            f"{d.delta.mean:>+9.4f}  {ci:>22}  {d.delta.n:>5}  {d.delta.clusters or 0:>8}"
            + ("  *" if d.significant else "")
        )
    lines += [
        "",
        "CI: paired bootstrap over subjects, then pairs within them",
        "* the interval excludes 0",
    ]
    return "\n".join(lines)


def deltas_json(deltas: Sequence[Delta], label_a: str, label_b: str) -> dict[str, Any]:
    """``cgrpo compare --json``: both runs and one entry per metric."""
    return {
        "a": label_a,
        "b": label_b,
        "deltas": [
            {
                "metric": d.metric,
                "mean_a": d.mean_a,
                "mean_b": d.mean_b,
                **{f"delta_{k}": v for k, v in d.delta.to_dict().items()},
                "significant": d.significant,
            }
            for d in deltas
        ],
    }


# ----- writers -------------------------------------------------------------------------------


def _md_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def summary_markdown(
    summary: Summary, title: str = "Evaluation", digits: int | None = None, level: int = 1
) -> str:
    """Markdown: overall means with CIs, then per-kind and per-subject tables.

    ``digits`` None picks decimals from each value's magnitude; ``level`` is the title's
    heading level (sections go one deeper).
    """
    pct = int(round(summary.confidence * 100))
    h, sub = "#" * level, "#" * (level + 1)
    parts = [
        f"{h} {title}",
        "",
        f"{summary.n_records} images, {summary.n_pairs} pairs, seeds {summary.seeds}. "
        f"Mean over pairs [{pct}% bootstrap CI, {summary.resamples} resamples of subjects, "
        "then of pairs within them].",
        "",
        f"{sub} Overall",
        "",
        _md_table(
            ["metric [scale]", f"mean [{pct}% CI]", "pairs"],
            ([metric_label(m), e.format(digits), str(e.n)] for m, e in summary.overall.items()),
        ),
    ]
    for title_, rows in (("By prompt kind", summary.by_kind), ("By subject", summary.by_subject)):
        parts += [
            "",
            f"{sub} {title_}",
            "",
            _md_table(
                ["", *map(metric_label, summary.metrics)],
                ([name, *(rows[name][m].format(digits) for m in summary.metrics)] for name in rows),
            ),
        ]
    return "\n".join(parts) + "\n"


def write_group_csv(
    rows: dict[str, dict[str, Estimate]], metrics: Sequence[str], path: str | Path, label: str
) -> None:
    """One row per group: ``label, n, <metric>, <metric>_low, <metric>_high, ...``."""
    with Path(path).open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(
            [label, "pairs", *(f"{m}{s}" for m in metrics for s in ("", "_low", "_high"))]
        )
        for name, ests in rows.items():
            n = max((ests[m].n for m in metrics), default=0)
            writer.writerow(
                [
                    name,
                    n,
                    *(
                        f"{v:.6f}"
                        for m in metrics
                        for v in (ests[m].mean, ests[m].low, ests[m].high)
                    ),
                ]
            )


def write_summary_files(
    summary: Summary,
    directory: str | Path,
    title: str = "Evaluation",
    extra: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """``summary.json``, ``summary.md``, ``per_kind.csv``, ``per_subject.csv`` in ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    files = {
        "json": directory / "summary.json",
        "markdown": directory / "summary.md",
        "per_kind": directory / "per_kind.csv",
        "per_subject": directory / "per_subject.csv",
    }
    data = summary.to_dict()
    if extra:
        data = {**extra, **data}
    files["json"].write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    files["markdown"].write_text(summary_markdown(summary, title), encoding="utf-8")
    write_group_csv(summary.by_kind, summary.metrics, files["per_kind"], "kind")
    write_group_csv(summary.by_subject, summary.metrics, files["per_subject"], "subject")
    return files


__all__ = [
    "Delta",
    "Summary",
    "compare_records",
    "deltas_json",
    "deltas_table",
    "estimate",
    "summarize",
    "summary_markdown",
    "unit_clusters",
    "unit_scores",
    "write_group_csv",
    "write_summary_files",
]
