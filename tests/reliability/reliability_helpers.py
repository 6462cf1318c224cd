"""Helpers of the reliability matrix: the CLI in a subprocess and its one-line messages."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from cgrpo.training import faults


def run_cli(*args: str, fault: str | None = None, cwd: Path | None = None, timeout: float = 400):
    """``python -m cgrpo.cli ARGS`` in a fresh process (``fault``: ``CGRPO_FAULT``)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop(faults.ENV, None)
    if fault:
        env[faults.ENV] = fault
    return subprocess.run(
        [sys.executable, "-m", "cgrpo.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=cwd,
    )


def one_line(stderr: str) -> str:
    """The last line of stderr, after checking that no traceback was printed."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines, "nothing on stderr"
    return lines[-1]
