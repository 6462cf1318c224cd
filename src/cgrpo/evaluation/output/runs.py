"""An evaluation folder read back: its records, settings (``eval.json``) and summary.

:func:`load_run` reads one folder (``pairs.jsonl`` + ``eval.json``, see
:mod:`cgrpo.evaluation.results`) into a :class:`RunResults`, the unit that
:mod:`~cgrpo.evaluation.output.report` and :mod:`~cgrpo.evaluation.output.html` render.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cgrpo.evaluation.results import META_FILE, find_results, read_records
from cgrpo.evaluation.stats.bootstrap import DEFAULT_CONFIDENCE, DEFAULT_RESAMPLES
from cgrpo.evaluation.stats.tables import Summary, summarize


@dataclass
class RunResults:
    """One evaluation folder: its records, settings (``eval.json``) and summary."""

    label: str
    directory: Path
    records: list[dict[str, Any]]
    meta: dict[str, Any]
    summary: Summary

    @property
    def metrics(self) -> list[str]:
        return self.summary.metrics


def load_run(
    path: str | Path,
    label: str | None = None,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> RunResults:
    """Read a results folder (or a run folder with one ``eval*`` folder below it)."""
    directory = find_results(path)
    records = read_records(directory)
    if not records:
        raise ValueError(f"{directory} has no scored pairs yet")
    meta_path = directory / META_FILE
    meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}
    if label is None:
        label = _default_label(Path(path), directory)
    summary = summarize(records, resamples=resamples, confidence=confidence, seed=seed)
    return RunResults(label, directory, records, meta, summary)


def _default_label(given: Path, directory: Path) -> str:
    name = given.resolve().name
    if name.startswith("eval") and given.resolve() == directory.resolve():
        return f"{directory.resolve().parent.name}/{name}"
    return name


__all__ = ["RunResults", "load_run"]
