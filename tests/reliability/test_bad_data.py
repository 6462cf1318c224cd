"""Bad data mid-run: an unreadable or invalid item is skipped, logged once with its path and
counted (``data/bad_items`` in metrics.jsonl); the run stops with one line only when the
share of bad items passes ``data.max_bad_fraction``; a resumed run keeps the count."""

from __future__ import annotations

import json
import logging

import pytest
from PIL import Image

from cgrpo.cli import main
from cgrpo.training import Trainer, TrainingFailed
from cgrpo.training.checkpoint import checkpoint_step, latest_checkpoint

# 3 steps of 2 groups draw 6 items: every one of 5 entries is met in the first epoch
QUIET = ["logging.sample_every=0", "logging.tensorboard=false"]


def dataset(folder, bad: dict[int, str]) -> str:
    """Five jsonl entries; ``bad[i]`` makes entry i "unreadable" or "missing"."""
    lines = []
    for i in range(5):
        name = f"ref{i}.png"
        if bad.get(i) == "unreadable":
            (folder / name).write_bytes(b"\x89PNG but no image")
        elif bad.get(i) != "missing":
            Image.new("RGB", (16, 16), (40 * i, 90, 200)).save(folder / name)
        lines.append(
            json.dumps(
                {
                    "prompt": [
                        "a brown vase",
                        "a small mug",
                        "a starfish",
                        "a red vase",
                        "a birdhouse",
                    ][i],
                    "references": [name],
                }
            )
        )
    path = folder / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return f"data.options={{path: {path}}}"


def bad_counts(run) -> list[int]:
    rows = (run / "metrics.jsonl").read_text().splitlines()
    return [json.loads(row)["data/bad_items"] for row in rows]


def warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "bad data item" in r.getMessage()]


def test_an_unreadable_item_is_skipped_logged_once_and_counted(tiny_config, tmp_path, caplog):
    data = dataset(tmp_path, {2: "unreadable"})
    config = tiny_config(*QUIET, "data.name=jsonl", data, "data.max_bad_fraction=0.25")
    run = tmp_path / "run"
    with caplog.at_level(logging.WARNING):
        Trainer(config, run).train()
    assert (run / "final" / "adapter.safetensors").is_file()
    (line,) = warnings(caplog)  # once, though the item is drawn again in the next epoch
    assert line.startswith("skipping a bad data item (1 of 5 bad so far): jsonl ")
    assert f"line 3: reference image {tmp_path / 'ref2.png'} is not a readable image" in line
    counts = bad_counts(run)
    assert counts[-1] == 1 and counts == sorted(counts)


def test_past_the_limit_the_run_stops_with_one_line(tiny_config, tmp_path):
    data = dataset(tmp_path, {1: "unreadable", 3: "unreadable"})
    config = tiny_config(*QUIET, "data.name=jsonl", data, "data.max_bad_fraction=0.25")
    run = tmp_path / "run"
    with pytest.raises(TrainingFailed) as info:
        Trainer(config, run).train()
    message = str(info.value)
    assert "\n" not in message and info.value.exit_code == 1
    assert ": 2 of 5 data items are unreadable or invalid (40.0%), over " in message
    assert "data.max_bad_fraction = 0.25; the latest: jsonl " in message
    assert "reference image" in message and "is not a readable image" in message
    assert message.endswith(f"traceback in {run / 'error.log'}")
    if latest_checkpoint(run) is not None:  # the completed steps are kept
        assert f"checkpoint saved to {latest_checkpoint(run)}" in message


def test_entries_dropped_at_build_time_count_too(tmp_path, tiny_overrides, capsys):
    data = dataset(tmp_path, {4: "missing"})
    run = tmp_path / "run"
    args = ["train", "--output", str(run), *tiny_overrides, *QUIET, "data.name=jsonl", data]
    assert main(args) == 1  # the default limit, 1%: one of five is too many
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("cgrpo: error: 1 of 5 data items are unreadable or invalid (20.0%)")
    assert f"line 5: reference 0 not found: {tmp_path / 'ref4.png'}" in line
    assert main([*args, "data.max_bad_fraction=0.2"]) == 0  # at the limit, not past it
    assert set(bad_counts(run)) == {1}


def test_resume_keeps_the_count(tiny_config, tmp_path, caplog):
    data = dataset(tmp_path, {1: "unreadable"})  # met at step 1, before the checkpoint
    options = (*QUIET, "data.name=jsonl", data, "data.max_bad_fraction=0.25")
    run, alone = tmp_path / "run", tmp_path / "alone"
    Trainer(tiny_config(*options, "train.steps=4"), alone).train()
    first = tiny_config(*options, "train.steps=2", "logging.checkpoint_every=1")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        Trainer(first, run).train()
        assert checkpoint_step(latest_checkpoint(run)) == 2
        Trainer(tiny_config(*options, "train.steps=4"), run, resume=True).train()
    assert len(warnings(caplog)) == 1  # the resumed attempt knew it from the checkpoint
    assert bad_counts(run) == bad_counts(alone) == [1, 1, 1, 1]
