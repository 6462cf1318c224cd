"""What a study measured: per-arm held-out means over seeds, and paired differences.

Every run of a study scores the same held-out items (the trainer's before/after check:
``<run>/heldout/{before,after}/pairs.jsonl``). For one metric and one prompt kind the data
of an arm is a matrix ``scores[s, i]``: seed ``s``, held-out item ``i``; items belong to
clusters (the toy identity, the DreamBench subject).

Uncertainty has three sources, and the interval resamples all three
(:func:`cgrpo.evaluation.stats.bootstrap.hierarchical_bootstrap_ci`): the seeds (training randomness), the clusters (which
subjects happen to be held out) and the items within a cluster (which prompts). Differences
between arms are *paired*: the same seed gives both arms the same data order and initial
noise, and both arms are scored on the same items, so ``arm[s, i] - baseline[s, i]`` is
resampled as one matrix. With three seeds the seed level can only be resampled coarsely;
more seeds tighten the intervals more than more items do.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cgrpo.evaluation.stats.bootstrap import DEFAULT_RESAMPLES, Estimate, hierarchical_bootstrap_ci
from cgrpo.study.runner import run_dir, run_finished
from cgrpo.study.spec import StudyConfig, StudyRun, plan_runs

__all__ = [
    "ALL_KINDS",
    "ArmData",
    "StudyResults",
    "arm_table",
    "change_table",
    "joint_table",
    "load_study_results",
    "paired_table",
    "training_curves",
]

ALL_KINDS = "all"
"""The pseudo prompt kind that selects every item."""


@dataclass
class ArmData:
    """One arm's held-out scores: ``after[metric]`` is ``[S, I]`` over its seeds."""

    name: str
    seeds: list[int]
    after: dict[str, np.ndarray]


@dataclass
class StudyResults:
    """The held-out scores of every finished run, aligned on the same items."""

    keys: list[str]
    kinds: list[str]
    clusters: list[str]
    metrics: list[str]
    base: dict[str, np.ndarray]  # metric -> [I], the untrained model
    arms: dict[str, ArmData]
    run_dirs: dict[str, dict[int, Path]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)  # runs not finished

    def kind_mask(self, kind: str) -> np.ndarray:
        if kind == ALL_KINDS:
            return np.ones(len(self.kinds), dtype=bool)
        return np.array([k == kind for k in self.kinds])

    @property
    def kind_names(self) -> list[str]:
        return [ALL_KINDS, *sorted(set(self.kinds))] if len(set(self.kinds)) > 1 else [ALL_KINDS]


def _aligned(
    records: list[dict[str, Any]], keys: list[str], metric: str, where: Path
) -> np.ndarray:
    by_key = {r["key"]: r for r in records}
    missing = [k for k in keys if k not in by_key or metric not in by_key[k].get("scores", {})]
    if missing:
        raise ValueError(
            f"{where}: held-out item {missing[0]!r} has no {metric!r} score; the study's runs "
            "must be evaluated on the same items with the same metrics"
        )
    return np.array([float(by_key[k]["scores"][metric]) for k in keys])


