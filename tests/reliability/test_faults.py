"""Faults mid-run: a reward that cannot score, a time-out, a full disk. Each ends the run
with a checkpoint of the completed steps (where the disk allows) and one line naming the
cause and the resume command."""

from __future__ import annotations

import json

import pytest
from reliability_helpers import bomb_png

from cgrpo.training import Trainer, TrainingFailed
from cgrpo.training.checkpoint import checkpoint_step, latest_checkpoint
from cgrpo.training.faults import ENV

FAILING_REWARD = """
import torch
from cgrpo.rewards.base import RewardFailure

calls = 0

def flaky(images, prompts, references):
    global calls
    calls += 1
    if calls == {fail_at}:
        {error}
    return torch.zeros(len(prompts))
"""


def failing_reward_config(tiny_config, tmp_path, error: str, fail_at: int = 3):
    module = tmp_path / f"flaky_{abs(hash(error))}.py"
    module.write_text(FAILING_REWARD.format(fail_at=fail_at, error=error))
    return tiny_config(
        "logging.checkpoint_every=0",
        f"rewards=[{{name: toy-prompt, role: prompt}}, {{name: toy-id, role: identity}}, "
        f"{{name: 'python:{module}:flaky', role: monitor}}]",
    )


@pytest.mark.parametrize(
    ("error", "cause"),
    [
        (
            "raise RewardFailure('python:flaky', 'server at http://127.0.0.1:9 went away')",
            "reward 'python:flaky': server at http://127.0.0.1:9 went away",
        ),
        (  # a custom reward names itself and its function (cgrpo.rewards.custom)
            "raise TimeoutError('no answer in 30 s')",
            "reward 'python:{module}:flaky': {module}:flaky raised TimeoutError: no answer in 30 s",
        ),
    ],
    ids=["reward-failure", "timeout"],
)
def test_a_reward_that_fails_mid_run_keeps_the_completed_steps(tiny_config, tmp_path, error, cause):
    run = tmp_path / "run"
    config = failing_reward_config(tiny_config, tmp_path, error)
    cause = cause.format(module=tmp_path / f"flaky_{abs(hash(error))}.py")
    with pytest.raises(TrainingFailed) as info:
        Trainer(config, run).train()
    message = str(info.value)
    assert message == (
        f"training stopped at step 2 of 3, during training: {cause}; checkpoint saved to "
        f"{run / 'checkpoints' / 'step-000002'}; continue with: cgrpo train --resume {run}; "
        f"traceback in {run / 'error.log'}"
    )
    assert info.value.exit_code == 1
    assert "Traceback (most recent call last)" in (run / "error.log").read_text()
    assert checkpoint_step(latest_checkpoint(run)) == 2
    resumed = Trainer(config, run, resume=True)
    assert resumed.step == 2
    resumed.train()
    assert (run / "final" / "adapter.safetensors").is_file()


def test_a_full_disk_while_logging_saves_the_completed_steps(tiny_config, tmp_path, monkeypatch):
    run = tmp_path / "run"
    monkeypatch.setenv(ENV, "metrics#2:enospc")
    with pytest.raises(TrainingFailed, match=r"at step 2 of 3, during training: disk full") as e:
        Trainer(tiny_config("logging.checkpoint_every=0"), run).train()
    assert "checkpoint saved to" in str(e.value) and "--resume" in str(e.value)
    assert checkpoint_step(latest_checkpoint(run)) == 2
    rows = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows == [1]  # the metrics of step 2 are the ones the full disk refused


def test_a_full_disk_while_checkpointing_names_the_last_good_checkpoint(
    tiny_config, tmp_path, monkeypatch
):
    run = tmp_path / "run"
    monkeypatch.setenv(ENV, "checkpoint.file#7:enospc,checkpoint.file#9:enospc")
    with pytest.raises(TrainingFailed) as info:
        Trainer(tiny_config("train.steps=4", "logging.checkpoint_every=1"), run).train()
    message = str(info.value)
    # step 2's checkpoint fails at its third file (each has four), the retry at its second
    assert "at step 2 of 4, during training: disk full" in message
    assert "no new checkpoint ([Errno 28] No space left on device" in message
    assert message.endswith(
        f"the last checkpoint is {run / 'checkpoints' / 'step-000001'}; "
        f"continue with: cgrpo train --resume {run}; traceback in {run / 'error.log'}"
    )
    assert not list((run / "checkpoints").glob("*.tmp"))


def test_an_image_over_the_pixel_limit_met_mid_run(tiny_config, tmp_path):
    (tmp_path / "bomb.png").write_bytes(bomb_png(15000, 15000))
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"prompt": "a toy on a table", "references": ["bomb.png"]}) + "\n")
    run = tmp_path / "run"
    config = tiny_config("data.name=jsonl", f"data.options={{path: {data}}}")
    with pytest.raises(TrainingFailed) as info:
        Trainer(config, run).train()
    message = str(info.value)
    assert message.startswith(
        "training stopped at step 0 of 3, during training: 1 of 1 data items are unreadable "
        "or invalid (100.0%), over data.max_bad_fraction = 0.01; the latest: jsonl "
    )
    assert f"reference image {tmp_path / 'bomb.png'} is over the pixel limit" in message
    assert "\n" not in message
    assert message.endswith(f"cgrpo train --resume {run}; traceback in {run / 'error.log'}")


@pytest.mark.parametrize(
    "error", [ValueError("a bug"), FileNotFoundError(2, "No such file", "/x/y")], ids=repr
)
def test_an_unknown_error_keeps_its_traceback(tiny_overrides, tmp_path, monkeypatch, capsys, error):
    """A bug mid-run: checkpoint first, then its traceback on stderr and in error.log, and
    one last line that names error.log."""
    from cgrpo.cli import main
    from cgrpo.training.trainer import Trainer as TrainerClass

    real_step = TrainerClass.train_step

    def failing_step(self, step):
        if step == 1:
            raise error
        return real_step(self, step)

    monkeypatch.setattr(TrainerClass, "train_step", failing_step)
    run = tmp_path / "run"
    args = ["train", "--output", str(run), *tiny_overrides, "logging.checkpoint_every=0"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "in failing_step" in err
    last = err.strip().splitlines()[-1]
    assert last == (
        f"cgrpo: training failed at step 1 of 3, during training: {type(error).__name__}: "
        f"{error}; checkpoint saved to {run / 'checkpoints' / 'step-000001'}; "
        f"continue with: cgrpo train --resume {run}; traceback in {run / 'error.log'}"
    )
    logged = (run / "error.log").read_text()
    assert "training stopped at step 1 of 3, during training" in logged
    assert "in failing_step" in logged and f"{type(error).__name__}: {error}" in logged
    assert checkpoint_step(latest_checkpoint(run)) == 1


def test_the_python_api_raises_the_crash_caused_by_the_bug(tiny_config, tmp_path, monkeypatch):
    from cgrpo.training.stopping import TrainingCrashed

    trainer = Trainer(tiny_config(), tmp_path / "run")
    monkeypatch.setattr(trainer, "score", lambda rollout: {}["missing"])
    with pytest.raises(TrainingCrashed) as info:
        trainer.train()
    assert isinstance(info.value.__cause__, KeyError)
    assert "during training: KeyError: 'missing'" in str(info.value)
