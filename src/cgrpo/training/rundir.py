"""Run directories: where a new run may write, and what a resumed run may change.

A run marks its directory with ``run.json`` before writing anything else. ``cgrpo train``
writes a new run only into a new or empty directory, or into one of its own runs that
stopped before its first checkpoint, which starts again cleanly (its outputs are removed,
so ``metrics.jsonl`` never mixes two runs). A directory with files it did not write (an
evaluation folder, anything else) or with checkpoints (use ``--resume``) is refused.
``--resume`` of a run that stopped before its first checkpoint (preempted during start-up
or its first steps) starts it again the same way, with its saved config.

``config.yaml`` is written atomically (a temporary file renamed into place), so a kill
while it is written leaves the previous copy or none, never half a config.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from cgrpo import __version__
from cgrpo.config.schema import ConfigError
from cgrpo.config.train import Config, save_config
from cgrpo.training.checkpoint import list_checkpoints
from cgrpo.training.writes import writing

log = logging.getLogger("cgrpo.train")

MARKER = "run.json"
#: What a run writes into its directory (removed when a run restarts from step 0).
RUN_OUTPUTS = (
    "config.yaml",
    "config.yaml.tmp",
    "metrics.jsonl",
    "metrics.jsonl.tmp",
    "tensorboard",
    "samples",
    "checkpoints",
    "final",
    "heldout",
    "eval_before.json",
    "eval_after.json",
    "before_after.png",
    "summary.md",
    "wandb",
    "wandb.json",
)
#: Fields a resumed run must keep: they shape the adapter or what it was trained for.
FIXED_ON_RESUME = ("model.backend", "model.lora.rank", "model.lora.alpha", "model.lora.targets")


def check_output_path(path: Path, flag: str) -> None:
    """ConfigError if ``path`` is an existing file or lies below one."""
    path = Path(path)
    for part in (path, *path.parents):
        if part.exists() and not part.is_dir():
            where = "is a file" if part == path else f"lies below the file {part}"
            raise ConfigError(flag, str(path), f"{where}; a directory is needed")


def claim_for_new_run(run_dir: Path) -> bool:
    """Check that a new run may write into ``run_dir`` (ConfigError if not); True when it
    holds an earlier attempt of a run, stopped before its first checkpoint, to replace.
    Reads only: several processes may call it before the main one writes."""
    run_dir = Path(run_dir)
    check_output_path(run_dir, "--output")
    if not run_dir.is_dir() or not any(run_dir.iterdir()):
        return False
    if list_checkpoints(run_dir):
        raise ConfigError(
            "--output",
            str(run_dir),
            f"already holds a run; continue it with --resume {run_dir} or pick another --output",
        )
    if not (run_dir / MARKER).is_file():
        names = sorted(p.name for p in run_dir.iterdir())
        shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
        raise ConfigError(
            "--output",
            str(run_dir),
            f"holds files cgrpo train did not write ({shown}); pick a new or empty directory",
        )
    return True


def resumable_without_checkpoint(run_dir: Path) -> bool:
    """True for a run of cgrpo train (``run.json``) that has its config but no checkpoint
    at all, not even a damaged one: ``--resume`` starts it again from step 0."""
    run_dir = Path(run_dir)
    return (
        (run_dir / MARKER).is_file()
        and (run_dir / "config.yaml").is_file()
        and not list_checkpoints(run_dir)
    )


def start_run_dir(run_dir: Path, restart: bool, resumed: bool = False) -> None:
    """Create (or, with ``restart``, clear the outputs of) the directory and mark it;
    ``resumed``: the restart comes from ``--resume`` (the one line says so)."""
    run_dir = Path(run_dir)
    if restart:
        log.warning(
            "%s holds a run stopped before its first checkpoint; starting it again from step 0%s",
            run_dir,
            " with its saved config" if resumed else "",
        )
        for name in RUN_OUTPUTS:
            target = run_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)
    mark_run_dir(run_dir)


def missing_folders(run_dir: Path) -> list[Path]:
    """The folders of ``run_dir`` (itself first, then its parents) that do not exist yet."""
    return [p for p in (Path(run_dir), *Path(run_dir).parents) if not p.exists()]


def unclaim_run_dir(run_dir: Path, created: list[Path]) -> None:
    """Undo :func:`start_run_dir` and the config after a start-up error: remove the marker
    and the config, and the folders this attempt ``created`` that are empty again."""
    run_dir = Path(run_dir)
    for name in (MARKER, "config.yaml", "config.yaml.tmp"):
        (run_dir / name).unlink(missing_ok=True)
    for folder in created:
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def write_run_config(config: Config, run_dir: Path) -> None:
    """``run_dir/config.yaml``, replaced atomically (fsynced, then renamed into place)."""
    target = Path(run_dir) / "config.yaml"
    tmp = target.with_name(target.name + ".tmp")
    with writing(tmp, "config"):
        save_config(config, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)


def mark_run_dir(run_dir: Path) -> None:
    marker = Path(run_dir) / MARKER
    if not marker.is_file():
        marker.write_text(json.dumps({"cgrpo": __version__, "created": time.time()}) + "\n")


def _field(config: Config, dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def check_resume_compatible(saved: Config, new: Config) -> None:
    """ConfigError naming the first field ``new`` changes that a resumed run must keep."""
    for key in FIXED_ON_RESUME:
        before, after = _field(saved, key), _field(new, key)
        if before != after:
            raise ConfigError(
                key, after, f"the checkpoint was trained with {before!r}; a resume cannot change it"
            )

    def trained(config: Config) -> list[str]:
        return [
            f"{r.name}:{r.role}" + (f":{r.column}" if r.column else "")
            for r in config.trained_rewards
        ]

    if trained(saved) != trained(new):
        raise ConfigError(
            "rewards",
            trained(new),
            f"the checkpoint was trained with {trained(saved)}; a resume cannot change the "
            "trained rewards (monitors may change)",
        )