def load_study_results(study: StudyConfig, out: str | Path) -> StudyResults:
    """Read every finished run of ``study`` under ``out`` (unfinished runs are listed in
    ``missing``). Raises ValueError if no run has finished or runs disagree on items."""
    from cgrpo.evaluation.heldout import load_held_out

    out = Path(out)
    runs = plan_runs(study)
    done: list[tuple[StudyRun, Path]] = []
    missing = []
    for run in runs:
        path = run_dir(out, run)
        if run_finished(path):
            done.append((run, path))
        else:
            missing.append(run.name)
    if not done:
        raise ValueError(f"no finished run under {out / 'runs'}; run `cgrpo study` first")
    first_path = done[0][1]
    first = load_held_out(first_path)
    keys = [r["key"] for r in first.before]
    kinds = [str(r.get("kind", "")) for r in first.before]
    clusters = [str(r.get("subject", r["key"])) for r in first.before]
    metrics = first.metrics
    base = {m: _aligned(first.before, keys, m, first_path) for m in metrics}
    per_arm: dict[str, dict[int, dict[str, np.ndarray]]] = {}
    dirs: dict[str, dict[int, Path]] = {}
    for run, path in done:
        held = load_held_out(path)
        metrics = [m for m in metrics if m in held.metrics]
        per_arm.setdefault(run.arm, {})[run.seed] = {
            m: _aligned(held.after, keys, m, path) for m in held.metrics if m in base
        }
        dirs.setdefault(run.arm, {})[run.seed] = path
    arms = {}
    for arm in study.arms:
        if arm not in per_arm:
            continue
        seeds = sorted(per_arm[arm])
        arms[arm] = ArmData(
            arm, seeds, {m: np.stack([per_arm[arm][s][m] for s in seeds]) for m in metrics}
        )
    return StudyResults(
        keys, kinds, clusters, metrics, {m: base[m] for m in metrics}, arms, dirs, missing
    )


@dataclass(frozen=True)
class Row:
    """One table row: an arm (or ``base``), a prompt kind, an estimate per metric."""

    arm: str
    kind: str
    seeds: int
    estimates: dict[str, Estimate]


def arm_table(
    results: StudyResults, *, resamples: int = DEFAULT_RESAMPLES, seed: int = 0
) -> list[Row]:
    """Per arm and prompt kind: the held-out mean over seeds with its hierarchical CI.

    The first rows are the untrained base model (one evaluation, so clusters and items
    only)."""
    rows = []
    for kind in results.kind_names:
        mask = results.kind_mask(kind)
        clusters = np.array(results.clusters)[mask]
        rows.append(
            Row(
                "base",
                kind,
                0,
                {
                    m: hierarchical_bootstrap_ci(
                        results.base[m][None, mask], clusters, resamples=resamples, seed=seed
                    )
                    for m in results.metrics
                },
            )
        )
        for arm in results.arms.values():
            rows.append(
                Row(
                    arm.name,
                    kind,
                    len(arm.seeds),
                    {
                        m: hierarchical_bootstrap_ci(
                            arm.after[m][:, mask], clusters, resamples=resamples, seed=seed
                        )
                        for m in results.metrics
                    },
                )
            )
    return rows


