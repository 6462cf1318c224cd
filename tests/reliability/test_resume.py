"""Resume safety: the saved config survives a bad override, output folders are claimed only
when they hold nothing else, and a torn metrics line does not block a resume."""

from __future__ import annotations

import logging

import pytest
from reliability_helpers import metric_steps

from cgrpo.cli import main
from cgrpo.training import Trainer


@pytest.fixture
def two_steps(tiny_config, tmp_path):
    """A run with a checkpoint at step 2 (of 3)."""
    run = tmp_path / "run"
    Trainer(tiny_config("train.steps=2"), run).train()
    return run


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("model.lora.rank=8", "model.lora.rank"),
        ("model.lora.alpha=3.0", "model.lora.alpha"),
        ("model.lora.targets=[qkv]", "model.lora.targets"),
        ("rewards=[{name: toy-id, role: prompt}, {name: toy-prompt, role: identity}]", "rewards"),
        ("model.options={weights: random, dim: 48, depth: 1, heads: 2}", "model"),
    ],
)
def test_an_incompatible_override_names_the_key_and_keeps_the_run_resumable(
    two_steps, capsys, override, key
):
    saved = (two_steps / "config.yaml").read_bytes()
    metrics = (two_steps / "metrics.jsonl").read_bytes()
    assert main(["train", "--resume", str(two_steps), override]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"cgrpo: config error: {key} = ") and "\n" not in err
    assert (two_steps / "config.yaml").read_bytes() == saved
    assert (two_steps / "metrics.jsonl").read_bytes() == metrics
    assert main(["train", "--resume", str(two_steps), "train.steps=3"]) == 0
    assert metric_steps(two_steps) == [1, 2, 3]


def test_a_compatible_override_is_saved(two_steps, tiny_config):
    Trainer(tiny_config("train.steps=3", "train.lr=0.001"), two_steps, resume=True).train()
    assert "lr: 0.001" in (two_steps / "config.yaml").read_text()


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--output", "elsewhere"], "--output"),
        (["--config", "configs/toy.yaml"], "--config"),
    ],
)
def test_resume_refuses_output_and_config(two_steps, capsys, args, flag):
    assert main(["train", "--resume", str(two_steps), *args]) == 2
    assert capsys.readouterr().err.startswith(f"cgrpo: config error: {flag} = ")


def test_resume_of_a_folder_that_is_no_run(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_a_folder_with_foreign_files_is_refused_untouched(tiny_overrides, tmp_path, capsys):
    evaluation = tmp_path / "eval"
    evaluation.mkdir()
    (evaluation / "pairs.jsonl").write_text('{"key": "a", "seed": 0}\n')
    (evaluation / "summary.md").write_text("# my evaluation\n")
    before = {p.name: p.read_bytes() for p in evaluation.iterdir()}
    assert main(["train", "--output", str(evaluation), *tiny_overrides]) == 2
    err = capsys.readouterr().err
    assert "did not write (pairs.jsonl, summary.md)" in err
    assert {p.name: p.read_bytes() for p in evaluation.iterdir()} == before


def test_a_run_with_checkpoints_is_refused(two_steps, tiny_overrides, capsys):
    assert main(["train", "--output", str(two_steps), *tiny_overrides]) == 2
    assert f"--resume {two_steps}" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["file", "below-file"])
def test_an_output_that_is_a_file_is_one_line(tiny_overrides, tmp_path, capsys, where):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    output = blocker if where == "file" else blocker / "run"
    assert main(["train", "--output", str(output), *tiny_overrides]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(blocker) in err


def test_a_torn_last_metrics_line_is_dropped_with_a_warning(two_steps, tiny_config, caplog):
    with (two_steps / "metrics.jsonl").open("a") as f:
        f.write('{"step": 3, "loss": 0.1')  # killed mid-append
    with caplog.at_level(logging.WARNING):
        Trainer(tiny_config("train.steps=3"), two_steps, resume=True).train()
    assert any("torn last line" in r.getMessage() for r in caplog.records)
    assert metric_steps(two_steps) == [1, 2, 3]


def test_garbage_inside_metrics_names_the_file_and_line(two_steps, tiny_config):
    path = two_steps / "metrics.jsonl"
    lines = path.read_text().splitlines()
    path.write_text(lines[0] + "\n\x00\xff garbage\n" + lines[1] + "\n")
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a JSON line"):
        Trainer(tiny_config("train.steps=3"), two_steps, resume=True)


def test_invalid_utf8_in_a_config_names_the_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"train:\n  steps: 3 # caf\xe9\n")
    assert main(["train", "--config", str(bad), "--output", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"cgrpo: config error: --config = '{bad}': not UTF-8 text (byte 0xe9 on line 2)")
    assert main(["config", "--config", str(bad)]) == 2


def test_a_refused_start_leaves_no_folder_behind(tiny_overrides, tmp_path, capsys):
    """The folder is claimed before the model is built; a start-up error undoes the claim."""
    run = tmp_path / "new" / "deeper" / "run"
    assert (
        main(["train", "--output", str(run), *tiny_overrides, "sampling.group_size=1000000000"])
        == 2
    )
    assert "GiB of memory here; lower sampling.group_size" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
