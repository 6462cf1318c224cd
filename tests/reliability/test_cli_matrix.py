"""The reliability matrix: bad inputs and faults through the real command line.

Every case runs ``python -m cgrpo.cli`` in a subprocess and checks the exit status, that
stderr ends in one clear line without a traceback, and that no data was lost or touched.
Cases that train are marked ``slow`` (they still run in ``make test``).
"""

from __future__ import annotations

import json
import shutil
import struct
import zlib

import pytest
from PIL import Image
from reliability_helpers import one_line, run_cli

from cgrpo.cli import main
from cgrpo.config import load_config
from cgrpo.training import Trainer
from cgrpo.training.checkpoint import checkpoint_dir, checkpoint_step, latest_checkpoint

QUIET = ["logging.tensorboard=false", "logging.sample_every=0"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_overrides):
    """A finished 2-step run (checkpoint at step 2, final adapter), built in this process."""
    run = tmp_path_factory.mktemp("matrix") / "run"
    Trainer(load_config(None, [*tiny_overrides, "train.steps=2", *QUIET]), run).train()
    return run


@pytest.fixture
def run_copy(trained, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    return copy


def bomb_png(side: int) -> bytes:
    """A PNG header declaring ``side x side`` pixels (a decompression bomb's first bytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def steps_logged(run) -> list[int]:
    return [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------- arguments and config values


SAMPLE = ["sample", "--config", "c.yaml", "--reference", "r.png", "--prompt", "a mug"]


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
        ([*SAMPLE, "--num-images", "0"], "--num-images = 0: must be >= 1"),
        ([*SAMPLE, "--num-images", "-3"], "--num-images = -3: must be >= 1"),
        ([*SAMPLE, "--seed", str(2**70)], f"--seed = {2**70}: must be between 0 and"),
    ],
    ids=[
        "resume-with-output",
        "nan",
        "inf",
        "inf-in-list",
        "zero-images",
        "negative-images",
        "huge-seed",
    ],
)
def test_bad_arguments_and_values(tmp_path, args, message):
    out = run_cli(*args, cwd=tmp_path)
    assert out.returncode == 2
    assert message in one_line(out.stderr)
    assert not (tmp_path / "runs").exists()


def test_a_config_that_is_not_utf8(tmp_path):
    bad = tmp_path / "preset.yaml"
    bad.write_bytes(b"train:\n  steps: \xff\xfe\n")
    out = run_cli("train", "--config", str(bad), "--output", str(tmp_path / "run"))
    assert out.returncode == 2
    assert one_line(out.stderr) == (
        f"cgrpo: config error: --config = '{bad}': not UTF-8 text (byte 0xff on line 2)"
    )


@pytest.mark.parametrize("below", [False, True], ids=["file", "below-a-file"])
def test_sample_output_that_is_a_file(tmp_path, below):
    blocker = tmp_path / "taken"
    blocker.write_text("mine")
    out_dir = blocker / "sub" if below else blocker
    out = run_cli(*SAMPLE, "--out", str(out_dir))
    assert out.returncode == 2
    assert str(blocker) in one_line(out.stderr)
    assert blocker.read_text() == "mine"


# ---------------------------------------------------------------- files cgrpo reads


def test_a_decompression_bomb_reference(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(bomb_png(15000))
    out = run_cli("sample", "--config", "c.yaml", "--reference", str(bomb), "--prompt", "a mug")
    assert out.returncode == 1
    line = one_line(out.stderr)
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
def test_report_and_compare_name_the_file_and_line(tmp_path, second_line, fragment):
    good = b'{"key": "a", "seed": 0, "scores": {"dino": 0.5}}'
    bad = write_pairs(tmp_path / "bad", [good, second_line, good])
    fine = write_pairs(tmp_path / "fine", [good])
    for args in (["report", str(bad)], ["compare", str(fine), str(bad)]):
        out = run_cli(*args)
        assert out.returncode == 1, args
        line = one_line(out.stderr)
        assert str(bad) in line and fragment in line, line


def test_sample_with_a_truncated_final_adapter(run_copy, tmp_path):
    adapter = run_copy / "final" / "adapter.safetensors"
    adapter.write_bytes(adapter.read_bytes()[:50])
    ref = tmp_path / "ref.png"
    Image.new("RGB", (16, 16), "red").save(ref)
    out = run_cli(
        "sample",
        "--run",
        str(run_copy),
        "--reference",
        str(ref),
        "--prompt",
        "a mug",
        "--num-steps",
        "2",
        "--out",
        str(tmp_path / "out"),
    )
    assert out.returncode == 1
    assert one_line(out.stderr) == (
        f"cgrpo: error: {adapter} has 50 bytes, the manifest says "
        f"{(checkpoint_dir(run_copy, 2) / 'adapter.safetensors').stat().st_size}"
    )
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- output folders


@pytest.mark.slow
def test_train_refuses_an_evaluation_folder(tmp_path, tiny_overrides):
    folder = write_pairs(tmp_path / "eval", [b'{"key": "a", "seed": 0}'])
    (folder / "summary.md").write_text("# evaluation\n")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    out = run_cli("train", "--output", str(folder), *tiny_overrides)
    assert out.returncode == 2
    assert "holds files cgrpo train did not write (pairs.jsonl, summary.md)" in one_line(out.stderr)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


@pytest.mark.slow
def test_a_group_size_that_cannot_fit_in_memory(tmp_path):
    out = run_cli("train", "--output", str(tmp_path / "run"), "sampling.group_size=1000000")
    assert out.returncode == 2
    line = one_line(out.stderr)
    assert line.startswith("cgrpo: config error: sampling.group_size = 1000000: ")
    assert "GiB of memory here" in line


@pytest.mark.slow
def test_an_incompatible_override_on_resume_keeps_the_run(run_copy):
    saved = (run_copy / "config.yaml").read_bytes()
    out = run_cli("train", "--resume", str(run_copy), "model.lora.rank=8")
    assert out.returncode == 2
    assert one_line(out.stderr).startswith(
        "cgrpo: config error: model.lora.rank = 8: the checkpoint was trained with 4"
    )
    assert (run_copy / "config.yaml").read_bytes() == saved
    assert Trainer(load_config(run_copy / "config.yaml"), run_copy, resume=True).step == 2


# ---------------------------------------------------------------- faults mid-run

FLAKY = """
from cgrpo.rewards.base import RewardFailure
import torch

calls = 0

def flaky(images, prompts, references):
    global calls
    calls += 1
    if calls == 3:
        raise RewardFailure("python:flaky", "server http://127.0.0.1:9/score stopped answering")
    return torch.zeros(len(prompts))
"""


@pytest.mark.slow
def test_a_reward_failure_mid_run(tmp_path, tiny_overrides):
    module = tmp_path / "flaky.py"
    module.write_text(FLAKY)
    run = tmp_path / "run"
    rewards = (
        "rewards=[{name: toy-prompt, role: prompt}, {name: toy-id, role: identity}, "
        f"{{name: 'python:{module}:flaky', role: monitor}}]"
    )
    args = [*tiny_overrides, *QUIET, "logging.checkpoint_every=0", rewards]
    out = run_cli("train", "--output", str(run), *args)
    assert out.returncode == 1
    assert one_line(out.stderr) == (
        "cgrpo: training stopped at step 2 of 3, during training: reward 'python:flaky': "
        "server http://127.0.0.1:9/score stopped answering; checkpoint saved to "
        f"{checkpoint_dir(run, 2)}; continue with: cgrpo train --resume {run}"
    )
    assert checkpoint_step(latest_checkpoint(run)) == 2
    assert steps_logged(run) == [1, 2]


@pytest.mark.slow
def test_a_full_disk_mid_run(tmp_path, tiny_overrides):
    run = tmp_path / "run"
    out = run_cli("train", "--output", str(run), *tiny_overrides, *QUIET, fault="metrics#3:enospc")
    assert out.returncode == 1
    line = one_line(out.stderr)
    assert line.startswith("cgrpo: training stopped at step 3 of 3, during training: disk full (")
    assert line.endswith(f"continue with: cgrpo train --resume {run}")
    assert checkpoint_step(latest_checkpoint(run)) == 3
    assert steps_logged(run) == [1, 2]


@pytest.mark.slow
def test_sigkill_while_checkpointing_then_resume(tmp_path, tiny_overrides):
    run = tmp_path / "run"
    args = [
        *tiny_overrides,
        *QUIET,
        "train.steps=4",
        "logging.checkpoint_every=1",
        "logging.keep_checkpoints=1",
    ]
    out = run_cli("train", "--output", str(run), *args, fault="checkpoint.written#3:kill")
    assert out.returncode == -9
    assert checkpoint_step(latest_checkpoint(run)) == 2  # step 3 was written, not renamed
    assert main(["train", "--resume", str(run)]) == 0
    assert steps_logged(run) == [1, 2, 3, 4]
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-000004"]


@pytest.mark.slow
def test_sigkill_before_the_first_checkpoint_restarts_cleanly(tmp_path, tiny_overrides):
    run = tmp_path / "run"
    args = [*tiny_overrides, *QUIET, "logging.checkpoint_every=0"]
    out = run_cli("train", "--output", str(run), *args, fault="step#3:kill")
    assert out.returncode == -9
    assert steps_logged(run) == [1, 2] and latest_checkpoint(run) is None
    assert main(["train", "--output", str(run), *args]) == 0
    assert steps_logged(run) == [1, 2, 3]


@pytest.mark.slow
def test_resume_past_a_torn_metrics_line_and_a_damaged_checkpoint(tmp_path, tiny_overrides):
    run = tmp_path / "run"
    args = [*tiny_overrides, *QUIET, "train.steps=4", "logging.checkpoint_every=1"]
    Trainer(load_config(None, args), run).train()
    assert checkpoint_step(latest_checkpoint(run)) == 4
    state = checkpoint_dir(run, 4) / "training_state.pt"
    state.write_bytes(state.read_bytes()[:-10])
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 5, "lo')
    out = run_cli("train", "--resume", str(run), "train.steps=5")
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    assert "skipping damaged checkpoint step-000004" in out.stderr
    assert "torn last line" in out.stderr
    assert steps_logged(run) == [1, 2, 3, 4, 5]
