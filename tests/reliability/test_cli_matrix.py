"""The reliability matrix: bad inputs and faults through the command line.

Every case runs the command line -- ``cgrpo.cli.main``, what ``python -m cgrpo.cli`` runs --
and checks the exit status, that stderr ends in one clear line (an uncaught exception
fails the test), and that no data was lost or touched. Kills run the command line in a
forked child (``CGRPO_FAULT``); one case runs a separate interpreter to check the
process's exit status end to end (``test_signals`` sends SIGTERM to another). The cases
the other files of this folder cover through the trainer (resume safety, signals,
checkpoint writes, faults) are not repeated here.
"""

from __future__ import annotations

import logging
import shutil

import pytest
from PIL import Image
from reliability_helpers import bomb_png, killed_by_fault, metric_steps, one_line, run_cli

from cgrpo.cli import main
from cgrpo.config import load_config
from cgrpo.training import Trainer
from cgrpo.training.checkpoint import checkpoint_dir, checkpoint_step, latest_checkpoint
from cgrpo.training.faults import ENV

NO_TENSORBOARD = "logging.tensorboard=false"
QUIET = [NO_TENSORBOARD, "logging.sample_every=0"]
SAMPLE = ["sample", "--config", "c.yaml", "--reference", "r.png", "--prompt", "a mug"]


@pytest.fixture
def cli(capsys):
    """Run the command line; (exit status, the one line it ended with on stderr)."""

    def run(*args: str) -> tuple[int, str]:
        code = main([str(a) for a in args])
        return code, one_line(capsys.readouterr().err)

    return run


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_overrides):
    """A finished 2-step run (checkpoint at step 2, final adapter)."""
    run = tmp_path_factory.mktemp("matrix") / "run"
    Trainer(load_config(None, [*tiny_overrides, "train.steps=2", *QUIET]), run).train()
    return run


