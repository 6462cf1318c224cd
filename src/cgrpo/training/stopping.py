"""How a run ends early: a signal or a known fault, one line for the user, exit status.

The trainer turns a stop signal into :class:`Interrupted` and a fault it can name -- a
reward that cannot score (:class:`~cgrpo.rewards.base.RewardFailure`), a time-out, a full
disk, a bad input met mid-run -- into :class:`TrainingFailed`, both after saving a checkpoint of the completed
steps where it can. ``str(e)`` is the whole message: where it stopped, why, what was saved
and the command that continues the run.
"""

from __future__ import annotations

import errno

from cgrpo.rewards.base import RewardFailure
from cgrpo.training.distributed import lost_peer

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


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


def is_disk_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in DISK_FULL


def failure_cause(error: BaseException) -> str | None:
    """One line naming a fault a user can act on, or None for anything else (a bug).

    Besides reward failures, time-outs, full disks, another process of the run lost
    (:func:`~cgrpo.training.distributed.lost_peer`), that is what the command line
    reports as one line anyway: bad values or files (``ValueError``, ``OSError``), such
    as an unreadable image met in the middle of a run.
    """
    if (lost := lost_peer(error)) is not None:
        return lost
    if isinstance(error, TimeoutError):
        cause = f"timed out ({error})"
    elif is_disk_full(error):
        cause = f"disk full ({error})"
    elif isinstance(error, RewardFailure | ValueError | OSError):
        cause = str(error)
    else:
        return None
    return " ".join(cause.split())


def resume_command(run_dir: object) -> str:
    return f"continue with: cgrpo train --resume {run_dir}"
