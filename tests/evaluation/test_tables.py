"""Per-pair records -> tables, summaries and files; the result store's round trip."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from cgrpo.evaluation.results import ResultStore, read_records
from cgrpo.evaluation.stats.tables import (
    compare_records,
    deltas_table,
    summarize,
    summary_markdown,
    unit_scores,
    write_summary_files,
)


def test_units_are_pairs_averaged_over_seeds(records_factory):
    records = records_factory(n_subjects=2, n_prompts=2, seeds=3)
    units = unit_scores(records, "id")
    assert set(units) == {"s0/00", "s0/01", "s1/00", "s1/01"}
    by_hand = np.mean([r["scores"]["id"] for r in records if r["key"] == "s1/01"])
    assert units["s1/01"] == pytest.approx(by_hand)
    summary = summarize(records)
    assert summary.n_pairs == 4 and summary.n_records == 12 and summary.seeds == [0, 1, 2]
    assert summary.overall["id"].n == 4
    assert summary.overall["id"].mean == pytest.approx(np.mean(list(units.values())))


def test_groups_by_kind_and_subject(records_factory):
    summary = summarize(records_factory(n_subjects=3, n_prompts=5, seeds=1))
    assert set(summary.by_kind) == {"recontextualization", "property_modification"}
    assert summary.by_kind["property_modification"]["id"].n == 3 * 2
    assert list(summary.by_subject) == ["s0", "s1", "s2"]
    # subject effect 0.05 per index: the subject means are ordered
    means = [summary.by_subject[s]["id"].mean for s in ("s0", "s1", "s2")]
    assert means == sorted(means)


def test_summary_files_are_strict_json_markdown_and_csv(records_factory, tmp_path):
    records = records_factory()
    records[0]["scores"]["only-one"] = 0.3  # a metric most pairs lack
    summary = summarize(records, ["id", "prompt", "only-one", "absent"])
    files = write_summary_files(summary, tmp_path, "My eval")
    data = json.loads(files["json"].read_text(), parse_constant=lambda c: pytest.fail(c))
    assert data["overall"]["absent"]["mean"] is None
    assert data["overall"]["only-one"]["n"] == 1
    md = files["markdown"].read_text()
    assert md.startswith("# My eval") and "## By prompt kind" in md and "## By subject" in md
    with files["per_subject"].open() as f:
        rows = list(csv.DictReader(f))
    assert [r["subject"] for r in rows] == ["s0", "s1", "s2"]
    assert {"id", "id_low", "id_high", "pairs"} <= set(rows[0])


def test_compare_uses_shared_pairs_and_finds_the_offset(records_factory):
    a = records_factory(seed=1)
    b = records_factory(seed=2, offset=0.05)
    b = [r for r in b if r["key"] != "s0/00"]  # B misses one pair: only shared pairs count
    deltas = {d.metric: d for d in compare_records(a, b)}
    assert deltas["id"].delta.n == 14
    assert deltas["id"].significant and deltas["id"].delta.contains(0.05)
    assert deltas["prompt"].delta.high < 0  # the offset lowers the second metric
    with pytest.raises(ValueError, match="share no scored pairs"):
        compare_records(a, [dict(r, key="other/" + r["key"]) for r in b], ["id"])


def test_store_round_trip_and_torn_last_line(records_factory, tmp_path):
    store = ResultStore(tmp_path)
    for r in records_factory(n_subjects=1, n_prompts=2, seeds=2):
        store.put(r)
    store.save()
    again = ResultStore(tmp_path)
    assert len(again) == 4 and again.get("s0/01", 1)["scores"] == store.get("s0/01", 1)["scores"]
    assert again.missing_columns("s0/01", 1, ["id", "new"]) == ["new"]
    with (tmp_path / "pairs.jsonl").open("a") as f:
        f.write('{"key": "s0/02", "se')  # a write cut short
    assert len(read_records(tmp_path)) == 4
    header = (tmp_path / "pairs.csv").read_text().splitlines()[0].split(",")
    assert header[:3] == ["key", "seed", "subject"] and header[-2:] == ["id", "prompt"]


def test_intervals_resample_subjects_then_pairs(records_factory):
    records = records_factory(n_subjects=3, n_prompts=5, seeds=2)
    summary = summarize(records, resamples=300)
    assert summary.overall["id"].clusters == 3 and summary.overall["id"].n == 15
    assert summary.by_subject["s1"]["id"].clusters == 1
    assert summary.to_dict()["overall"]["id"]["clusters"] == 3
    shifted = records_factory(n_subjects=3, n_prompts=5, seeds=2, offset=0.05)
    deltas = compare_records(records, shifted, ["id"], resamples=300)
    assert deltas[0].delta.clusters == 3 and deltas[0].delta.n == 15


def test_headers_show_each_metric_scale(records_factory):
    records = records_factory(metrics=("dino", "hpsv3", "custom"))
    md = summary_markdown(summarize(records, resamples=100))
    assert "| metric [scale] |" in md and "| dino [cosine, 0-1] |" in md
    assert "|  | dino [cosine, 0-1] | hpsv3 [HPSv3 score] | custom |" in md  # per kind
    table = deltas_table(compare_records(records, records, resamples=100), "a", "b")
    assert "\nhpsv3 [HPSv3 score]  " in table and "\ncustom  " in table