# ---------------------------------------------------------------- arguments and config values


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["train", "--resume", "runs/a", "--output", "runs/b"],
            "cgrpo: config error: --output = 'runs/b': not allowed with --resume",
        ),
        (["train", "train.grad_clip=.nan"], "train.grad_clip = nan: expected a finite number"),
        (["train", "model.lora.alpha=.inf"], "model.lora.alpha = inf: expected a finite number"),
        (["config", "train.betas=[0.9, .inf]"], "train.betas[1] = inf: expected a finite number"),
        (["config", f"eval.seed={2**70}"], f"eval.seed = {2**70}: must be <= {2**62} and >= 0"),
        (["config", "eval.seed=-1"], f"eval.seed = -1: must be >= 0 and <= {2**62}"),
        ([*SAMPLE, "--num-images", "0"], "--num-images = 0: must be >= 1"),
        ([*SAMPLE, "--num-images", "-3"], "--num-images = -3: must be >= 1"),
        ([*SAMPLE, "--num-steps", "0"], "--num-steps = 0: must be >= 1"),
        ([*SAMPLE, "--seed", str(2**70)], f"--seed = {2**70}: must be between 0 and"),
        ([*SAMPLE, "--seed", "-1"], "--seed = -1: must be between 0 and"),
        ([*SAMPLE[:-1], " "], "--prompt = ' ': must not be empty"),
    ],
    ids=[
        "resume-with-output",
        "nan",
        "inf",
        "inf-in-list",
        "huge-eval-seed",
        "negative-eval-seed",
        "zero-images",
        "negative-images",
        "zero-steps",
        "huge-seed",
        "negative-seed",
        "blank-prompt",
    ],
)
def test_bad_arguments_and_values(cli, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    code, line = cli(*args)
    assert code == 2
    assert message in line
    assert list(tmp_path.iterdir()) == []  # nothing written, not even runs/


def test_the_last_seed_of_a_sample_must_fit_64_bits(cli, tmp_path):
    # image i of prompt p uses seed + p * num_images + i: two prompts of 3 images need 6 seeds
    args = [*SAMPLE, "--prompt", "a cup", "--num-images", "3", "--out", tmp_path / "out"]
    code, line = cli(*args, "--seed", 2**63 - 5)
    assert code == 2 and f"must be between 0 and {2**63 - 6}" in line
    code, line = cli(*args, "--seed", 2**63 - 6)  # accepted; the missing reference is next
    assert code == 1 and line == "cgrpo: error: reference image not found: r.png"


def test_a_config_error_in_a_separate_process(tmp_path):
    out = run_cli("train", "train.grad_clip=.nan", cwd=tmp_path)
    assert out.returncode == 2
    assert one_line(out.stderr) == (
        "cgrpo: config error: train.grad_clip = nan: expected a finite number"
    )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("below", [False, True], ids=["file", "below-a-file"])
def test_sample_output_that_is_a_file(cli, tmp_path, below):
    blocker = tmp_path / "taken"
    blocker.write_text("mine")
    code, line = cli(*SAMPLE, "--out", blocker / "sub" if below else blocker)
    assert code == 2
    assert str(blocker) in line
    assert blocker.read_text() == "mine"


def test_a_group_size_that_cannot_fit_in_memory(cli, tmp_path, tiny_overrides):
    run = tmp_path / "run"
    code, line = cli("train", "--output", run, *tiny_overrides, "sampling.group_size=1000000000")
    assert code == 2
    assert line.startswith("cgrpo: config error: sampling.group_size = 1000000000: ")
    assert "GiB of memory here; lower sampling.group_size" in line
    assert not run.exists()


# ---------------------------------------------------------------- files cgrpo reads


def test_a_decompression_bomb_reference(cli, tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(bomb_png(15000, 15000))
    code, line = cli("sample", "--config", "c.yaml", "--reference", bomb, "--prompt", "a mug")
    assert code == 1
    assert line.startswith(f"cgrpo: error: reference image {bomb} is over the pixel limit")


def write_pairs(folder, lines: list[bytes]):
    folder.mkdir()
    (folder / "pairs.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    return folder


@pytest.mark.parametrize(
    ("second_line", "fragment"),
    [
        (b"\x89\xff\x00 binary garbage \xfe", "pairs.jsonl:2: not a JSON record"),
        (
            b'{"key": "b", "seed": 0, "scores": {"dino": "high"}}',
            "pairs.jsonl:2: score 'dino' = 'high' is not a number",
        ),
    ],
    ids=["garbage", "non-numeric-score"],
)
def test_report_and_compare_name_the_file_and_line(cli, tmp_path, second_line, fragment):
    good = b'{"key": "a", "seed": 0, "scores": {"dino": 0.5}}'
    bad = write_pairs(tmp_path / "bad", [good, second_line, good])
    fine = write_pairs(tmp_path / "fine", [good])
    for args in (["report", bad], ["compare", fine, bad]):
        code, line = cli(*args)
        assert code == 1, args
        assert line.startswith(f"cgrpo: error: {bad / 'pairs.jsonl'}:2: "), line
        assert fragment in line, line


def test_sample_with_a_truncated_final_adapter(cli, trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    adapter = run / "final" / "adapter.safetensors"
    adapter.write_bytes(adapter.read_bytes()[:50])
    ref = tmp_path / "ref.png"
    Image.new("RGB", (16, 16), "red").save(ref)
    out = tmp_path / "out"
    args = ["--reference", ref, "--prompt", "a mug", "--num-steps", "2", "--out", out]
    code, line = cli("sample", "--run", run, *args)
    assert code == 1
    expected = (checkpoint_dir(run, 2) / "adapter.safetensors").stat().st_size
    assert line == f"cgrpo: error: {adapter} has 50 bytes, the manifest says {expected}"
    assert not out.exists()


# ---------------------------------------------------------------- faults mid-run


def test_a_full_disk_mid_run(cli, tmp_path, tiny_overrides, monkeypatch):
    run = tmp_path / "run"
    monkeypatch.setenv(ENV, "metrics#3:enospc")
    code, line = cli("train", "--output", run, *tiny_overrides, *QUIET)
    assert code == 1
    assert line.startswith(
        "cgrpo: training stopped at step 3 of 3, during training: disk full: could not write "
        f"{run / 'metrics.jsonl'} (No space left on device"
    )
    assert line.endswith(f"continue with: cgrpo train --resume {run}; traceback in {run}/error.log")
    assert checkpoint_step(latest_checkpoint(run)) == 3
    assert metric_steps(run) == [1, 2]


def test_sigkill_while_resaving_a_checkpoint_then_resume(tmp_path, tiny_overrides):
    run = tmp_path / "run"
    args = [*tiny_overrides, *QUIET, "train.steps=4", "logging.checkpoint_every=1"]
    argv = ["train", "--output", str(run), *args, "logging.keep_checkpoints=1"]
    assert killed_by_fault(argv, "checkpoint.written#3:kill")
    assert checkpoint_step(latest_checkpoint(run)) == 2  # step 3 was written, not renamed
    assert main(["train", "--resume", str(run)]) == 0
    assert metric_steps(run) == [1, 2, 3, 4]
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-000004"]


def test_sigkill_before_the_first_checkpoint_restarts_cleanly(tmp_path, tiny_overrides, caplog):
    run = tmp_path / "run"
    argv = ["train", "--output", str(run), *tiny_overrides, NO_TENSORBOARD]
    argv.append("logging.checkpoint_every=0")
    assert killed_by_fault(argv, "step#3:kill")
    assert metric_steps(run) == [1, 2] and latest_checkpoint(run) is None
    with caplog.at_level(logging.WARNING):
        assert main(argv) == 0
    assert any("starting it again from step 0" in r.getMessage() for r in caplog.records)
    assert metric_steps(run) == [1, 2, 3]  # not 1 2 1 2 3
    samples = sorted(p.name for p in (run / "samples").iterdir())
    assert samples == ["step-000001.png", "step-000002.png", "step-000003.png"]


def test_resume_past_a_torn_metrics_line_and_a_damaged_checkpoint(tmp_path, tiny_config, caplog):
    run = tmp_path / "run"
    Trainer(tiny_config(*QUIET, "train.steps=4", "logging.checkpoint_every=1"), run).train()
    state = checkpoint_dir(run, 4) / "training_state.pt"
    state.write_bytes(state.read_bytes()[:-10])
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 5, "lo')  # killed mid-append
    with caplog.at_level(logging.WARNING):
        assert main(["train", "--resume", str(run), "train.steps=5"]) == 0
    warnings = " ".join(r.getMessage() for r in caplog.records)
    assert "skipping damaged checkpoint step-000004" in warnings
    assert "torn last line" in warnings
    assert metric_steps(run) == [1, 2, 3, 4, 5]
