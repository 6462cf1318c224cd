"""Fault injection at named points of a run, for the reliability tests.

``CGRPO_FAULT="<point>[#<n>]:<action>[,...]"`` makes the ``n``-th time (default: the first)
the process reaches ``<point>`` do ``<action>``:

* ``kill`` -- SIGKILL itself (a power cut as far as the files are concerned);
* ``tear`` -- cut the file just written to half its size, then SIGKILL (a kill mid-write);
* ``sigterm`` / ``sigint`` -- send itself that signal (the cluster's stop, Ctrl-C);
* ``enospc`` -- raise ``OSError(ENOSPC)`` (a full disk), without a file name, as a
  buffered write does;
* ``full`` -- make the file about to be written a link to ``/dev/full``, so that the real
  writer meets a full disk (at the ``write.*`` points, for writers that open the path).

Points: ``startup`` (CLI, before the trainer is built), ``setup.build`` (the run directory
claimed, the model not yet built), ``setup`` (trainer built),
``eval.before``, ``step`` (before each training step), ``eval.after``, ``metrics``
(before a metrics line is appended), ``metrics.truncate`` (a resume's rewrite of
``metrics.jsonl`` written, not yet in place), and in the checkpoint writer ``checkpoint.start``,
``checkpoint.file`` (after each file), ``checkpoint.written`` (files and manifest done,
before the rename), ``checkpoint.swap`` (an older copy of the same step moved aside, the
new one not yet in place) and ``checkpoint.renamed`` (in place, before pruning); the
final adapter's write has the same points named ``final.*``. Before each file a run
writes, ``write.<what>`` (:func:`cgrpo.training.writes.writing`): ``write.adapter``,
``write.training_state``, ``write.state``, ``write.checkpoint_config``, ``write.manifest``,
``write.directory``, ``write.config``, ``write.metrics``, ``write.grid``, ``write.json``,
``write.heldout``, ``write.summary``.
Unset (always, outside tests) it does nothing.
"""

from __future__ import annotations

import errno
import os
import signal
from collections import Counter
from pathlib import Path

ENV = "CGRPO_FAULT"
_reached: Counter[str] = Counter()


def fault_point(name: str, path: Path | None = None) -> None:
    """Do the action ``CGRPO_FAULT`` asks for at this point, if any (``path``: the file
    just written, for ``tear``)."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    _reached[name] += 1
    for item in spec.split(","):
        where, _, action = item.strip().rpartition(":")
        point, _, nth = where.partition("#")
        if point == name and _reached[name] == int(nth or 1):
            _act(action, name, path)


def reset() -> None:
    """Count points from zero again (tests that run several trainings in one process)."""
    _reached.clear()


def _act(action: str, name: str, path: Path | None) -> None:
    if action == "tear" and path is not None:
        size = path.stat().st_size
        with open(path, "r+b") as f:
            f.truncate(size // 2)
        action = "kill"
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action in ("sigterm", "sigint"):
        os.kill(os.getpid(), signal.SIGTERM if action == "sigterm" else signal.SIGINT)
    elif action == "enospc":
        raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (injected at {name})")
    elif action == "full" and path is not None:
        path.unlink(missing_ok=True)
        path.symlink_to("/dev/full")
    else:
        raise ValueError(f"{ENV}: unknown action {action!r} at {name!r}")
