"""How a run ends early: a signal or a known fault, one line for the user, exit status.

The trainer turns a stop signal into :class:`Interrupted`, a fault it can name (see
:func:`failure_cause`) into :class:`TrainingFailed`, and any other error -- a bug -- into
:class:`TrainingCrashed`, whose ``__cause__`` is that error with its traceback; each after
saving a checkpoint of the completed steps where it can. ``str(e)`` is the whole message:
where it stopped, why, what was saved and the command that continues the run. The
traceback of either kind of failure also goes to ``RUN/error.log``, which the line names.
"""

from __future__ import annotations

import errno
import time
import traceback
from pathlib import Path

from cgrpo.config.schema import ConfigError
from cgrpo.data.base import BadItem
from cgrpo.data.skipping import TooManyBadItems
from cgrpo.rewards.base import RewardFailure
from cgrpo.training.distributed import lost_peer
from cgrpo.training.writes import DiskFull, is_disk_full

#: Writes refused for good: a read-only file system, no permission.
NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


class Stopped(Exception):
    """Training ended early after saving what it could; ``exit_code`` for the shell."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Interrupted(Stopped):
    """Stopped by SIGINT or SIGTERM (exit status 128 + the signal)."""


class TrainingFailed(Stopped):
    """Stopped by a fault outside the trainer's control (exit status 1)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, 1)


class TrainingCrashed(TrainingFailed):
    """Stopped by an error no rule names (a bug); ``__cause__`` is that error."""


def failure_cause(error: BaseException) -> str | None:
    """One line naming a fault a user can act on, or None for anything else (a bug).

    Known faults: another process of the run lost
    (:func:`~cgrpo.training.distributed.lost_peer`), a reward that cannot score, a
    time-out, a full disk (:mod:`cgrpo.training.writes`), a file that may not be written
    (read-only, no permission), a config error met mid-run, a bad data item the dataset
    does not skip (:class:`~cgrpo.data.base.BadItem`) and too many bad data items.
    Any other ``ValueError`` or ``OSError`` keeps its traceback.
    """
    if (lost := lost_peer(error)) is not None:
        return lost
    if isinstance(error, TimeoutError):
        cause = f"timed out ({error})"
    elif isinstance(error, DiskFull):
        cause = str(error)
    elif is_disk_full(error):
        cause = f"disk full ({error})"
    elif isinstance(error, OSError) and error.errno in NOT_WRITABLE:
        cause = f"cannot write ({error})"
    elif isinstance(error, RewardFailure | ConfigError | TooManyBadItems | BadItem):
        cause = str(error)
    else:
        return None
    return " ".join(cause.split())


def resume_command(run_dir: object) -> str:
    return f"continue with: cgrpo train --resume {run_dir}"


def failure(
    error: BaseException, cause: str | None, where: str, saved: str, run_dir: Path, rank: int
) -> TrainingFailed:
    """The exception that ends a run stopped by ``error`` (``cause``: its one line, or None
    for a bug): :class:`TrainingFailed`, or :class:`TrainingCrashed` caused by ``error``.
    Its traceback goes to ``RUN/error.log`` first, which the message ends with."""
    logged = record_error(run_dir, rank, error, where)
    tail = f"; traceback in {logged}" if logged else ""
    if cause is not None:
        return TrainingFailed(
            f"training stopped {where}: {cause}; {saved}; {resume_command(run_dir)}{tail}"
        )
    detail = " ".join(str(error).split())[:300]
    crashed = TrainingCrashed(
        f"training failed {where}: {type(error).__name__}"
        + (f": {detail}" if detail else "")
        + f"; {saved}; {resume_command(run_dir)}{tail}"
    )
    crashed.__cause__ = error
    return crashed


def record_error(run_dir: Path, rank: int, error: BaseException, where: str) -> Path | None:
    """Append ``error``'s traceback to ``RUN/error.log`` (``error.rank<N>.log`` for the
    other processes); its path, or None where it cannot be written (a full disk)."""
    path = Path(run_dir) / ("error.log" if rank == 0 else f"error.rank{rank}.log")
    stamp = time.strftime("%Y-%m-%d %H:%M:%S %z")
    text = "".join(traceback.format_exception(error))
    try:
        with open(path, "a") as f:
            f.write(f"=== {stamp}: training stopped {where}\n{text}\n")
    except OSError:
        return None
    return path
