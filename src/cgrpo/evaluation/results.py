"""Per-pair result records and the files that hold them (``pairs.jsonl`` + ``pairs.csv``).

One record per (evaluation pair, seed)::

    {"key": "backpack/03", "seed": 0, "subject": "backpack", "prompt_index": 3,
     "prompt": "a backpack on a cobblestone street", "kind": "recontextualization",
     "image": "images/backpack/03_0.png", "reference": "/data/dreambench/backpack/02.jpg",
     "info": {"class_noun": "backpack", "live": false},
     "scores": {"dino": 0.71, "clip-t": 0.29}}

``image`` is relative to the folder holding ``pairs.jsonl`` (or absolute). The JSONL is
the source of truth and is rewritten atomically after every scored batch, so an
interrupted evaluation resumes from the last finished batch; ``pairs.csv`` is the same
table flattened (``info`` keys and score columns become columns).
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

RECORDS_FILE = "pairs.jsonl"
CSV_FILE = "pairs.csv"
META_FILE = "eval.json"
"""The evaluation's settings, beside the records (written by ``cgrpo eval`` and the trainer's
held-out check; a folder holding a different evaluation is refused)."""
BASE_FIELDS = ("key", "seed", "subject", "prompt_index", "prompt", "kind", "image", "reference")


def metric_names(records: Iterable[dict[str, Any]]) -> list[str]:
    """Score columns present in ``records``, in order of first appearance."""
    names: dict[str, None] = {}
    for r in records:
        for name in r.get("scores", {}):
            names.setdefault(name, None)
    return list(names)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Records from a ``pairs.jsonl`` file, or from a folder holding one.

    A torn last line (a run killed mid-write of a non-atomic copy) is ignored; any other
    unreadable line raises ValueError naming the file and line.
    """
    path = Path(path)
    if path.is_dir():
        path = path / RECORDS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no evaluation results at {path}")
    lines = path.read_bytes().splitlines()
    records = []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            if number == len(lines):
                break
            raise ValueError(f"{path}:{number}: not a JSON record ({e})") from None
        if not isinstance(record, dict) or "key" not in record or "seed" not in record:
            raise ValueError(f"{path}:{number}: a record needs 'key' and 'seed'")
        scores = record.get("scores", {})
        bad = (
            [(k, v) for k, v in scores.items() if not _is_score(v)]
            if isinstance(scores, dict)
            else [("scores", scores)]
        )
        if bad:
            raise ValueError(
                f"{path}:{number}: score {bad[0][0]!r} = {bad[0][1]!r} is not a number"
            )
        record.setdefault("scores", {})
        record.setdefault("info", {})
        records.append(record)
    return records


def _is_score(value: Any) -> bool:
    """A number or null (a metric that could not be computed for this pair)."""
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


def write_csv(records: Sequence[dict[str, Any]], path: str | Path) -> None:
    """The flattened table: base fields, then ``info`` keys, then score columns."""
    info_keys: dict[str, None] = {}
    for r in records:
        for k in r.get("info", {}):
            info_keys.setdefault(k, None)
    metrics = metric_names(records)
    header = [*BASE_FIELDS, *info_keys, *metrics]
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for r in records:
            row = [r.get(k, "") for k in BASE_FIELDS]
            row += [r.get("info", {}).get(k, "") for k in info_keys]
            row += [_fmt(r.get("scores", {}).get(m)) for m in metrics]
            writer.writerow(row)
    os.replace(tmp, path)


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return repr(float(value))


class ResultStore:
    """The records of one evaluation folder, keyed by ``(key, seed)``, with atomic saves."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / RECORDS_FILE
        self._records: dict[tuple[str, int], dict[str, Any]] = {}
        if self.path.is_file():
            for r in read_records(self.path):
                self._records[(r["key"], int(r["seed"]))] = r

    def __len__(self) -> int:
        return len(self._records)

    def get(self, key: str, seed: int) -> dict[str, Any] | None:
        return self._records.get((key, int(seed)))

    def put(self, record: dict[str, Any]) -> None:
        self._records[(record["key"], int(record["seed"]))] = record

    def records(self) -> list[dict[str, Any]]:
        """All records sorted by ``(key, seed)`` (a stable order for files and tables)."""
        return [self._records[k] for k in sorted(self._records)]

    def missing_columns(self, key: str, seed: int, columns: Iterable[str]) -> list[str]:
        record = self.get(key, seed)
        have = record.get("scores", {}) if record else {}
        return [c for c in columns if c not in have]

    def save(self) -> None:
        """Rewrite ``pairs.jsonl`` and ``pairs.csv`` atomically."""
        write_records(self.directory, self.records())


def write_records(directory: str | Path, records: Sequence[dict[str, Any]]) -> None:
    """``<directory>/pairs.jsonl`` and ``pairs.csv`` holding ``records``, each written atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _atomic_write(
        directory / RECORDS_FILE, "".join(json.dumps(r, sort_keys=False) + "\n" for r in records)
    )
    write_csv(records, directory / CSV_FILE)


def find_results(run: str | Path) -> Path:
    """The folder holding ``pairs.jsonl`` for ``run``: itself, or one ``eval*`` folder below it.

    Lets ``cgrpo report runs/demo`` work when a training run keeps its evaluation in
    ``runs/demo/eval``.
    """
    run = Path(run)
    if (run / RECORDS_FILE).is_file():
        return run
    if run.is_file() and run.name == RECORDS_FILE:
        return run.parent
    below = sorted(p.parent for p in run.glob(f"*/{RECORDS_FILE}")) if run.is_dir() else []
    if len(below) == 1:
        return below[0]
    if len(below) > 1:
        raise ValueError(
            f"{run} holds several evaluations ({', '.join(str(p) for p in below)}); "
            "name one of them"
        )
    raise FileNotFoundError(
        f"no {RECORDS_FILE} in {run} or its subfolders (run `cgrpo eval` first)"
    )


def resolve_image(results_dir: Path, image: str) -> Path:
    """An image path from a record: absolute, or relative to the results folder."""
    p = Path(image)
    return p if p.is_absolute() else results_dir / p


__all__ = [
    "BASE_FIELDS",
    "CSV_FILE",
    "META_FILE",
    "RECORDS_FILE",
    "ResultStore",
    "find_results",
    "metric_names",
    "read_records",
    "resolve_image",
    "write_csv",
    "write_records",
]