def paired_table(
    results: StudyResults,
    baseline: str,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> list[Row]:
    """Per arm (other than ``baseline``) and prompt kind: ``arm - baseline`` on the seeds
    both have, paired by seed and item, with the hierarchical CI."""
    if baseline not in results.arms:
        return []
    ref = results.arms[baseline]
    rows = []
    for kind in results.kind_names:
        mask = results.kind_mask(kind)
        clusters = np.array(results.clusters)[mask]
        for arm in results.arms.values():
            if arm.name == baseline:
                continue
            shared = [s for s in arm.seeds if s in ref.seeds]
            if not shared:
                continue
            ia = [arm.seeds.index(s) for s in shared]
            ib = [ref.seeds.index(s) for s in shared]
            rows.append(
                Row(
                    arm.name,
                    kind,
                    len(shared),
                    {
                        m: hierarchical_bootstrap_ci(
                            arm.after[m][ia][:, mask] - ref.after[m][ib][:, mask],
                            clusters,
                            resamples=resamples,
                            seed=seed,
                        )
                        for m in results.metrics
                    },
                )
            )
    return rows


def change_table(
    results: StudyResults, *, resamples: int = DEFAULT_RESAMPLES, seed: int = 0
) -> list[Row]:
    """Per arm and prompt kind: what training changed, ``after[s, i] - base[i]`` (every run
    starts from the same base model, scored once), paired by item, with the hierarchical CI.

    This answers "did the arm raise or degrade a reward" (competitive degradation is an arm
    whose change is below 0 for one reward), which the arms' absolute intervals, wide from
    item-to-item spread, cannot."""
    return _per_arm_rows(
        results,
        lambda arm, mask: {m: _change(results, arm, m, mask) for m in results.metrics},
        resamples,
        seed,
    )


def _change(results: StudyResults, arm: ArmData, metric: str, mask: np.ndarray) -> np.ndarray:
    """``after[s, i] - base[i]`` of one arm and metric on the items of ``mask``."""
    return arm.after[metric][:, mask] - results.base[metric][None, mask]


def _per_arm_rows(
    results: StudyResults,
    columns: Callable[[ArmData, np.ndarray], dict[str, np.ndarray]],
    resamples: int,
    seed: int,
) -> list[Row]:
    """Per prompt kind and arm: a row with the hierarchical CI of each ``[S, I]`` matrix
    that ``columns(arm, mask)`` gives for the items of that kind."""
    rows = []
    for kind in results.kind_names:
        mask = results.kind_mask(kind)
        clusters = np.array(results.clusters)[mask]
        for arm in results.arms.values():
            estimates = {
                name: hierarchical_bootstrap_ci(values, clusters, resamples=resamples, seed=seed)
                for name, values in columns(arm, mask).items()
            }
            rows.append(Row(arm.name, kind, len(arm.seeds), estimates))
    return rows


JOINT_COLUMNS = ("both rose", "both fell", "trade-off")
"""The joint-rate columns: the share of (seed, item) pairs where both rewards rose, both
fell, or one rose while the other fell (ties in either reward count in none)."""


def joint_outcomes(change_x: np.ndarray, change_y: np.ndarray) -> dict[str, np.ndarray]:
    """Per entry of two change matrices (``after - base``, any equal shapes), 1.0 where
    the outcome of :data:`JOINT_COLUMNS` holds, else 0.0; the mean of each is its rate."""
    up_x, up_y = change_x > 0, change_y > 0
    down_x, down_y = change_x < 0, change_y < 0
    return {
        "both rose": (up_x & up_y).astype(float),
        "both fell": (down_x & down_y).astype(float),
        "trade-off": ((up_x & down_y) | (down_x & up_y)).astype(float),
    }


def joint_table(
    results: StudyResults,
    metric_x: str,
    metric_y: str,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> list[Row]:
    """Per arm and prompt kind: how often training moved two rewards together on one
    held-out item (columns :data:`JOINT_COLUMNS`), with the hierarchical CI of each rate.

    Mean changes hide the trade-off a multi-reward method is about: an arm can raise both
    means while half its items trade one reward for the other. Rates are over every
    (seed, item) of the arm, each item's change taken against the base model."""
    return _per_arm_rows(
        results,
        lambda arm, mask: joint_outcomes(
            _change(results, arm, metric_x, mask), _change(results, arm, metric_y, mask)
        ),
        resamples,
        seed,
    )


def training_curves(results: StudyResults, keys: Sequence[str]) -> dict[str, dict[str, np.ndarray]]:
    """``{arm: {key: [S, steps]}}`` of per-step training metrics (``metrics.jsonl``) such as
    ``reward/toy-prompt/mean`` or ``conflict_rate``; runs are cut to the shortest."""
    curves: dict[str, dict[str, np.ndarray]] = {}
    for arm, by_seed in results.run_dirs.items():
        series: dict[str, list[list[float]]] = {k: [] for k in keys}
        for path in by_seed.values():
            rows = []
            metrics_file = path / "metrics.jsonl"
            for line in metrics_file.read_text(encoding="utf-8").splitlines():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a torn last line of an interrupted run
            rows.sort(key=lambda r: r.get("step", 0))
            for k in keys:
                series[k].append([float(r[k]) for r in rows if k in r])
        curves[arm] = {}
        for k, per_seed in series.items():
            per_seed = [s for s in per_seed if s]
            if per_seed:
                n = min(len(s) for s in per_seed)
                curves[arm][k] = np.array([s[:n] for s in per_seed])
    return curves
