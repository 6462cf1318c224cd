"""logging.wandb: a W&B run (offline, no network) beside metrics.jsonl; resume continues it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cgrpo.extras import MissingExtra
from cgrpo.training import Trainer
from cgrpo.training.logging import markdown_table

wandb = pytest.importorskip("wandb")

WANDB = [
    "logging.wandb.project=cgrpo-test",
    "logging.wandb.mode=offline",
    "logging.wandb.tags=[t1]",
]


def _log_chunks(path: Path) -> list[bytes]:
    """The records of a W&B transaction log (``.wandb``): a 7-byte file header (":W&B",
    magic, version), then LevelDB-style records (crc32, little-endian length, type: full,
    first, middle, last) in 32 KiB blocks."""
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, out, pending = 32768, 7, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        length = int.from_bytes(data[pos + 4 : pos + 6], "little")
        kind = data[pos + 6]
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # full, last
            out.append(pending)
            pending = b""
    return out


def _records(run_dir: Path) -> dict[str, list]:
    """What the offline W&B runs under ``run_dir/wandb`` hold, by W&B run folder."""
    from wandb.proto import wandb_internal_pb2

    out = {}
    for folder in sorted((run_dir / "wandb").glob("offline-run-*")):
        records = []
        for chunk in _log_chunks(next(folder.glob("*.wandb"))):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            records.append(record)
        out[folder.name] = records
    return out


def _history(records: list) -> list[dict]:
    rows = []
    for r in records:
        if r.WhichOneof("record_type") == "history":
            rows.append(
                {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in r.history.item}
            )
    return rows


def test_offline_run_holds_metrics_grids_config_and_table_and_resume_continues_it(
    tmp_path, tiny_config, monkeypatch
):
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    config = tiny_config(
        *WANDB,
        "train.steps=2",
        "logging.checkpoint_every=1",
        "eval.before_after=true",
        "eval.num_items=4",
        "eval.num_steps=2",
    )
    Trainer(config, run).train()
    wandb.teardown()  # W&B's service writes the log file completely when it shuts down
    run_id = json.loads((run / "wandb.json").read_text())["id"]
    (first,) = _records(run).values()
    history = _history(first)
    # every metrics.jsonl line, same values, at the same step
    jsonl = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    by_step = {}
    for row in history:
        by_step.setdefault(row["_step"], {}).update(row)
    for line in jsonl:
        logged = by_step[line["step"]]
        for key, value in line.items():
            if key != "step" and isinstance(value, float):
                assert logged[key] == pytest.approx(value), key
    # the sample grids at each step, the before/after grid and the held-out table at the end
    assert by_step[1]["samples/_type"] == by_step[2]["samples/_type"] == "image-file"
    assert by_step[2]["held_out/before_after/_type"] == "image-file"
    assert by_step[2]["held_out/table/_type"] == "table-file"
    table_file = next(
        (run / "wandb").glob("offline-run-*/files/" + by_step[2]["held_out/table/path"])
    )
    table = json.loads(table_file.read_text())
    summary_table = (run / "summary.md").read_text()
    assert table["columns"][0] == "metric [scale]" and len(table["data"]) >= 2
    assert all(f"| {' | '.join(row)} |" in summary_table for row in table["data"])
    grid = next((run / "wandb").glob("offline-run-*/files/" + by_step[1]["samples/path"]))
    assert grid.read_bytes()[:4] == b"\x89PNG"
    # the resolved config and the run's identity
    run_record = next(r.run for r in first if r.WhichOneof("record_type") == "run")
    assert run_record.run_id == run_id and list(run_record.tags) == ["t1"]
    assert run_record.project == "cgrpo-test"
    config_items = {i.key: json.loads(i.value_json) for i in run_record.config.update}
    assert config_items["train"]["steps"] == 2
    assert config_items["logging"]["wandb"]["mode"] == "offline"

    # --resume: the same W&B run id, new steps only
    from cgrpo.config.train import load_config

    resumed = load_config(run / "config.yaml", ["train.steps=3"])
    Trainer(resumed, run, resume=True).train()
    wandb.teardown()
    runs = _records(run)
    assert len(runs) == 2 and all(name.endswith(run_id) for name in runs)
    second = runs[sorted(runs)[1]]
    steps = {row["_step"] for row in _history(second)}
    assert 3 in steps and min(steps) >= 2


def test_off_by_default_and_nothing_imported(tmp_path, tiny_config):
    config = tiny_config("train.steps=1")
    assert config.logging.wandb.project is None
    Trainer(config, tmp_path / "run").train()
    assert not (tmp_path / "run" / "wandb").exists()
    assert not (tmp_path / "run" / "wandb.json").exists()


def test_asked_for_but_not_installed_is_one_line(tmp_path, tiny_config, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "wandb", None)
    with pytest.raises(
        MissingExtra, match=r"logging.wandb needs the optional extra 'wandb'.*cgrpo\[wandb\]"
    ):
        Trainer(tiny_config(*WANDB, "train.steps=1"), tmp_path / "run")
    assert not (tmp_path / "run").exists()  # stopped before anything was written


def test_markdown_table():
    md = "| a | b |\n|---|---:|\n| 1 | x |\n| 2 | y |"
    assert markdown_table(md) == (["a", "b"], [["1", "x"], ["2", "y"]])


def test_a_wandb_that_does_not_start_is_one_line(tmp_path, tiny_config, monkeypatch):
    def no_key(**kwargs):
        raise wandb.errors.UsageError("No API key configured. Use `wandb login` to log in.")

    monkeypatch.setattr(wandb, "init", no_key)
    config = tiny_config("logging.wandb.project=p", "train.steps=1")
    with pytest.raises(ValueError, match=r"logging.wandb: W&B did not start \(No API key.*offline"):
        Trainer(config, tmp_path / "run")
