"""Run outputs: metrics.jsonl, TensorBoard events, Weights & Biases, sample grids."""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import string
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cgrpo.config.sections import WandbConfig
from cgrpo.training.faults import fault_point

log = logging.getLogger("cgrpo.train")


class MetricsWriter:
    """Appends one JSON line per logged step and mirrors scalars to TensorBoard and, when
    ``wandb`` names a project, to Weights & Biases (with images and tables, see
    :class:`WandbRun`)."""

    def __init__(
        self,
        run_dir: Path,
        tensorboard: bool = True,
        resumed_at: int | None = None,
        wandb: WandbConfig | None = None,
        config: dict[str, Any] | None = None,
    ) -> None:
        """``resumed_at``: the step a resumed run continues from (TensorBoard then hides
        what an earlier attempt logged after it). ``config``: the resolved config, for W&B."""
        self.path = Path(run_dir) / "metrics.jsonl"
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            purge = None if resumed_at is None else resumed_at + 1
            self._tb = SummaryWriter(str(Path(run_dir) / "tensorboard"), purge_step=purge)
        self.wandb = None
        if wandb is not None and wandb.project is not None:
            self.wandb = WandbRun(run_dir, wandb, config or {}, resumed=resumed_at is not None)

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        row = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        fault_point("metrics")
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, int | float) and math.isfinite(v):
                    self._tb.add_scalar(k, v, step)
            self._tb.flush()
        if self.wandb is not None:
            self.wandb.log(step, row)

    def image(self, name: str, image: Any, step: int) -> None:
        """A PIL image (a sample grid) for the dashboards that show images (W&B)."""
        if self.wandb is not None:
            self.wandb.image(name, image, step)

    def table(self, name: str, markdown: str, step: int) -> None:
        """A markdown table (the held-out before/after table) as a W&B table."""
        if self.wandb is not None and markdown:
            self.wandb.table(name, markdown, step)

    def truncate_after(self, step: int) -> None:
        """Drop lines past ``step`` (a resumed run rewrites the steps after its checkpoint).

        A torn last line (a kill mid-append) is dropped with a warning; any other line
        that is not JSON is an error naming the file and line.
        """
        if not self.path.is_file():
            return
        lines = self.path.read_bytes().decode("utf-8", errors="replace").splitlines()
        keep = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                if number == len(lines):
                    log.warning("%s: dropping a torn last line (%d): %s", self.path, number, e)
                    continue
                raise ValueError(f"{self.path}:{number}: not a JSON line ({e})") from None
            if not isinstance(row, dict) or not isinstance(row.get("step"), int):
                raise ValueError(f"{self.path}:{number}: a metrics line needs an integer 'step'")
            if row["step"] <= step:
                keep.append(line)
        tmp = self.path.with_name(self.path.name + ".tmp")  # a kill leaves the old or the new
        tmp.write_text("".join(line + "\n" for line in keep))
        fault_point("metrics.truncate", tmp)
        os.replace(tmp, self.path)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None


def check_wandb(options: WandbConfig) -> None:
    """Raise :class:`cgrpo.extras.MissingExtra` if ``options`` ask for W&B and it is not
    installed (nothing is imported when they do not)."""
    if options.project is not None:
        from cgrpo.extras import require_extra

        require_extra("wandb", "wandb", "logging.wandb")


class WandbRun:
    """One W&B run per run directory: per-step metrics, images, tables and the config.

    The W&B run id is kept in ``<run>/wandb.json``, so ``cgrpo train --resume`` continues the
    same W&B run (W&B keeps steps in order: steps an earlier attempt logged past the
    checkpoint stay as they were, and their re-run values are not logged again). Files go
    to ``<run>/wandb/``; ``mode: offline`` writes only there (``wandb sync`` uploads them).
    """

    ID_FILE = "wandb.json"

    def __init__(
        self, run_dir: Path, options: WandbConfig, config: dict[str, Any], resumed: bool
    ) -> None:
        from cgrpo.extras import require_extra

        wandb = require_extra("wandb", "wandb", "logging.wandb")
        run_dir = Path(run_dir)
        id_file = run_dir / self.ID_FILE
        run_id = None
        if resumed and id_file.is_file():
            try:
                run_id = json.loads(id_file.read_text())["id"]
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{id_file}: not a W&B run id file ({e})") from None
        if run_id is None:
            # W&B's own id form: 8 lower-case letters and digits
            run_id = "".join(
                secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8)
            )
            id_file.write_text(json.dumps({"id": run_id}) + "\n")
        self._wandb = wandb
        self._last_step = -1
        try:
            self.run = wandb.init(
                project=options.project,
                entity=options.entity,
                mode=options.mode,
                tags=list(options.tags) or None,
                name=run_dir.resolve().name,
                id=run_id,
                resume="allow",
                dir=str(run_dir),
                config=config,
                reinit="create_new",
                settings=wandb.Settings(silent=True, console="off", x_disable_stats=True),
            )
        except wandb.errors.Error as e:  # e.g. online without an API key
            raise ValueError(
                f"logging.wandb: W&B did not start ({e}); mode: offline needs no account"
            ) from None

    def _step_ok(self, step: int) -> bool:
        # W&B refuses a step below the last one it holds (a resumed run re-runs some).
        if step < self._last_step:
            return False
        self._last_step = step
        return True

    def log(self, step: int, row: dict[str, Any]) -> None:
        values = {
            k: v
            for k, v in row.items()
            if k != "step" and isinstance(v, int | float) and not isinstance(v, bool)
        }
        if self._step_ok(step):
            self.run.log(values, step=step)

    def image(self, name: str, image: Any, step: int) -> None:
        if self._step_ok(step):
            self.run.log({name: self._wandb.Image(image)}, step=step)

    def table(self, name: str, markdown: str, step: int) -> None:
        columns, rows = markdown_table(markdown)
        if self._step_ok(step):
            self.run.log({name: self._wandb.Table(columns=columns, data=rows)}, step=step)

    def finish(self) -> None:
        self.run.finish()


def markdown_table(markdown: str) -> tuple[list[str], list[list[str]]]:
    """``(header, rows)`` of a pipe table (the separator line dropped, cells stripped)."""
    lines = [line.strip().strip("|") for line in markdown.strip().splitlines()]
    cells = [[c.strip() for c in line.split("|")] for line in lines if line]
    body = [r for r in cells[1:] if not all(set(c) <= set("-: ") for c in r)]
    return cells[0], body


def _plain(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return v.item() if v.numel() == 1 else v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v
