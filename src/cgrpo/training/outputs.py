"""What a run writes besides checkpoints and metrics: sample grids, the held-out check
before and after training (through :mod:`cgrpo.evaluation.heldout`), and ``summary.md``."""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from cgrpo.config.train import Config
from cgrpo.evaluation.harness import PolicyEvaluation
from cgrpo.evaluation.heldout import (
    HeldOutCheck,
    before_after_grid,
    held_out_summary,
    held_out_table,
)
from cgrpo.evaluation.output.plots import group_grid
from cgrpo.policies.base import Policy
from cgrpo.training.logging import MetricsWriter
from cgrpo.training.scoring import ScoredRewards
from cgrpo.training.seeds import generator_for
from cgrpo.training.writes import writing


class RunOutputs:
    """Grids, held-out check and summary of the :class:`~cgrpo.training.trainer.Trainer`."""

    config: Config
    run_dir: Path
    policy: Policy
    scorer: ScoredRewards
    is_main: bool
    step: int
    _held_out: HeldOutCheck | None
    _eval_results: dict[str, PolicyEvaluation]
    _last_rollout: Any  # (Rollout, RewardBatch) of the latest step
    metrics: MetricsWriter | None

    def _save_grid(self, step: int, max_groups: int = 4) -> None:
        rollout, rewards = self._last_rollout
        g = rollout.group_size
        n = min(max_groups, len(rollout) // g)
        labels = []
        for k in range(n * g):
            parts = [f"{name[:10]} {float(v[k]):.2f}" for name, v in rewards.columns.items()]
            labels.append("\n".join(parts))
        grid = group_grid(
            [rollout.examples[i * g].references[0] for i in range(n)],
            rollout.images[: n * g],
            g,
            [rollout.examples[i * g].prompt for i in range(n)],
            labels,
        )
        path = self.run_dir / "samples" / f"step-{step:06d}.png"
        with writing(path, "grid"):
            path.parent.mkdir(exist_ok=True)
            grid.save(path)
        if self.metrics is not None:
            self.metrics.image("samples", grid, step)

    # ------------------------------------------------------------------ held-out check
    def evaluate(self, adapter: bool = True) -> dict[str, Any]:
        """Held-out check through the evaluation harness (:mod:`cgrpo.evaluation.heldout`).

        ``adapter=False`` scores the base model (the adapter switched off). Writes the
        per-item records to ``heldout/<before|after>/`` and returns the means.
        """
        phase = "after" if adapter else "before"
        if self._held_out is None:
            self._held_out = HeldOutCheck.from_config(
                self.config,
                list(self.scorer.rewards.values()),
                generator_for(self.config.eval.seed, "eval-items"),
                offload_to=self.scorer.offload_to,
            )
        ctx = nullcontext() if adapter else self.policy.adapter_disabled()
        self.policy.eval()
        with ctx:
            result = self._held_out.run(self.policy)
        self._eval_results[phase] = result
        if self.is_main:
            with writing(self.run_dir / "heldout" / phase, "heldout"):
                self._held_out.save(self.run_dir, phase, result)
        return held_out_summary(result.records, phase)

    def _save_before_after_grid(self) -> None:
        """``before_after.png``: reference | base | trained, for held-out items."""
        if self._held_out is None or not {"before", "after"} <= self._eval_results.keys():
            return
        grid = before_after_grid(
            self._held_out.items,
            self._eval_results["before"],
            self._eval_results["after"],
            list(self.scorer.columns),
        )
        with writing(self.run_dir / "before_after.png", "grid"):
            grid.save(self.run_dir / "before_after.png")
        if self.metrics is not None:
            self.metrics.image("held_out/before_after", grid, self.step)

    def _write_json(self, name: str, data: Any) -> None:
        if self.is_main:
            with writing(self.run_dir / name, "json"):
                (self.run_dir / name).write_text(json.dumps(data, indent=2))

    def _write_summary(self, summary: dict[str, Any]) -> None:
        lines = [
            f"# cgrpo run `{self.run_dir.name}`",
            "",
            f"- backend: `{self.config.model.backend}`, data: `{self.config.data.name}`",
            f"- steps: {self.step}, group size {self.config.sampling.group_size}, "
            f"{self.config.sampling.groups_per_step} groups/step, "
            f"strategy `{self.config.advantage.strategy}`, "
            f"schedule `{self.config.advantage.schedule}`",
            "",
        ]
        table = held_out_table(self.run_dir)
        if table:
            lines += ["## Held-out rewards (deterministic sampling)", "", table, ""]
            if self.metrics is not None:
                self.metrics.table("held_out/table", table, self.step)
        if (self.run_dir / "before_after.png").is_file():
            lines += ["![held-out: reference | base | trained](before_after.png)", ""]
        lines += [
            "## Files",
            "",
            "- `metrics.jsonl`, `tensorboard/`: per-step metrics",
            "- `samples/`: reference | group grids",
            "- `final/`: trained adapter",
            "- `checkpoints/`: resumable checkpoints",
            "",
        ]
        with writing(self.run_dir / "summary.md", "summary"):
            (self.run_dir / "summary.md").write_text("\n".join(lines))
