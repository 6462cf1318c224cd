"""The study's statistics: the hierarchical bootstrap and paired arm differences."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from cgrpo.evaluation.results import write_records
from cgrpo.study import hierarchical_bootstrap, load_study, load_study_results
from cgrpo.study.analysis import arm_table, paired_table
from cgrpo.study.runner import run_dir


def clustered(n_clusters: int, per_cluster: int, tau: float, sigma: float, seed: int):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, tau, n_clusters)
    scores = np.repeat(centres, per_cluster) + rng.normal(0.0, sigma, n_clusters * per_cluster)
    return scores, np.repeat(np.arange(n_clusters), per_cluster)


def test_interval_follows_between_cluster_variance():
    # 40 clusters whose means differ (tau = 1), items close to their cluster mean: the
    # standard error of the grand mean is about tau / sqrt(40), not sd / sqrt(200 items).
    scores, clusters = clustered(40, 5, tau=1.0, sigma=0.1, seed=0)
    est = hierarchical_bootstrap(scores[None], clusters, resamples=4000, seed=1)
    cluster_means = np.array([scores[clusters == c].mean() for c in range(40)])
    expected_half = 1.96 * cluster_means.std(ddof=1) / np.sqrt(40)
    assert est.half_width == pytest.approx(expected_half, rel=0.2)
    iid = hierarchical_bootstrap(scores[None], np.arange(200), resamples=4000, seed=1)
    assert est.half_width > 1.8 * iid.half_width
    assert est.mean == pytest.approx(scores.mean())
    assert est.low < est.mean < est.high


def test_seed_variance_widens_the_interval():
    scores, clusters = clustered(30, 4, tau=0.1, sigma=0.1, seed=2)
    one = hierarchical_bootstrap(np.stack([scores] * 3), clusters, seed=0)
    offsets = np.array([-0.5, 0.0, 0.5])[:, None]
    spread = hierarchical_bootstrap(np.stack([scores] * 3) + offsets, clusters, seed=0)
    assert spread.mean == pytest.approx(one.mean)
    assert spread.half_width > 3 * one.half_width


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="seeds, items"):
        hierarchical_bootstrap(np.zeros(4), [0, 0, 1, 1])
    with pytest.raises(ValueError, match="3 cluster labels for 4 items"):
        hierarchical_bootstrap(np.zeros((1, 4)), [0, 0, 1])
    with pytest.raises(ValueError, match="NaN"):
        hierarchical_bootstrap(np.array([[0.0, np.nan]]), [0, 1])


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
