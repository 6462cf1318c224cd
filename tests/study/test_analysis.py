"""The study's tables: per-arm estimates over seeds and paired arm differences."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from cgrpo.evaluation.results import write_records
from cgrpo.study import load_study, load_study_results
from cgrpo.study.analysis import (
    arm_table,
    change_table,
    joint_outcomes,
    joint_table,
    paired_table,
)
from cgrpo.study.runner import run_dir


def fake_run(path: Path, keys, subjects, kinds, before: dict, after: dict) -> None:
    """A finished run directory as the trainer leaves it (only what a study reads)."""
    for phase, scores in (("before", before), ("after", after)):
        records = [
            {
                "key": k,
                "seed": 0,
                "subject": s,
                "kind": kind,
                "prompt": f"prompt {k}",
                "scores": {m: float(v[i]) for m, v in scores.items()},
            }
            for i, (k, s, kind) in enumerate(zip(keys, subjects, kinds))
        ]
        write_records(path / "heldout" / phase, records)
    (path / "final").mkdir(parents=True)
    (path / "final" / "adapter.safetensors").write_bytes(b"")
    (path / "eval_after.json").write_text("{}")
    (path / "config.yaml").write_text("seed: 0\n")
    (path / "metrics.jsonl").write_text(
        "\n".join(json.dumps({"step": s, "conflict_rate": 0.5}) for s in (1, 2)) + "\n"
    )


def test_paired_differences_pair_by_seed_and_item(tmp_path):
    (tmp_path / "base.yaml").write_text("seed: 0\n")
    (tmp_path / "study.yaml").write_text(
        yaml.safe_dump(
            {"base": "base.yaml", "arms": {"a": [], "b": []}, "baseline": "a", "seeds": [0, 1, 2]}
        )
    )
    study = load_study(tmp_path / "study.yaml")
    keys = [f"k{i}" for i in range(12)]
    subjects = [f"s{i // 3}" for i in range(12)]
    kinds = ["property" if i % 2 else "recontext" for i in range(12)]
    rng = np.random.default_rng(0)
    base = {"id": rng.random(12), "prompt": rng.random(12)}
    out = tmp_path / "study"
    for seed in study.seeds:
        # seeds differ a lot, items differ a lot; arm b is arm a plus exactly 0.1 in "prompt"
        a = {m: v + seed + rng.normal(0, 1, 12) for m, v in base.items()}
        b = {"id": a["id"], "prompt": a["prompt"] + 0.1}
        for arm, scores in (("a", a), ("b", b)):
            fake_run(run_dir(out, _run(arm, seed)), keys, subjects, kinds, base, scores)
    results = load_study_results(study, out)
    assert results.kind_names == ["all", "property", "recontext"]
    assert results.arms["a"].after["id"].shape == (3, 12)
    (row_all, *_) = [r for r in paired_table(results, "a") if r.kind == "all"]
    assert row_all.arm == "b" and row_all.seeds == 3
    assert row_all.estimates["prompt"].mean == pytest.approx(0.1)
    assert row_all.estimates["prompt"].low == pytest.approx(0.1)
    assert row_all.estimates["prompt"].high == pytest.approx(0.1)
    assert row_all.estimates["id"].mean == 0.0
    (change_b, *_) = [r for r in change_table(results) if r.kind == "all" and r.arm == "b"]
    after_b = results.arms["b"].after["prompt"]
    assert change_b.estimates["prompt"].mean == pytest.approx(
        after_b.mean() - base["prompt"].mean()
    )
    rows = arm_table(results)
    base_all = next(r for r in rows if r.arm == "base" and r.kind == "all")
    assert base_all.estimates["prompt"].mean == pytest.approx(base["prompt"].mean())
    # unpaired, the same arms overlap widely: seed offsets dominate
    a_all = next(r for r in rows if r.arm == "a" and r.kind == "all").estimates["prompt"]
    assert a_all.half_width > 5 * 0.1


def test_unfinished_runs_are_listed_not_read(tmp_path):
    (tmp_path / "base.yaml").write_text("seed: 0\n")
    (tmp_path / "study.yaml").write_text(
        yaml.safe_dump({"base": "base.yaml", "arms": {"a": []}, "seeds": [0, 1]})
    )
    study = load_study(tmp_path / "study.yaml")
    with pytest.raises(ValueError, match="no finished run"):
        load_study_results(study, tmp_path / "out")
    fake_run(
        run_dir(tmp_path / "out", _run("a", 0)), ["k"], ["s"], ["recontext"], {"m": [1.0]},
        {"m": [2.0]},
    )  # fmt: skip
    results = load_study_results(study, tmp_path / "out")
    assert results.missing == ["a/seed-1"]
    assert results.arms["a"].seeds == [0]


def _run(arm: str, seed: int):
    from cgrpo.study.spec import StudyRun

    return StudyRun(arm, seed, ())


def test_joint_outcomes_classify_each_item_by_both_changes():
    dx = np.array([[0.2, -0.1, 0.3, 0.0, -0.2]])
    dy = np.array([[0.1, -0.3, -0.2, 0.5, 0.4]])
    got = joint_outcomes(dx, dy)
    assert got["both rose"].tolist() == [[1, 0, 0, 0, 0]]
    assert got["both fell"].tolist() == [[0, 1, 0, 0, 0]]
    assert got["trade-off"].tolist() == [[0, 0, 1, 0, 1]]  # a tie (item 4) counts in none


def test_joint_table_gives_the_rates_over_seeds_and_items(tmp_path):
    (tmp_path / "base.yaml").write_text("seed: 0\n")
    (tmp_path / "study.yaml").write_text(
        yaml.safe_dump({"base": "base.yaml", "arms": {"a": []}, "seeds": [0, 1]})
    )
    study = load_study(tmp_path / "study.yaml")
    keys, subjects, kinds = ["k0", "k1", "k2", "k3"], ["s0", "s0", "s1", "s1"], ["recontext"] * 4
    base = {"id": np.zeros(4), "prompt": np.zeros(4)}
    # seed 0: both rose, both rose, trade-off, both fell; seed 1: both fell on every item
    after = {
        0: {"id": np.array([1.0, 1, 1, -1]), "prompt": np.array([1.0, 1, -1, -1])},
        1: {"id": -np.ones(4), "prompt": -np.ones(4)},
    }
    out = tmp_path / "study"
    for seed in (0, 1):
        fake_run(run_dir(out, _run("a", seed)), keys, subjects, kinds, base, after[seed])
    (row,) = joint_table(load_study_results(study, out), "id", "prompt")
    assert (row.arm, row.kind, row.seeds) == ("a", "all", 2)
    assert row.estimates["both rose"].mean == pytest.approx(2 / 8)
    assert row.estimates["both fell"].mean == pytest.approx(5 / 8)
    assert row.estimates["trade-off"].mean == pytest.approx(1 / 8)
