"""SIGTERM behaves like Ctrl-C in every stage: a checkpoint, one line, a resumable run.

The signals are real (the process sends them to itself at a named point through
``CGRPO_FAULT``); the CLI runs in this process so each case takes a second, and one case
sends SIGTERM from outside to a separate ``cgrpo train`` process.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
import torch
from reliability_helpers import metric_steps, one_line

from cgrpo.cli import main
from cgrpo.training import Interrupted, Trainer
from cgrpo.training.checkpoint import checkpoint_step, latest_checkpoint
from cgrpo.training.faults import ENV

SIGNALS = {"sigint": signal.SIGINT, "sigterm": signal.SIGTERM}
# (fault point, step of the checkpoint the stop leaves; None: stopped before training)
STAGES = [
    ("startup", None),
    ("setup", None),
    ("eval.before", 0),
    ("step#2", 1),
    ("eval.after", 3),
]


@pytest.mark.parametrize("name", list(SIGNALS))
@pytest.mark.parametrize(("point", "saved"), STAGES, ids=[p for p, _ in STAGES])
def test_a_signal_in_any_stage_stops_cleanly(
    tiny_overrides, tmp_path, monkeypatch, capsys, name, point, saved
):
    run = tmp_path / "run"
    args = [
        "train",
        "--output",
        str(run),
        *tiny_overrides,
        "eval.before_after=true",
        "eval.num_items=2",
        "eval.num_steps=2",
        "logging.checkpoint_every=0",
        "logging.sample_every=0",
        "logging.tensorboard=false",
    ]
    monkeypatch.setenv(ENV, f"{point}:{name}")
    assert main(args) == 128 + SIGNALS[name]
    message = capsys.readouterr().err.strip().splitlines()[-1]
    label = SIGNALS[name].name
    if saved is None:
        assert message == (
            f"cgrpo: interrupted ({label}) during start-up, before any training step; "
            "nothing to save"
        )
        assert latest_checkpoint(run) is None
        again = args
    else:
        assert message.startswith(f"cgrpo: interrupted ({label}) at step {saved} of 3, during ")
        assert message.endswith(f"continue with: cgrpo train --resume {run}")
        assert checkpoint_step(latest_checkpoint(run)) == saved
        again = ["train", "--resume", str(run)]
    monkeypatch.delenv(ENV)
    assert main(again) == 0
    assert metric_steps(run) == [1, 2, 3]
    assert (run / "final" / "adapter.safetensors").is_file()
    assert (run / "eval_after.json").is_file() and (run / "summary.md").is_file()


def test_a_signal_during_an_update_waits_for_the_step_to_finish(tiny_config, tmp_path):
    """The weights never get checkpointed half-way through an optimizer step."""
    run = tmp_path / "run"
    trainer = Trainer(tiny_config("logging.checkpoint_every=0"), run)
    calls = []

    def signal_on_second_update(*_):
        calls.append(1)
        if len(calls) == 2:
            signal.raise_signal(signal.SIGTERM)

    trainer.optimizer.optimizer.register_step_pre_hook(signal_on_second_update)
    with pytest.raises(Interrupted, match=r"interrupted \(SIGTERM\) at step 2 of 3") as info:
        trainer.train()
    assert info.value.exit_code == 143
    assert checkpoint_step(latest_checkpoint(run)) == 2
    assert metric_steps(run) == [1, 2]
    straight = Trainer(tiny_config("train.steps=2"), tmp_path / "straight")
    straight.train()
    resumed = Trainer(tiny_config("train.steps=2"), run, resume=True)
    for (n, a), (_, b) in zip(
        straight.policy.named_trainable_parameters(), resumed.policy.named_trainable_parameters()
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=n)


@pytest.mark.slow
def test_sigterm_from_outside_checkpoints_and_exits_143(tiny_overrides, tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cgrpo.cli",
            "train",
            "--output",
            str(run),
            *tiny_overrides,
            "train.steps=1000",
            "logging.checkpoint_every=0",
            "logging.sample_every=0",
            "logging.tensorboard=false",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = run / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.is_file() and metrics.read_text().count("\n") >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143
    message = one_line(err)
    assert message.startswith("cgrpo: interrupted (SIGTERM) at step ")
    step = checkpoint_step(latest_checkpoint(run))
    assert step >= 2 and f"at step {step} of 1000" in message
    assert metric_steps(run) == list(range(1, step + 1))
