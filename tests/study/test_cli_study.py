"""`cgrpo study --quick` end to end: runs, resume, tables, plots and the report page."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def cgrpo(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "cgrpo.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.mark.slow
def test_quick_study_runs_resumes_and_reports(tmp_path):
    out = tmp_path / "study"
    args = ["study", "--quick", "--arms", "naive,sars+tdw", "--out", str(out), "--jobs", "2"]
    first = cgrpo(*args)
    assert first.returncode == 0, first.stderr[-2000:]
    runs = sorted(p.relative_to(out / "runs").as_posix() for p in (out / "runs").glob("*/seed-*"))
    assert runs == ["naive/seed-0", "naive/seed-1", "sars+tdw/seed-0", "sars+tdw/seed-1"]
    for run in runs:
        config = (out / "runs" / run / "config.yaml").read_text()
        assert f"seed: {run[-1]}" in config
        strategy = "linear" if run.startswith("naive") else "sars"
        assert f"strategy: {strategy}" in config

    summary = json.loads((out / "summary.json").read_text())
    assert summary["arms"] == {"naive": [0, 1], "sars+tdw": [0, 1]}
    assert summary["baseline"] == "naive"
    kinds = {(r["arm"], r["kind"]) for r in summary["per_arm"]}
    assert ("base", "all") in kinds and ("sars+tdw", "property") in kinds
    metrics = set(summary["per_arm"][0]["metrics"])
    assert {"toy-prompt", "toy-id", "gt-colour", "gt-scene"} <= metrics
    assert [r["arm"] for r in summary["paired"]] == ["sars+tdw"] * len(summary["paired"])
    assert {r["arm"] for r in summary["change"]} == {"naive", "sars+tdw"}
    for name in ("pareto.png", "curves.png", "grids/compare.png", "grids/naive.png"):
        assert (out / name).stat().st_size > 1000, name
    html = (out / "report" / "report.html").read_text()
    assert "Difference to naive" in html and "src='../pareto.png'" in html
    sources = re.findall(r"<img[^>]* src='([^']+)'", html)
    assert len(sources) >= 4
    for src in sources:  # every image the page shows exists where the page looks
        assert src.startswith("data:") or (out / "report" / src).is_file(), src
    assert "| naive | property | 2 |" in first.stdout

    # finished runs are skipped: nothing retrains, the report is rebuilt
    adapter = out / "runs" / "naive" / "seed-0" / "final" / "adapter.safetensors"
    stamp = adapter.stat().st_mtime_ns
    again = cgrpo(*args)
    assert again.returncode == 0, again.stderr[-2000:]
    assert adapter.stat().st_mtime_ns == stamp
    log = (out / "logs" / "naive-seed-0.log").read_text()
    assert log.count("$ ") == 1

    # a run stopped before its first checkpoint (no checkpoints, no final/) trains again
    stopped = out / "runs" / "sars+tdw" / "seed-1"
    for name in ("final", "checkpoints"):
        shutil.rmtree(stopped / name, ignore_errors=True)
    third = cgrpo(*args)
    assert third.returncode == 0, third.stderr[-2000:]
    assert (stopped / "final" / "adapter.safetensors").is_file()
    assert (out / "logs" / "sars+tdw-seed-1.log").read_text().count("$ ") == 2


def test_study_errors_are_one_line(tmp_path):
    bad = cgrpo("study", "--quick", "--arms", "nope", "--out", str(tmp_path / "s"))
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "cgrpo: config error: --arms = 'nope': choose from naive, sars, tdw, sars+tdw"
    ]
    missing = cgrpo("study", "--study", str(tmp_path / "none.yaml"))
    assert missing.returncode == 2 and "none.yaml" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
