"""Writes that name their file when the disk is full.

A full disk shows up in many forms: ``OSError(ENOSPC)`` without a file name (a buffered
write that fails on flush), safetensors' ``SafetensorError`` ("... os error 28"), torch's
``RuntimeError`` ("enforce fail at inline_container.cc ... unexpected pos") from
``torch.save`` to a path, an ``OSError`` re-raised from TensorBoard's writer thread.
:func:`writing` turns each of them into one :class:`DiskFull` that names the file being
written and the space left on its file system; :func:`save_torch` writes through a Python
file object, so a full disk inside ``torch.save`` is a plain ``OSError`` to begin with.
"""

from __future__ import annotations

import errno
import re
import shutil
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

from cgrpo.training.faults import fault_point

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
# how a full disk reads in errors that are no OSError (safetensors' Rust I/O error)
_DISK_FULL_TEXT = re.compile(r"No space left on device|Disk quota exceeded|os error (28|122)\b")
# torch.save to a path: its C++ writer reports a short write only as a position mismatch
_TORCH_SHORT_WRITE = re.compile(r"inline_container\.cc.*unexpected pos")
_LOW_SPACE = 64 << 20  # below this, a short write is taken for a full disk


class DiskFull(OSError):
    """A write that met a full disk or quota; ``filename`` is the file being written."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(errno.ENOSPC, reason, str(path))
        self.message = f"disk full: could not write {path} ({reason}; {free_space(path)})"

    def __str__(self) -> str:
        return self.message


def free_space(path: Path) -> str:
    """``"1.2 GiB free on its file system"`` for the nearest existing folder of ``path``."""
    for folder in (Path(path), *Path(path).parents):
        if folder.is_dir():
            return f"{_size(shutil.disk_usage(folder).free)} free on its file system"
    return "free space unknown"


def _size(n: float) -> str:
    if n < 1024:
        return f"{n:.0f} B"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024
        if n < 1024:
            return f"{n:.1f} {unit}"
    return f"{n / 1024:.1f} TiB"


def is_disk_full(error: BaseException) -> bool:
    """True for a full disk or quota in any of the forms the module docstring lists."""
    if isinstance(error, OSError):
        return error.errno in DISK_FULL
    return bool(_DISK_FULL_TEXT.search(str(error)))


def _short_write(error: BaseException, path: Path) -> bool:
    if not _TORCH_SHORT_WRITE.search(str(error)):
        return False
    folder = next((p for p in Path(path).parents if p.is_dir()), None)
    return folder is not None and shutil.disk_usage(folder).free < _LOW_SPACE


def _through(tb: TracebackType | None, others: Mapping[str, Path]) -> Path | None:
    """The path of ``others`` whose key is part of a source file the traceback passes."""
    while tb is not None:
        source = tb.tb_frame.f_code.co_filename
        for key, path in others.items():
            if key in source:
                return path
        tb = tb.tb_next
    return None


@contextmanager
def writing(path: Path, label: str, others: Mapping[str, Path] | None = None) -> Iterator[None]:
    """Raise a full-disk error of the block as :class:`DiskFull` naming ``path``: or the
    file the error itself names, or ``others[key]`` when the error passed through a module
    whose source path holds ``key`` (``{"tensorboard": run / "tensorboard"}``).
    ``label`` names the fault point ``write.<label>`` (:mod:`cgrpo.training.faults`)."""
    try:
        fault_point(f"write.{label}", Path(path))
        yield
    except DiskFull:
        raise
    except Exception as error:
        if not (is_disk_full(error) or _short_write(error, Path(path))):
            raise
        named = getattr(error, "filename", None)
        target = Path(named) if named else _through(error.__traceback__, others or {})
        reason = getattr(error, "strerror", None) or " ".join(str(error).split())
        raise DiskFull(target or Path(path), reason) from error


def save_torch(obj: Any, path: Path) -> None:
    """``torch.save`` through a Python file object: a full disk is an ``OSError``, not
    the C++ writer's position mismatch."""
    import torch

    with open(path, "wb") as f:
        torch.save(obj, f)


@contextmanager
def quiet_writer_threads() -> Iterator[None]:
    """While active, a writer thread (TensorBoard's) that dies of a full disk prints no
    traceback: the writer raises the same error in the main thread, where
    :func:`writing` names it."""
    previous = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_value is not None and is_disk_full(args.exc_value):
            return
        previous(args)

    threading.excepthook = hook
    try:
        yield
    finally:
        threading.excepthook = previous
