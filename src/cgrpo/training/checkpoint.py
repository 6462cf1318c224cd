"""Checkpoints that survive a kill at any moment, verified when read back.

A checkpoint directory ``checkpoints/step-NNNNNN/`` holds ``adapter.safetensors`` (the LoRA
weights), ``training_state.pt`` (optimizer, LR scheduler and RNG states; plain tensors and
numbers, loaded with ``weights_only=True``), ``state.json`` (the step), ``config.yaml`` and
``manifest.json`` (size and SHA-256 of every other file). Every random draw of a run is
derived from ``(seed, step)``, so the step number is what makes a resumed run continue
exactly; the RNG states are saved as well for code that draws from the global generators.

Writing (:func:`write_directory`), so that a kill at any point leaves a usable copy:

1. every file goes into ``<name>.tmp/`` and is fsynced; the manifest is written last;
2. an existing ``<name>`` (the same step saved again) is renamed to ``<name>.old``;
3. ``<name>.tmp`` is renamed to ``<name>`` and the parent directory fsynced;
4. only then are ``<name>.old`` and checkpoints beyond ``keep`` removed.

Reading (:func:`latest_checkpoint`) takes the newest checkpoint whose files match its
manifest (``<name>.old`` stands in for a missing ``<name>``); a damaged one is skipped with
one warning line naming the file at fault.

A full disk anywhere in a write is a :class:`~cgrpo.training.writes.DiskFull` naming the file
(:mod:`cgrpo.training.writes`), and leaves the previous checkpoint in place.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from cgrpo.config.train import Config, save_config
from cgrpo.policies.base import Policy
from cgrpo.training.faults import fault_point
from cgrpo.training.writes import save_torch, writing

log = logging.getLogger("cgrpo.checkpoint")

CHECKPOINT_PREFIX = "step-"
MANIFEST = "manifest.json"
_NAME = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)(\.old)?$")


class DamagedCheckpoint(ValueError):
    """A checkpoint or adapter directory whose files do not match its manifest."""


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"{CHECKPOINT_PREFIX}{step:06d}"


def checkpoint_step(path: Path) -> int:
    """The step of a checkpoint directory (``step-000012`` or ``step-000012.old``)."""
    match = _NAME.match(Path(path).name)
    if not match:
        raise ValueError(f"{path} is not a checkpoint directory")
    return int(match.group(1))


# ---------------------------------------------------------------- durable directories


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
        os.fsync(f.fileno())
    return h.hexdigest()


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(directory: Path, **extra: Any) -> None:
    """Fsync every file of ``directory`` and record its size and SHA-256 in the manifest."""
    files = {
        p.relative_to(directory).as_posix(): {"size": p.stat().st_size, "sha256": _digest(p)}
        for p in _files(directory)
    }
    target = directory / MANIFEST
    with writing(target, "manifest"):
        target.write_text(json.dumps({**extra, "files": files}, indent=1))
        _fsync(target)
    _fsync(directory)


def verify_directory(directory: Path) -> None:
    """Raise :class:`DamagedCheckpoint` naming the first file that does not match the
    manifest. A directory without a manifest (written before manifests existed) passes."""
    directory = Path(directory)
    manifest = directory / MANIFEST
    if not manifest.is_file():
        if (directory / "adapter.safetensors").is_file():
            return
        raise DamagedCheckpoint(f"{directory} holds no adapter.safetensors")
    try:
        files = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError, TypeError) as e:
        raise DamagedCheckpoint(f"{manifest} is unreadable ({e})") from None
    for name, want in files.items():
        path = directory / name
        if not path.is_file():
            raise DamagedCheckpoint(f"{path} is missing")
        size = path.stat().st_size
        if size != want["size"]:
            raise DamagedCheckpoint(f"{path} has {size} bytes, the manifest says {want['size']}")
        if _digest(path) != want["sha256"]:
            raise DamagedCheckpoint(f"{path} does not match its SHA-256 in the manifest")


@contextmanager
def write_directory(final: Path, label: str, **manifest_extra: Any) -> Iterator[Path]:
    """Yield a temporary directory to fill; on success it replaces ``final`` atomically.

    A failure while filling it (a full disk) removes the temporary directory and leaves
    ``final`` untouched. ``label`` names the fault points (``<label>.start`` ...).
    """
    final = Path(final)
    tmp = final.with_name(final.name + ".tmp")
    old = final.with_name(final.name + ".old")
    fault_point(f"{label}.start")
    if tmp.exists():
        shutil.rmtree(tmp)
    with writing(tmp, "directory"):
        tmp.mkdir(parents=True)
    try:
        yield tmp
        write_manifest(tmp, **manifest_extra)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fault_point(f"{label}.written")
    if final.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
        fault_point(f"{label}.swap")
    os.replace(tmp, final)
    _fsync(final.parent)
    fault_point(f"{label}.renamed")
    if old.exists():
        shutil.rmtree(old)


def _write_file(path: Path, label: str, write: Callable[[Path], None]) -> None:
    with writing(path, label):
        write(path)
    fault_point("checkpoint.file", path)


# ---------------------------------------------------------------- checkpoints


def save_checkpoint(
    run_dir: Path,
    step: int,
    policy: Policy,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    config: Config,
    keep: int = 2,
    state: dict[str, Any] | None = None,
) -> Path:
    """Write checkpoint ``step`` (see the module docstring), then prune to ``keep``;
    ``state``: more JSON fields for ``state.json`` (read back by :func:`checkpoint_state`)."""
    final = checkpoint_dir(run_dir, step)
    state = dict(state or {})
    training_state = {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    with write_directory(final, "checkpoint", step=step) as tmp:
        _write_file(tmp / "adapter.safetensors", "adapter", lambda p: policy.save_adapter(p.parent))
        _write_file(
            tmp / "training_state.pt",
            "training_state",
            lambda p: save_torch(training_state, p),
        )
        _write_file(
            tmp / "state.json",
            "state",
            lambda p: p.write_text(json.dumps({"step": step, "time": time.time(), **state})),
        )
        _write_file(tmp / "config.yaml", "checkpoint_config", lambda p: save_config(config, p))
    _prune(final, keep)
    return final


def save_adapter_atomically(policy: Policy, directory: Path) -> None:
    """The trained adapter (``final/``), written and verified like a checkpoint."""
    with (
        write_directory(directory, "final") as tmp,
        writing(tmp / "adapter.safetensors", "adapter"),
    ):
        policy.save_adapter(tmp)


def _prune(newest: Path, keep: int) -> None:
    """Keep ``newest`` and the ``keep - 1`` checkpoints before it. Checkpoints after it are
    from an abandoned future (the run resumed from an older one past damaged ones) and
    go, as do half-written ``.tmp`` and leftover ``.old`` directories."""
    step = checkpoint_step(newest)
    older = [p for p in list_checkpoints(newest.parent.parent) if checkpoint_step(p) < step]
    kept = {newest, *older[-(keep - 1) :]} if keep > 1 else {newest}
    for p in newest.parent.iterdir():
        if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX) and p not in kept:
            shutil.rmtree(p, ignore_errors=True)


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint directories of a run, oldest first, unverified: ``step-N``, or
    ``step-N.old`` where a kill left no ``step-N``; never half-written ``.tmp`` ones."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found: dict[int, Path] = {}
    for p in folder.iterdir():
        match = _NAME.match(p.name)
        if not match or not p.is_dir():
            continue
        step = int(match.group(1))
        if step not in found or not match.group(2):
            found[step] = p
    return [found[s] for s in sorted(found)]


def intact_checkpoints(run_dir: Path) -> Iterator[Path]:
    """Verified checkpoints, newest first; each damaged one is skipped with a warning."""
    for path in reversed(list_checkpoints(run_dir)):
        try:
            verify_directory(path)
        except DamagedCheckpoint as e:
            log.warning("skipping damaged checkpoint %s: %s", path.name, e)
            continue
        yield path


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest intact checkpoint of a run, or None."""
    return next(intact_checkpoints(run_dir), None)


def load_checkpoint(
    path: Path, policy: Policy, optimizer: torch.optim.Optimizer, scheduler: Any
) -> int:
    """Restore adapter, optimizer, scheduler and RNG states; return the step."""
    path = Path(path)
    policy.load_adapter(path)
    state = torch.load(path / "training_state.pt", map_location="cpu", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    if state.get("cuda_rng") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return int(checkpoint_state(path)["step"])


def checkpoint_state(path: Path) -> dict[str, Any]:
    """``state.json`` of a checkpoint: the step and the fields saved with it."""
    return json.loads((Path(path) / "state.json").read_text())
