"""Checkpoints: written atomically, complete enough to resume exactly.

A checkpoint directory holds ``adapter.safetensors`` (the LoRA weights),
``training_state.pt`` (optimizer, LR scheduler and RNG states; plain tensors and numbers,
loaded with ``weights_only=True``), ``state.json`` (the step) and ``config.yaml``.
Every random draw of a run is derived from ``(seed, step)``, so the step number is what
makes a resumed run continue exactly; the RNG states are saved as well for code that
draws from the global generators.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from cgrpo.config.train import Config, save_config
from cgrpo.policies.base import Policy

CHECKPOINT_PREFIX = "step-"


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"{CHECKPOINT_PREFIX}{step:06d}"


def save_checkpoint(
    run_dir: Path,
    step: int,
    policy: Policy,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    config: Config,
    keep: int = 2,
) -> Path:
    """Write checkpoint ``step`` via a temporary directory and an atomic rename."""
    final = checkpoint_dir(run_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    policy.save_adapter(tmp)
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        },
        tmp / "training_state.pt",
    )
    (tmp / "state.json").write_text(json.dumps({"step": step, "time": time.time()}))
    save_config(config, tmp / "config.yaml")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _prune(final.parent, keep)
    return final


def _prune(folder: Path, keep: int) -> None:
    done = list_checkpoints(folder.parent)
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (half-written ``.tmp`` ones are ignored)."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [
        p
        for p in folder.iterdir()
        if p.is_dir()
        and p.name.startswith(CHECKPOINT_PREFIX)
        and not p.name.endswith(".tmp")
        and (p / "state.json").is_file()
    ]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]))


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
    return int(json.loads((path / "state.json").read_text())["step"])
