"""Helpers of the reliability tests: the CLI in a subprocess or a killed fork, its one-line
messages, what a run logged, and a decompression bomb."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import torch

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


def fork() -> int:
    """``os.fork()``, with the child's torch held to one thread. A parent that has run torch
    ops on several threads leaves an OpenMP pool that does not survive a fork: the child's
    first parallel region waits forever on threads that were not copied."""
    pid = os.fork()
    if pid == 0:
        torch.set_num_threads(1)
    return pid


def killed_by_fault(argv: list[str], fault: str) -> bool:
    """Run the command line (``cgrpo.cli.main(argv)``) in a forked child with ``CGRPO_FAULT``
    set to ``fault``; True if the fault's SIGKILL ended it. Forking keeps torch imported,
    so a case costs the training it does, not a fresh interpreter."""
    from cgrpo.cli import main

    pid = fork()
    if pid == 0:  # the child: run, then leave without the parent's exit handlers
        os.environ[faults.ENV] = fault
        faults.reset()
        try:
            main(argv)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def killed_after(argv: list[str], delay: float) -> bool:
    """Run the command line in a forked child and SIGKILL it ``delay`` seconds after it
    started, wherever it is; True if it was killed, False if it ended first (status 0)."""
    from cgrpo.cli import main

    pid = fork()
    if pid == 0:
        faults.reset()
        code = 1
        try:
            code = main(argv)
        finally:
            os._exit(code)
    deadline = time.monotonic() + delay
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, (argv, status)
            return False
        time.sleep(0.002)
    os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return True
    assert os.WEXITSTATUS(status) == 0, (argv, status)  # it ended just before the kill
    return False


def one_line(stderr: str) -> str:
    """The last line of stderr, after checking that no traceback was printed."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines, "nothing on stderr"
    return lines[-1]


def metric_steps(run: Path) -> list[int]:
    """The steps ``run/metrics.jsonl`` holds, in file order."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["step"] for line in lines]


def bomb_png(width: int, height: int) -> bytes:
    """A PNG that declares ``width x height`` pixels but holds almost no data: the header
    of a decompression bomb, which a reader must refuse before decoding."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )
