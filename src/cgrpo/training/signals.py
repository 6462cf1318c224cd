"""SIGTERM behaves like Ctrl-C, and neither lands in the middle of a weight update.

Clusters stop jobs with SIGTERM (SLURM, Kubernetes, ``docker stop``), people with Ctrl-C
(SIGINT). Inside :class:`StopSignals` both raise :class:`StopRequested`, a
``KeyboardInterrupt``, so one ``except`` clause saves a checkpoint for either. While held
(an optimizer step in progress, a checkpoint being written) a signal is remembered and
raised when the hold ends, so a checkpoint never records a half-applied update.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequested(KeyboardInterrupt):
    """A stop signal arrived; ``exit_code`` is the shell's convention, 128 + the signal."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.name = signal.Signals(signum).name
        super().__init__(self.name)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def exit_code(interrupt: KeyboardInterrupt) -> int:
    """128 + the signal for a :class:`StopRequested`, else 130 (a plain Ctrl-C)."""
    return interrupt.exit_code if isinstance(interrupt, StopRequested) else 128 + signal.SIGINT


class StopSignals:
    """Route SIGINT and SIGTERM to :class:`StopRequested` while the context is active.

    Handlers can only be installed from the main thread; elsewhere the context does
    nothing. The previous handlers come back on exit. ``defer=True`` only records signals
    in ``pending`` (multi-process runs agree on it at a step boundary and stop together).
    """

    def __init__(self, defer: bool = False) -> None:
        self.defer = defer
        self.pending: int | None = None
        self._holds: set[object] = set()
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if self._holds or self.defer:
            self.pending = self.pending or signum
            return
        raise StopRequested(signum)

    def hold(self, key: object) -> None:
        """Hold signals back until :meth:`release` of every key held (idempotent per key)."""
        self._holds.add(key)

    def release(self, key: object) -> None:
        """Drop the hold ``key``; the last one raises a signal that arrived meanwhile."""
        self._holds.discard(key)
        if not self._holds and not self.defer and self.pending is not None:
            signum, self.pending = self.pending, None
            raise StopRequested(signum)

    @contextmanager
    def held(self) -> Iterator[None]:
        """Hold signals for the block; one that arrived is raised after it (if the block
        itself did not fail)."""
        key = object()
        self.hold(key)
        try:
            yield
        except BaseException:
            self._holds.discard(key)
            raise
        self.release(key)
