"""The trainer's held-out check: base model vs trained adapter, through the evaluation harness.

:class:`HeldOutCheck` picks ``eval.num_items`` held-out items (a seeded subset of
``eval.data``, split ``heldout``), generates one image per item with deterministic sampling
and scores it with :func:`cgrpo.evaluation.harness.evaluate_policy`, the generation and
scoring path of ``cgrpo eval``. Every column of the config's rewards is scored and, when the
held-out data is the toy world, the ground-truth measures ``gt-colour``, ``gt-pattern``, ``gt-shape`` and ``gt-scene``
(:mod:`cgrpo.evaluation.benchmarks.toybench`), which no reward optimises.

Run-directory layout (read back with :func:`load_held_out`)::

    <run>/heldout/before/pairs.jsonl   one record per held-out item: the base model
    <run>/heldout/after/pairs.jsonl    the same items: the trained adapter
    <run>/heldout/<phase>/pairs.csv, eval.json, images/, references/
    <run>/eval_before.json, eval_after.json   means overall and per prompt kind

A record (layout in :mod:`cgrpo.evaluation.results`) holds ``key`` (the item, the same in
both phases), ``subject`` (the cluster: the toy identity, or the DreamBench subject),
``kind`` (prompt kind: toy ``recontext`` / ``property``), ``prompt``, ``image`` and
``scores`` ``{column: value}``. Each phase folder is an evaluation folder, so
``cgrpo report <run>/heldout/before <run>/heldout/after`` and ``cgrpo compare`` read it, and
:func:`cgrpo.evaluation.stats.tables.summarize` gives per-kind means with cluster-bootstrap CIs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cgrpo.evaluation.harness import (
    EvalItem,
    PolicyEvaluation,
    evaluate_policy,
    image_relpath,
    save_png,
)
from cgrpo.evaluation.results import (
    META_FILE,
    RECORDS_FILE,
    metric_names,
    read_records,
    write_records,
)
from cgrpo.evaluation.stats.scales import metric_label
from cgrpo.rewards.base import Reward

HELD_OUT_DIR = "heldout"
PHASES = ("before", "after")
"""``before``: the base model (adapter off); ``after``: the trained adapter."""
PROPERTY_KINDS = ("property", "property_modification")
"""Prompt kinds that ask to change the subject: where identity and prompt rewards compete."""


def held_out_items(dataset: Any, num_items: int, generator: torch.Generator) -> list[EvalItem]:
    """A seeded random subset of ``num_items`` examples of ``dataset`` as :class:`EvalItem` s.

    A random subset covers identities and prompt kinds evenly in expectation. Item ``i``
    gets index ``i`` (its noise seed) and a unique key (a repeated example key gets ``#i``).
    """
    pick = torch.randperm(len(dataset), generator=generator)[:num_items]
    items = [EvalItem.from_example(dataset[int(k)], i) for i, k in enumerate(pick)]
    seen: set[str] = set()
    for item in items:
        if item.key in seen:
            item.key = f"{item.key}#{item.index}"
        seen.add(item.key)
    return items


def ground_truth_metrics(dataset: Any) -> list[Reward]:
    """The toybench ground-truth measures (``HELDOUT_METRICS``) when ``dataset`` is the toy
    world; else none."""
    from cgrpo.evaluation.benchmarks.toybench import HELDOUT_METRICS, heldout_metric
    from cgrpo.world.dataset import ToyWorldDataset

    if not isinstance(dataset, ToyWorldDataset):
        return []
    return [heldout_metric(name, dataset.world) for name in HELDOUT_METRICS]


class ScoredOnDevice(Reward):
    """``reward`` kept off the accelerator between uses: moved to ``device`` for each batch
    it scores, then offloaded (the trainer's ``train.offload_rewards``)."""

    def __init__(self, reward: Reward, device: torch.device) -> None:
        super().__init__()
        self.reward, self.scoring_device = reward, device
        self.name, self.columns = reward.name, reward.columns

    def _score(self, request: Any) -> dict[str, torch.Tensor]:
        self.reward.to(self.scoring_device)
        try:
            return self.reward.score(request)
        finally:
            self.reward.offload()


@dataclass
class HeldOutCheck:
    """The held-out items, the metrics and the sampler settings of a run's before/after check."""

    items: list[EvalItem]
    metrics: list[Reward]
    gen_kwargs: dict[str, Any]
    base_seed: int
    batch_size: int
    data: str

    @classmethod
    def from_config(
        cls,
        config: Any,
        rewards: Sequence[Reward],
        pick: torch.Generator,
        offload_to: torch.device | None = None,
    ) -> HeldOutCheck:
        """The check of a :class:`~cgrpo.config.train.Config`, scoring with its built ``rewards``.

        ``pick`` seeds the choice of items (the trainer derives it from ``eval.seed``);
        ``offload_to``: the rewards wait on the CPU and score on this device.
        """
        from cgrpo.data.base import build_dataset

        ev = config.eval
        dataset = build_dataset(ev.data.name, ev.data.options, "heldout")
        return cls(
            items=held_out_items(dataset, ev.num_items, pick),
            metrics=[
                *(r if offload_to is None else ScoredOnDevice(r, offload_to) for r in rewards),
                *ground_truth_metrics(dataset),
            ],
            gen_kwargs={
                "num_steps": ev.num_steps,
                "shift": config.sampling.shift,
                "dynamic_shift": config.sampling.dynamic_shift,
            },
            base_seed=ev.seed,
            batch_size=config.sampling.chunk_size or 32,
            data=ev.data.name,
        )

    def run(self, policy: Any) -> PolicyEvaluation:
        """Generate and score every item with ``policy`` as it is (adapter on or off)."""
        return evaluate_policy(
            policy,
            self.items,
            self.metrics,
            gen_kwargs=self.gen_kwargs,
            base_seed=self.base_seed,
            batch_size=self.batch_size,
            keep_images=True,
        )

    def save(self, run_dir: str | Path, phase: str, evaluation: PolicyEvaluation) -> Path:
        """Write ``<run_dir>/heldout/<phase>/`` (records, images, settings); returns the folder."""
        from cgrpo.evaluation.resumable import save_references

        if phase not in PHASES:
            raise ValueError(f"held-out phase {phase!r}: choose one of {', '.join(PHASES)}")
        out = Path(run_dir) / HELD_OUT_DIR / phase
        by_key = {it.key: it for it in self.items}
        records = []
        for row, record in enumerate(evaluation.records):
            relpath = image_relpath(by_key[record["key"]], int(record["seed"]))
            if evaluation.images is not None:
                save_png(evaluation.images[row], out / relpath)
                record = {**record, "image": relpath}
            records.append(record)
        write_records(out, records)
        save_references(self.items, out)
        meta = {
            "bench": HELD_OUT_DIR,
            "mode": "generate",
            "phase": phase,
            "adapter": phase == "after",
            "data": self.data,
            "base_seed": self.base_seed,
            **self.gen_kwargs,
            "seeds": 1,
            "metrics": [m.name for m in self.metrics],
            "metric_columns": {m.name: list(m.columns) for m in self.metrics},
        }
        (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        return out


def held_out_summary(records: Sequence[dict[str, Any]], phase: str) -> dict[str, Any]:
    """``eval_<phase>.json``: item count, mean per column overall and per prompt kind."""

    def means(rows: list[dict[str, Any]]) -> dict[str, float]:
        return {m: sum(r["scores"][m] for r in rows) / len(rows) for m in metric_names(rows)}

    kinds = sorted({str(r.get("kind", "")) for r in records})
    return {
        "n": len(records),
        "means": means(list(records)),
        "by_kind": {k: means([r for r in records if str(r.get("kind", "")) == k]) for k in kinds},
        "records": f"{HELD_OUT_DIR}/{phase}/{RECORDS_FILE}",
    }


@dataclass
class HeldOutResults:
    """A run's held-out records: ``before`` (base model) and ``after`` (trained adapter)."""

    before: list[dict[str, Any]]
    after: list[dict[str, Any]]

    @property
    def metrics(self) -> list[str]:
        """Score columns present in both phases."""
        after = set(metric_names(self.after))
        return [m for m in metric_names(self.before) if m in after]


def load_held_out(run_dir: str | Path) -> HeldOutResults:
    """The per-item held-out records of a training run (see the module docstring).

    Raises FileNotFoundError naming the missing ``heldout/<phase>/pairs.jsonl``.
    """
    folder = Path(run_dir) / HELD_OUT_DIR
    before, after = (read_records(folder / phase / RECORDS_FILE) for phase in PHASES)
    return HeldOutResults(before, after)


def held_out_table(run_dir: str | Path, *, resamples: int = 1000, seed: int = 0) -> str:
    """Markdown: each column's held-out mean before/after training and the paired change.

    One row per column for all items, then per prompt kind; the interval is the paired
    cluster bootstrap of :func:`cgrpo.evaluation.stats.tables.compare_records` (identities, then
    items within them). Empty when the run has no before/after records.
    """
    from cgrpo.evaluation.stats.tables import compare_records

    try:
        held = load_held_out(run_dir)
    except FileNotFoundError:
        return ""
    kinds = sorted({str(r.get("kind", "")) for r in held.before})
    groups = [("all", held.before, held.after)]
    if len(kinds) > 1:
        for kind in kinds:
            groups.append(
                (
                    kind,
                    [r for r in held.before if r.get("kind") == kind],
                    [r for r in held.after if r.get("kind") == kind],
                )
            )
    rows = [
        "| metric [scale] | prompts | n | before | after | change [95% CI, by subject] |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for label, before, after in groups:
        for d in compare_records(before, after, held.metrics, resamples=resamples, seed=seed):
            rows.append(
                f"| {metric_label(d.metric)} | {label} | {d.delta.n} | {d.mean_a:.4f} | {d.mean_b:.4f} | "
                f"{d.delta.mean:+.4f} [{d.delta.low:+.4f}, {d.delta.high:+.4f}] |"
            )
    return "\n".join(rows)


def before_after_grid(
    items: Sequence[EvalItem],
    before: PolicyEvaluation,
    after: PolicyEvaluation,
    columns: Sequence[str],
    max_items: int = 8,
):
    """A PIL grid, one row per item: reference | base | trained, labelled with ``columns``.

    Items whose prompt asks to change the subject come first (:data:`PROPERTY_KINDS`).
    """
    from cgrpo.evaluation.output.plots import group_grid

    if before.images is None or after.images is None:
        raise ValueError("before_after_grid needs evaluations run with keep_images=True")
    by_key = {it.key: it for it in items}
    rows_after = {r["key"]: i for i, r in enumerate(after.records)}
    order = sorted(
        range(len(before.records)),
        key=lambda i: before.records[i].get("kind") not in PROPERTY_KINDS,
    )
    pick = [i for i in order if before.records[i]["key"] in rows_after][:max_items]
    images, labels = [], []
    for i in pick:
        j = rows_after[before.records[i]["key"]]
        for tag, evaluation, row in (("base", before, i), ("trained", after, j)):
            images.append(evaluation.images[row])
            scores = evaluation.records[row]["scores"]
            labels.append(
                tag
                + "\n"
                + " ".join(
                    f"{c.split('-')[-1][:6]} {scores[c]:.2f}" for c in columns if c in scores
                )
            )
    keys = [before.records[i]["key"] for i in pick]
    return group_grid(
        [by_key[k].references[0] for k in keys],
        torch.stack(images),
        2,
        [by_key[k].prompt for k in keys],
        labels,
    )


__all__ = [
    "HELD_OUT_DIR",
    "PHASES",
    "HeldOutCheck",
    "HeldOutResults",
    "ScoredOnDevice",
    "before_after_grid",
    "ground_truth_metrics",
    "held_out_items",
    "held_out_summary",
    "held_out_table",
    "load_held_out",
]
